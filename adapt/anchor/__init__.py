"""The debiased visual anchor (paper Sec. 4.1, Eq. 1–9): criteria, fusion, bias map, debiasing.

Pure array math on small maps (layers × grid); running the model is :mod:`adapt.pipeline`'s job.
Notation follows DESIGN.md: N(x) = x/Σx, MM(x) = (x − min)/(max − min).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import AnchorConfig


def normalize(x: np.ndarray) -> np.ndarray:
    """N(x): scale to sum one (uniform when the sum is zero)."""
    x = np.asarray(x, dtype=np.float64)
    s = x.sum()
    return x / s if s > 0 else np.full_like(x, 1.0 / x.size)


def minmax(x: np.ndarray) -> np.ndarray:
    """MM(x): scale to [0, 1] (zeros for a constant map)."""
    x = np.asarray(x, dtype=np.float64)
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


# criteria --------------------------------------------------------------------------------------
def high_freq_ratio(m: np.ndarray, r_c: float = 0.25) -> float:
    """Eq. 1: share of spectral energy of MM(m) beyond radius r_c·r_max of the centred 2-D FFT."""
    f = np.fft.fftshift(np.fft.fft2(minmax(m)))
    power = np.abs(f) ** 2
    h, w = m.shape
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot(yy - h // 2, xx - w // 2)
    total = power.sum()
    if total <= 0:
        return 0.0
    return float(power[r > r_c * r.max()].sum() / total)


def reference_ratio(layer: int, num_layers: int, cfg: AnchorConfig) -> float:
    """Eq. 2's layer-wise reference ρ̄_l, linear from ``rho_shallow`` to ``rho_deep``."""
    f = layer / (num_layers - 1) if num_layers > 1 else 0.0
    return cfg.rho_shallow * (1 - f) + cfg.rho_deep * f


def spectral_score(m: np.ndarray, layer: int, num_layers: int, cfg: AnchorConfig) -> float:
    """Eq. 2: S_spec = 1 − |ρ_l − ρ̄_l|."""
    return 1.0 - abs(high_freq_ratio(m, cfg.r_c) - reference_ratio(layer, num_layers, cfg))


def total_variation(m: np.ndarray) -> float:
    """Mean absolute horizontal plus vertical difference."""
    tv = 0.0
    if m.shape[1] > 1:
        tv += float(np.abs(np.diff(m, axis=1)).mean())
    if m.shape[0] > 1:
        tv += float(np.abs(np.diff(m, axis=0)).mean())
    return tv


def smoothness_score(m: np.ndarray) -> float:
    """Eq. 3: S_smooth = 1 / (1 + TV(MM(A_l))) — normalised first, else every raw map scores ≈ 1."""
    return 1.0 / (1.0 + total_variation(minmax(m)))


def entropy(m: np.ndarray) -> float:
    """Normalised Shannon entropy of N(m), in [0, 1]."""
    p = normalize(m).ravel()
    if p.size < 2:
        return 0.0
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum() / np.log(p.size))


def focus_score(m: np.ndarray, target: float) -> float:
    """Eq. 5: S_focus = 1 − |H(A_l) − H*(q)|."""
    return 1.0 - abs(entropy(m) - target)


_BROAD = re.compile(r"\b(describe|description|caption|detail|details|everything|what (?:is|can you see|do you see) "
                    r"in (?:the|this) (?:image|picture|scene)|tell me about|overview)\b", re.I)


def is_open_description(question: str) -> bool:
    """The query-type rule: an open description ("describe", "detail", "what do you see", ...)."""
    return bool(_BROAD.search(question or ""))


def query_target_entropy(question: str, cfg: AnchorConfig) -> float:
    """Eq. 4, rule mode: open descriptions want a broad map, pointed questions a focused one.

    The paper leaves H*(q) unspecified; the rule is transparent and both targets are config values.
    """
    return cfg.h_broad if is_open_description(question) else cfg.h_focused


def model_target_entropy(prefill_maps: np.ndarray) -> float:
    """Eq. 4, model mode: mean entropy of the question tokens' own prefill attention to the image."""
    return float(np.mean([entropy(m) for m in prefill_maps]))


