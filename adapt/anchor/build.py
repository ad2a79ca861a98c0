"""Building the visual anchor from a model's runs (Sec. 4.1): the per-layer maps A_l of the anchor
run's first K steps, the noise images' maps for the bias map (Eq. 7–9, cached on disk), and W with
every part kept (:class:`Anchor`). The array math is :mod:`adapt.anchor`; this module runs the
backbone for it, so the methods depend on the anchor, not on the pipeline."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..backbones import Backbone
from ..config import AdaptConfig
from ..enhance import enhance
from ..hooks import Views
from ..hooks.keymap import SLIDING
from ..images import fit
from . import BiasCache, Fusion, bias_from_noise, debias, fuse, fuse_authors, halve_border, model_target_entropy, \
    noise_images, query_target_entropy


def default_bias_cache() -> BiasCache:
    """The on-disk cache (``$ADAPT_CACHE`` or ``~/.cache/adapt``)."""
    return BiasCache()


def backbone_id(backbone: Backbone) -> str:
    """Identity for caching: name plus the weights' size and time when it is a local directory."""
    stamp = []
    path = Path(backbone.name)
    if path.is_dir():
        for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
            st = f.stat()
            stamp.append(f"{f.name}:{st.st_size}:{int(st.st_mtime)}")
    return "|".join([backbone.family, backbone.name, *stamp])


@dataclass
class Anchor:
    """Everything Sec. 4.1 produces for one (image, question)."""

    layer_maps: np.ndarray  # [L, h, w] (a multi-view layout: [L, 1, n], the flat key columns)
    fusion: Fusion
    target_entropy: float
    bias: np.ndarray | None
    debias_mask: np.ndarray | None
    anchor: np.ndarray  # W, [h, w] (a multi-view layout: [1, n], 0 at newline columns)
    cache_hit: bool
    seconds_bias: float
    # captured layers (rows of layer_maps) whose sliding window had lost (part of) the image by the last anchor
    # step (window_kept): left out of the fusion (λ 0), unless no other layer is left (then every layer feeds it)
    window_lost: tuple[int, ...] = ()


def shape_of(grid) -> tuple[int, int]:
    """The array shape over a layout: ``grid`` is a one-grid ``(h, w)`` or a :class:`~adapt.hooks.Views`."""
    return tuple(grid.grid) if isinstance(grid, Views) else tuple(grid)


def views_of(grid) -> Views | None:
    """The views of a multi-view ``grid`` (None for one plain grid: the anchor math runs as it always did)."""
    return grid if isinstance(grid, Views) and not grid.plain else None


def layer_maps_from(maps: np.ndarray, k: int, grid) -> np.ndarray:
    """A_l: mean over the first K steps of ``maps[T, L, n]``, reshaped ``[L, h, w]`` (a multi-view
    layout: ``[L, 1, n]``).

    An answer shorter than K tokens contributes the steps it has.
    """
    return maps[: max(1, min(k, maps.shape[0]))].mean(0).reshape(maps.shape[1], *shape_of(grid))


def window_kept(backbone: Backbone, prepared, row: int, steps: int) -> np.ndarray | None:
    """Which captured layers may feed row ``row``'s anchor of ``steps`` steps (bool per row of the maps), or
    None when all may. A sliding-window layer whose window had dropped (part of) the image by the last anchor
    step read 0 on those keys: its map is not the model's view of the image, so it is left out. Step t's
    query sits at ``prompt_len − 1 + t`` and sees the keys at distance < window (``adapt.hooks.keymap``);
    the row's own first image key decides (left padding moves both alike: a batch row = its single run)."""
    km = backbone.key_map
    if km.window is None or steps < 1:
        return None
    first = int(prepared.span.positions[row].min())
    if first >= prepared.prompt_len + steps - 1 - km.window:  # in the window of the last anchor query
        return None
    return np.array([km.kinds[layer] != SLIDING for layer in km.captured])


def target_entropy(question: str, cfg: AdaptConfig, prefill_maps: np.ndarray | None) -> float:
    if cfg.anchor.target_entropy == "model" and prefill_maps is not None:
        return model_target_entropy(prefill_maps)
    return query_target_entropy(question, cfg.anchor)


def noise_layer_maps(backbone: Backbone, question: str, image_size: tuple[int, int], grid,
                     cfg: AdaptConfig, cache: BiasCache | None) -> tuple[np.ndarray | None, bool]:
    """Eq. 7's inputs: the per-layer maps A_l^(n) of the M noise images with the same question,
    ``[M, L, h, w]``, from one batched K-token run (cached on disk, keyed by the layout's signature: the
    noise images have the image's size, so they give its layout). Returns ``(maps, cache_hit)``."""
    a = cfg.anchor
    if not a.debias or a.num_noise == 0 or a.fusion == "authors":
        return None, False
    key = BiasCache.noise_key(backbone_id(backbone), question, grid, a, image_size)
    if cache is not None:
        hit = cache.get(key)
        if hit is not None and hit.shape[0] == a.num_noise and hit.shape[2:] == shape_of(grid):
            return hit, True
    images = noise_images(image_size, a.num_noise, a.noise_seed)
    prepared = backbone.prepare_batch(images, [question] * len(images))
    if prepared.span.grid != grid:
        raise ValueError(f"noise image grid {prepared.span.grid} differs from the image's {grid}")
    gens = backbone.generate_batch(prepared, max_new_tokens=a.k)
    maps = np.stack([layer_maps_from(g.maps.numpy(), a.k, grid) for g in gens])
    if cache is not None:
        cache.put(key, maps)
    return maps, False