def border_mass(m: np.ndarray) -> float:
    p = normalize(m)
    inner = p[1:-1, 1:-1].sum() if min(p.shape) > 2 else 0.0
    return float(1.0 - inner)


# fusion ----------------------------------------------------------------------------------------
@dataclass
class Fusion:
    scores: dict[str, np.ndarray]  # spec, smooth, focus, fused (c_l), each [L]
    lam: np.ndarray  # [L]
    fused: np.ndarray  # [h, w], sums to one


def fuse(layer_maps: np.ndarray, target: float, cfg: AnchorConfig, views=None, keep=None) -> Fusion:
    """Eq. 6: c_l = ω·S_l (+ optional border/depth priors); λ = softmax_l(MM(c)/T); Ā = Σ λ_l N(A_l).

    ``views`` (a multi-view layout's :class:`~adapt.hooks.Views`; ``layer_maps`` then ``[L, 1, n]``): see
    :func:`per_view_fusion`. ``keep`` (bool ``[L]``, None: all): the layers that may feed Ā; the others
    are scored but get λ = 0, and MM and the softmax run over the kept ones (as if the others were absent)."""
    if _multi(views):
        return per_view_fusion(layer_maps, views, lambda maps: _paper_criteria(maps, target, cfg), cfg, keep=keep)
    c, scores = _paper_criteria(layer_maps, target, cfg)
    lam = _layer_weights(c, keep, lambda x: minmax(x) / cfg.temperature)
    return Fusion(scores={**scores, "fused": c}, lam=lam, fused=_weighted(layer_maps, lam))


def _paper_criteria(layer_maps: np.ndarray, target: float, cfg: AnchorConfig) -> tuple[np.ndarray, dict]:
    """Eq. 2, 3 and 5 for every layer at once: the same arithmetic as :func:`spectral_score`,
    :func:`smoothness_score` and :func:`focus_score` map by map, over the stack (the per-layer loop of
    tiny FFTs was most of an anchor's cost on small models and in batch export)."""
    L = layer_maps.shape[0]
    maps = np.asarray(layer_maps, dtype=np.float64)
    mm = _minmax_layers(maps)
    ref = np.array([reference_ratio(l, L, cfg) for l in range(L)])
    spec = 1.0 - np.abs(_high_freq_ratios(mm, cfg.r_c) - ref)
    smooth = 1.0 / (1.0 + _total_variations(mm))
    focus = 1.0 - np.abs(_entropies(maps) - target)
    c = cfg.w_spec * spec + cfg.w_smooth * smooth + cfg.w_focus * focus
    if cfg.w_border:
        c = c - cfg.w_border * np.array([border_mass(m) for m in layer_maps])
    if cfg.w_depth:
        c = c + cfg.w_depth * (np.arange(L) / max(L - 1, 1))
    return c, {"spec": spec, "smooth": smooth, "focus": focus}


def _minmax_layers(maps: np.ndarray) -> np.ndarray:
    """:func:`minmax` of each ``[h, w]`` map of a ``[L, h, w]`` stack."""
    lo = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - lo
    return np.divide(maps - lo, span, out=np.zeros_like(maps), where=span > 0)


def _high_freq_ratios(mm: np.ndarray, r_c: float) -> np.ndarray:
    """:func:`high_freq_ratio` of each min-max-scaled map of the stack."""
    power = np.abs(np.fft.fftshift(np.fft.fft2(mm), axes=(-2, -1))) ** 2
    h, w = mm.shape[1:]
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot(yy - h // 2, xx - w // 2)
    total = power.sum(axis=(1, 2))
    high = power[:, r > r_c * r.max()].sum(axis=1)
    return np.divide(high, total, out=np.zeros_like(total), where=total > 0)


def _total_variations(mm: np.ndarray) -> np.ndarray:
    """:func:`total_variation` of each map of the stack."""
    tv = np.zeros(mm.shape[0])
    if mm.shape[2] > 1:
        tv += np.abs(np.diff(mm, axis=2)).mean(axis=(1, 2))
    if mm.shape[1] > 1:
        tv += np.abs(np.diff(mm, axis=1)).mean(axis=(1, 2))
    return tv


def _entropies(maps: np.ndarray) -> np.ndarray:
    """:func:`entropy` of each map of the stack."""
    flat = maps.reshape(maps.shape[0], -1)
    n = flat.shape[1]
    if n < 2:
        return np.zeros(flat.shape[0])
    s = flat.sum(axis=1, keepdims=True)
    p = np.divide(flat, s, out=np.full_like(flat, 1.0 / n), where=s > 0)
    plogp = np.zeros_like(p)
    np.multiply(p, np.log(p, out=np.zeros_like(p), where=p > 0), out=plogp, where=p > 0)
    return -plogp.sum(axis=1) / np.log(n)


def _softmax(z: np.ndarray) -> np.ndarray:
    lam = np.exp(z - z.max())
    return lam / lam.sum()


def _layer_weights(c: np.ndarray, keep, scale) -> np.ndarray:
    """λ = softmax(scale(c)) over the kept layers, 0 at the others (``keep`` None or all False: every layer)."""
    keep = None if keep is None else np.asarray(keep, dtype=bool)
    if keep is None or keep.all() or not keep.any():
        return _softmax(scale(c))
    lam = np.zeros(len(c))
    lam[keep] = _softmax(scale(np.asarray(c)[keep]))
    return lam


def _weighted(layer_maps: np.ndarray, lam: np.ndarray) -> np.ndarray:
    return normalize(np.tensordot(lam, np.stack([normalize(m) for m in layer_maps]), axes=1))


# several views -----------------------------------------------------------------------------------
def _multi(views) -> bool:
    return views is not None and not views.plain


def _flat(x: np.ndarray, lead: int) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).reshape(*x.shape[:lead], -1)


def cell_shares(views) -> np.ndarray:
    """Each view's share of the layout's grid cells, ``[V]``."""
    cells = np.array([v.cells for v in views], dtype=np.float64)
    return cells / cells.sum()


def view_shares(flat: np.ndarray, views) -> np.ndarray:
    """Each view's share of a flat map's mass over grid cells (newline columns left out), ``[V]``."""
    mass = np.array([float(v.take(flat).sum()) for v in views])
    return mass / mass.sum() if mass.sum() > 0 else cell_shares(views)


def join_views(grids: list[np.ndarray], views, weights) -> np.ndarray:
    """Each view's sum-to-one grid times its weight, written into a ``[1, n]`` map (0 at newline columns)."""
    out = np.zeros(views.n)
    for v, g, wt in zip(views, grids, weights):
        v.put(normalize(g) * wt, out)
    return out.reshape(views.grid)


def per_view_fusion(layer_maps: np.ndarray, views, criteria, cfg: AnchorConfig, authors: bool = False,
                    keep=None) -> Fusion:
    """Eq. 6 over a layout of several views (``layer_maps[L, 1, n]``).

    The criteria run on each view's own grid (newline columns are no cells); a layer's criterion is the
    average over views weighted by their cell counts, so λ is one weight per layer, chosen as on one grid.
    Ā is built per view (Σ_l λ_l N(A_l^v), sum one within the view) and the views are joined with their
    *share*: the λ-weighted share of the layers' attention that fell on the view. Ā sums to one over the
    layout and keeps the model's own split between views; newline columns hold 0."""
    flat = _flat(layer_maps, 1)
    weight = cell_shares(views)
    per = [criteria(v.take(flat)) for v in views]
    c = sum(wt * p[0] for wt, p in zip(weight, per))
    scores = {k: sum(wt * p[1][k] for wt, p in zip(weight, per)) for k in per[0][1]}
    lam = _layer_weights(c, keep, (lambda x: 10.0 * x) if authors else (lambda x: minmax(x) / cfg.temperature))
    return Fusion(scores={**scores, "fused": c}, lam=lam, fused=_weighted_views(flat, lam, views))


def _weighted_views(flat: np.ndarray, lam: np.ndarray, views) -> np.ndarray:
    """Σ_l λ_l N(A_l) per view of ``flat[L, n]``, joined with the λ-weighted attention share of each view."""
    shares = sum(l * view_shares(m, views) for l, m in zip(lam, flat))
    return join_views([np.tensordot(lam, np.stack([normalize(m) for m in v.take(flat)]), axes=1) for v in views],
                      views, shares)


AUTHORS_WEIGHTS = {"boundary": 0.25, "frequency": 0.30, "smoothness": 0.15, "concentration": 0.20, "position": 0.10}