def anchor_from_maps(layer_maps: np.ndarray, question: str, cfg: AdaptConfig, noise_maps: np.ndarray | None,
                     prefill_maps: np.ndarray | None = None, views: Views | None = None,
                     keep: np.ndarray | None = None) -> Anchor:
    """Eq. 1–9 from the per-layer maps A_l ``[L, h, w]`` and the noise images' maps (pure array math).

    ``views`` (a multi-view layout; maps ``[L, 1, n]``): criteria, fusion and debiasing run per view and
    W is their concatenation (:func:`adapt.anchor.per_view_fusion` says how λ and the views' shares are
    made); newline columns get weight 0. The model-mode H*(q) reads the prefill maps over all n keys.
    ``keep`` (:func:`window_kept`): the layers that may feed the anchor (and the model-mode H*(q)); the
    others get λ = 0 and are named in ``Anchor.window_lost`` (when none is kept, all of them feed it)."""
    a = cfg.anchor
    views = views_of(views)
    lost = () if keep is None else tuple(int(i) for i in np.flatnonzero(~np.asarray(keep, dtype=bool)))
    keep = None if keep is None or not np.any(keep) else np.asarray(keep, dtype=bool)
    if keep is not None and prefill_maps is not None:  # the model-mode H*(q) from the kept layers too
        prefill_maps = prefill_maps[keep]
    target = target_entropy(question, cfg, prefill_maps)
    if a.fusion == "authors":
        fusion = fuse_authors(layer_maps, a, views, keep)
        d, w = halve_border(fusion.fused, views)
        return Anchor(layer_maps=layer_maps, fusion=fusion, target_entropy=target, bias=None, debias_mask=d,
                      anchor=w, cache_hit=False, seconds_bias=0.0, window_lost=lost)
    fusion = fuse(layer_maps, target, a, views, keep)
    bias = bias_from_noise(noise_maps, fusion.lam, target, a, views, keep) if noise_maps is not None else None
    d, w = debias(fusion.fused, bias, a.eps_s, views)
    return Anchor(layer_maps=layer_maps, fusion=fusion, target_entropy=target, bias=bias, debias_mask=d, anchor=w,
                  cache_hit=False, seconds_bias=0.0, window_lost=lost)


def build_anchor(backbone: Backbone, question: str, image_size: tuple[int, int], grid,
                 maps: np.ndarray, cfg: AdaptConfig, prefill_maps: np.ndarray | None = None,
                 cache: BiasCache | None = None, keep: np.ndarray | None = None) -> Anchor:
    """Eq. 1–9 from the anchor run's captured maps ``[T, L, n]`` (runs the noise images if not cached);
    ``keep``: :func:`window_kept`."""
    t0 = time.perf_counter()
    noise, hit = noise_layer_maps(backbone, question, image_size, grid, cfg, cache)
    seconds = time.perf_counter() - t0
    anchor = anchor_from_maps(layer_maps_from(maps, cfg.anchor.k, grid), question, cfg, noise, prefill_maps,
                              views=views_of(grid), keep=keep)
    anchor.cache_hit, anchor.seconds_bias = hit, seconds
    return anchor


def probe_anchor(backbone: Backbone, image: Image.Image, question: str, cfg: AdaptConfig,
                 cache: BiasCache | None = None) -> tuple[Anchor, tuple[int, int]]:
    """The anchor from a K-token anchor run alone (no full unsteered answer). Returns ``(anchor, grid)``."""
    prepared = backbone.prepare(image, question)
    probe = backbone.generate(prepared, max_new_tokens=cfg.anchor.k,
                              capture_prefill=cfg.anchor.target_entropy == "model")
    prefill = probe.prefill_maps.cpu().numpy() if probe.prefill_maps is not None else None
    maps = probe.maps.cpu().numpy()
    keep = window_kept(backbone, prepared, 0, min(cfg.anchor.k, maps.shape[0]))
    anchor = build_anchor(backbone, prepared.question, image.size, prepared.span.grid, maps, cfg, prefill, cache,
                          keep)
    return anchor, prepared.span.grid


def anchor_image(backbone: Backbone, image: Image.Image, question: str, cfg: AdaptConfig,
                 cache: BiasCache | None = None) -> tuple[Image.Image, Anchor]:
    """The anchor-guided image for export (Sec. 4.1.4) at ``image``'s own size; the model reads a copy
    of at most ``MAX_SIDE`` pixels on the longest side."""
    anchor, grid = probe_anchor(backbone, fit(image), question, cfg, cache)
    return enhance(image, anchor.anchor, cfg.enhance, geometry=backbone.layout_geometry(image.size, grid)), anchor