def sobel_smoothness(m: np.ndarray) -> float:
    """1 / (1 + mean Sobel gradient magnitude of MM(m))."""
    x = np.pad(minmax(m), 1, mode="edge")
    gx = (x[:-2, 2:] + 2 * x[1:-1, 2:] + x[2:, 2:]) - (x[:-2, :-2] + 2 * x[1:-1, :-2] + x[2:, :-2])
    gy = (x[2:, :-2] + 2 * x[2:, 1:-1] + x[2:, 2:]) - (x[:-2, :-2] + 2 * x[:-2, 1:-1] + x[:-2, 2:])
    return 1.0 / (1.0 + float(np.hypot(gx, gy).mean()))


def fuse_authors(layer_maps: np.ndarray, cfg: AnchorConfig, views=None, keep=None) -> Fusion:
    """The authors' public fusion (DESIGN §8), as we read it: five criteria per layer — boundary
    (1 − mass on the border), frequency match (Eq. 2's spectral score), Sobel smoothness,
    concentration (1 − entropy) and a layer-position prior peaking at 20/31 of the depth (their
    layer 20 of 32) — each min-max scaled over layers, weighted 0.25 / 0.30 / 0.15 / 0.20 / 0.10, and
    λ = exp(10·c) normalised. The paper's ω, T and H*(q) play no part. Several views and ``keep``: as
    :func:`fuse` (the criteria keep their min-max over every layer; λ is 0 at a layer not kept)."""
    if _multi(views):
        return per_view_fusion(layer_maps, views, lambda maps: _authors_criteria(maps, cfg), cfg, authors=True,
                               keep=keep)
    c, raw = _authors_criteria(layer_maps, cfg)
    lam = _layer_weights(c, keep, lambda x: 10.0 * x)
    return Fusion(scores={**raw, "fused": c}, lam=lam, fused=_weighted(layer_maps, lam))


def _authors_criteria(layer_maps: np.ndarray, cfg: AnchorConfig) -> tuple[np.ndarray, dict]:
    L = layer_maps.shape[0]
    depth = np.arange(L) / max(L - 1, 1)
    raw = {
        "boundary": np.array([1.0 - border_mass(m) for m in layer_maps]),
        "frequency": np.array([spectral_score(m, l, L, cfg) for l, m in enumerate(layer_maps)]),
        "smoothness": np.array([sobel_smoothness(m) for m in layer_maps]),
        "concentration": np.array([1.0 - entropy(m) for m in layer_maps]),
        "position": np.exp(-((depth - 20 / 31) / 0.25) ** 2),
    }
    return sum(AUTHORS_WEIGHTS[k] * minmax(v) for k, v in raw.items()), raw


def halve_border(m: np.ndarray, views=None) -> tuple[np.ndarray, np.ndarray]:
    """The authors' debiasing: the border cells' weight halved (each view's border). Returns
    ``(D, N(m ⊙ D))``."""
    if _multi(views):
        flat = _flat(m, 0)
        parts = [halve_border(v.take(flat)) for v in views]
        return join_views([d for d, _ in parts], views, cell_shares(views)), \
            join_views([w for _, w in parts], views, view_shares(flat, views))
    d = np.ones_like(np.asarray(m, dtype=np.float64))
    if min(d.shape) > 2:
        d[0, :] = d[-1, :] = d[:, 0] = d[:, -1] = 0.5
    return normalize(d), normalize(m * d)


# bias correction -------------------------------------------------------------------------------
def debias(fused: np.ndarray, bias: np.ndarray | None, eps_s: float | None = None, views=None):
    """Eq. 8–9: D = N(1/(B + ε_s)), W = N(Ā ⊙ D). Returns ``(D, W)``; without B, ``(None, N(Ā))``.

    Several views: D and W per view (ε_s from that view's B), joined with Ā's share of each view (W) and
    the views' cell counts (D), so the debiasing moves mass within a view, never between views."""
    if _multi(views):
        flat_f = _flat(fused, 0)
        shares = view_shares(flat_f, views)
        if bias is None:
            return None, join_views([v.take(flat_f) for v in views], views, shares)
        parts = [debias(v.take(flat_f), v.take(_flat(bias, 0)), eps_s) for v in views]
        return join_views([d for d, _ in parts], views, cell_shares(views)), \
            join_views([w for _, w in parts], views, shares)
    if bias is None:
        return None, normalize(fused)
    b = normalize(bias)
    eps = float(b.mean()) if eps_s is None else eps_s
    d = normalize(1.0 / (b + eps))
    return d, normalize(fused * d)


def bias_from_noise(noise_maps: np.ndarray, lam: np.ndarray, target: float, cfg: AnchorConfig,
                    views=None, keep=None) -> np.ndarray:
    """Eq. 7: B = mean_n N(Ā^(n)) from the noise images' per-layer maps ``[M, L, h, w]``.

    ``cfg.bias_lambda="image"`` fuses every noise image's layers with the *image's* λ (``lam``), so
    B is the sink pattern of the layers the anchor is made of; ``"noise"`` fuses each with its own λ
    (Eq. 7 read literally; ``keep`` as in :func:`fuse`). Several views: each noise image's Ā^(n) per view,
    as :func:`fuse` builds Ā."""
    fused = []
    for maps in noise_maps:
        if cfg.bias_lambda == "noise":
            fused.append(normalize(fuse(maps, target, cfg, views, keep).fused))
        elif _multi(views):
            fused.append(_weighted_views(_flat(maps, 1), lam, views))
        else:
            fused.append(_weighted(maps, lam))
    return np.mean(fused, axis=0)


def noise_images(size: tuple[int, int], m: int, seed: int = 0) -> list[Image.Image]:
    """Eq. 7's content-free inputs: Gaussian noise, then grey, black and white fields, more noise."""
    w, h = size
    rng = np.random.default_rng(seed)
    fields = [(128, 128, 128), (0, 0, 0), (255, 255, 255)]
    out = []
    for i in range(m):
        if i in (1, 2, 3) and i - 1 < len(fields):
            out.append(Image.new("RGB", (w, h), fields[i - 1]))
        else:
            noise = np.clip(rng.normal(127.5, 64.0, (h, w, 3)), 0, 255).astype(np.uint8)
            out.append(Image.fromarray(noise))
    return out


def _layout_key(grid) -> list:
    """A layout for a cache key: ``[h, w]`` for one grid (a plain Views included), else every view's
    ``[name, h, w, newline]``."""
    if getattr(grid, "plain", True):
        return [int(g) for g in getattr(grid, "grid", grid)]
    return [list(sig) for sig in grid.signature]


class BiasCache:
    """Bias maps B on disk, one ``.npy`` per (backbone, question, layout, anchor settings).

    ``grid`` in the keys is a one-grid layout's ``(h, w)`` or a multi-view layout's
    :class:`~adapt.hooks.Views` (keyed by its signature: each view's name, shape and newline flag). The
    question is keyed as written (stripped): the model reads "Red" and "red" as different tokens."""

    def __init__(self, directory: str | Path | None = None):
        self.dir = Path(directory or os.environ.get("ADAPT_CACHE", Path.home() / ".cache" / "adapt")) / "bias"

    @staticmethod
    def noise_key(backbone_id: str, question: str, grid: tuple[int, int], cfg: AnchorConfig,
                  image_size: tuple[int, int]) -> str:
        """The noise images' per-layer maps depend on the model, the question (case kept), the layout, the
        image's size (the noise images are made at it: the same layout from another size is other
        pixels), K and the noise set only: fusion settings (T, H*, criteria weights, which λ) are applied
        afterwards."""
        relevant = {k: getattr(cfg, k) for k in ("k", "num_noise", "noise_seed")}
        blob = json.dumps(["noise-maps-v2", backbone_id, question.strip(), _layout_key(grid),
                           [int(s) for s in image_size], relevant], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def get(self, key: str) -> np.ndarray | None:
        path = self.dir / f"{key}.npy"
        try:
            return np.load(path, allow_pickle=False) if path.exists() else None
        except (OSError, ValueError):  # a torn write: recompute
            return None

    def put(self, key: str, bias: np.ndarray) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{key}.{os.getpid()}.npy"
        np.save(tmp, bias)
        os.replace(tmp, self.dir / f"{key}.npy")
