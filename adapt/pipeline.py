"""One ADAPT-TF analysis: backbone → capture → anchor → steering → :class:`~adapt.trace.Trace`.

Pipeline (DESIGN §4): (1) the anchor run — greedy decoding on the original image, whose first K
steps give the per-layer maps A_l; (2) the bias map B from noise images (cached on disk) and the
anchor W; (3) the anchor-guided image; (4) decoding with ASI on, on the enhanced image.
:func:`analyse` runs these as the registered method does (:class:`adapt.methods.AdaptTF`: steps 1 and
4 in one decoding, since nothing is steered before step K) and assembles the Trace from its answer
and the unsteered baseline's. The anchor-building functions here are what the methods call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from .anchor import BiasCache, Fusion, bias_from_noise, debias, fuse, fuse_authors, halve_border, \
    model_target_entropy, noise_images, \
    query_target_entropy
from .steering import amc, steering_weights
from .backbones import Backbone, Generation
from .hooks import Views
from .config import AdaptConfig
from .enhance import enhance
from .images import fit, load_image
from .trace import AnswerTrace, Trace

Progress = Callable[[float, str], None]


def _quiet(fraction: float, message: str) -> None:
    pass


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
    key = BiasCache.noise_key(backbone_id(backbone), question, grid, a)
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
                     prefill_maps: np.ndarray | None = None, views: Views | None = None) -> Anchor:
    """Eq. 1–9 from the per-layer maps A_l ``[L, h, w]`` and the noise images' maps (pure array math).

    ``views`` (a multi-view layout; maps ``[L, 1, n]``): criteria, fusion and debiasing run per view and
    W is their concatenation (:func:`adapt.anchor.per_view_fusion` says how λ and the views' shares are
    made); newline columns get weight 0. The model-mode H*(q) reads the prefill maps over all n keys."""
    a = cfg.anchor
    views = views_of(views)
    target = target_entropy(question, cfg, prefill_maps)
    if a.fusion == "authors":
        fusion = fuse_authors(layer_maps, a, views)
        d, w = halve_border(fusion.fused, views)
        return Anchor(layer_maps=layer_maps, fusion=fusion, target_entropy=target, bias=None, debias_mask=d,
                      anchor=w, cache_hit=False, seconds_bias=0.0)
    fusion = fuse(layer_maps, target, a, views)
    bias = bias_from_noise(noise_maps, fusion.lam, target, a, views) if noise_maps is not None else None
    d, w = debias(fusion.fused, bias, a.eps_s, views)
    return Anchor(layer_maps=layer_maps, fusion=fusion, target_entropy=target, bias=bias, debias_mask=d, anchor=w,
                  cache_hit=False, seconds_bias=0.0)


def build_anchor(backbone: Backbone, question: str, image_size: tuple[int, int], grid,
                 maps: np.ndarray, cfg: AdaptConfig, prefill_maps: np.ndarray | None = None,
                 cache: BiasCache | None = None) -> Anchor:
    """Eq. 1–9 from the anchor run's captured maps ``[T, L, n]`` (runs the noise images if not cached)."""
    t0 = time.perf_counter()
    noise, hit = noise_layer_maps(backbone, question, image_size, grid, cfg, cache)
    seconds = time.perf_counter() - t0
    anchor = anchor_from_maps(layer_maps_from(maps, cfg.anchor.k, grid), question, cfg, noise, prefill_maps,
                              views=views_of(grid))
    anchor.cache_hit, anchor.seconds_bias = hit, seconds
    return anchor


def answer_trace(gen: Generation, weights: np.ndarray, steering, image_used: str) -> AnswerTrace:
    """Per-step dynamics of one answer: AMC, interventions and the three Sec. 3 signals.

    ``steering``: what the steered pass logged, anything with ``amc`` and ``fired`` ``[T, L]`` arrays
    (an :class:`~adapt.methods.adapt_tf.AdaptRecord`); None for an unsteered answer (AMC computed here)."""
    maps = gen.maps.cpu().numpy().astype(np.float32)  # [T, L, n]
    T = maps.shape[0]
    if steering is not None:
        amc_m = np.asarray(steering.amc)[:T]
        fired = np.asarray(steering.fired)[:T]
    else:
        amc_m = amc(maps, weights)
        fired = np.zeros(maps.shape[:2], dtype=bool)
    unit = maps / np.maximum(np.linalg.norm(maps, axis=-1, keepdims=True), 1e-12)
    w_unit = weights / max(np.linalg.norm(weights), 1e-12)
    similarity = unit @ w_unit
    change = np.zeros_like(similarity)
    change[1:] = 1.0 - (unit[1:] * unit[:-1]).sum(-1)
    return AnswerTrace(text=gen.text, token_ids=gen.token_ids, tokens=gen.tokens, maps=maps,
                       amc=amc_m.astype(np.float32), steered=fired, similarity=similarity.astype(np.float32),
                       change=change.astype(np.float32), mass=maps.sum(-1), seconds=gen.seconds,
                       image_used=image_used)


def _baseline_trace(answer, weights: np.ndarray, backbone: Backbone) -> AnswerTrace:
    """A baseline answer as an AnswerTrace; a method that records no attention (stock SDPA) gives its
    text and tokens with empty dynamics."""
    gen = answer.generation
    if gen is not None and gen.maps is not None and gen.maps.shape[0] > 0:
        return answer_trace(gen, weights, None, "original")
    tokens = list(gen.tokens) if gen is not None and gen.tokens else \
        [backbone.tokenizer.decode([t]) for t in answer.token_ids]
    empty = np.zeros((0, backbone.num_layers), np.float32)
    return AnswerTrace(text=answer.text, token_ids=list(answer.token_ids), tokens=tokens,
                       maps=np.zeros((0, backbone.num_layers, int(np.asarray(weights).size)), np.float32),
                       amc=empty, steered=empty.astype(bool), similarity=empty, change=empty, mass=empty,
                       seconds=gen.seconds if gen is not None else 0.0)


def analyse(backbone: Backbone, image, question: str, config: AdaptConfig | None = None,
            bias_cache: BiasCache | None = None, progress: Progress | None = None,
            meta: dict | None = None, compare: str = "greedy") -> Trace:
    """Run ADAPT-TF and the unsteered baseline on one (image, question); return the full Trace.

    ADAPT-TF is the registered method (``get_method("adapt-tf", config, bias_cache)``, the one the
    benchmarks run), here with every layer captured at every step and its :class:`AdaptRecord` kept;
    the baseline is the registered method ``compare`` (default ``greedy``), its attention read against
    ADAPT-TF's anchor; another than greedy is named in ``trace.meta["compare"]`` (with its scalar
    ``info`` and its one line) and timed as ``timings["compare"]``. This function only assembles the
    Trace from their answers. With ASI and enhancement both off, ADAPT-TF steers nothing: its own
    answer is greedy's and nothing decodes twice."""
    from .methods import describe, get_method  # the methods build their anchors from this module

    cfg = (config or AdaptConfig()).validate()
    progress = progress or _quiet
    timings = {}
    t_all = time.perf_counter()
    image = load_image(image)
    steering = cfg.asi.enabled or cfg.enhance.enabled
    method = get_method("adapt-tf", cfg, bias_cache)
    method.lean, method.record = False, True
    other = get_method(compare, cfg, bias_cache)
    if hasattr(other, "lean"):
        other.lean = False  # an ADAPT-TF reading: keep every step's maps, the views show them all
    greedy = compare == "greedy"
    if steering or not greedy:
        progress(0.05, "unsteered answer" if greedy else f"answer with {compare}")
        t0 = time.perf_counter()
        theirs = other.answer(backbone, image, question, cfg.max_new_tokens)
        timings["unsteered" if greedy else "compare"] = time.perf_counter() - t0
    progress(0.35 if steering else 0.05, "visual anchor, bias map and the answer with attention-supervised inference")
    t0 = time.perf_counter()
    ours = method.answer(backbone, image, question, cfg.max_new_tokens)
    rec = ours.record
    timings["bias_map"] = rec.seconds_bias
    timings["steered" if steering else "unsteered"] = time.perf_counter() - t0 - rec.seconds_bias
    anchor, grid = rec.anchor, rec.grid
    anchor.cache_hit, anchor.seconds_bias = rec.bias_cache_hit, rec.seconds_bias
    weights = steering_weights(anchor.anchor)
    unsteered = _baseline_trace(theirs if steering or not greedy else ours, weights, backbone)
    steered = answer_trace(ours.generation, weights, rec, rec.image_used) if steering else None
    # shown and exported even when not answered on; the grid placed where the processor's crop took it
    enhanced = rec.enhanced if rec.enhanced is not None else \
        enhance(image, anchor.anchor, cfg.enhance, geometry=backbone.layout_geometry(image.size, grid))
    layers = rec.layers
    threshold = rec.threshold if steering else np.full(backbone.num_layers, np.nan)
    timings["total"] = time.perf_counter() - t_all
    progress(1.0, "done")
    views = views_of(grid)
    meta = dict(meta or {})
    if not greedy:
        meta.update(compare=compare, compare_about=describe().get(compare, ""),
                    compare_info={k: v for k, v in theirs.info.items() if isinstance(v, (int, float, str, bool))})
    return Trace(question=rec.question, backbone=backbone.name, grid=shape_of(grid), config=cfg.to_dict(),
                 image=image, enhanced_image=enhanced, layer_maps=anchor.layer_maps.astype(np.float32),
                 scores={k: v.astype(np.float32) for k, v in anchor.fusion.scores.items()},
                 lam=anchor.fusion.lam.astype(np.float32), target_entropy=anchor.target_entropy,
                 fused=anchor.fusion.fused.astype(np.float32),
                 bias=None if anchor.bias is None else anchor.bias.astype(np.float32),
                 debias_mask=None if anchor.debias_mask is None else anchor.debias_mask.astype(np.float32),
                 anchor=anchor.anchor.astype(np.float32), threshold=threshold.astype(np.float32),
                 asi_layers=list(layers), unsteered=unsteered, steered=steered,
                 bias_cache_hit=anchor.cache_hit, timings=timings, meta=meta,
                 views=None if views is None else views.to_list())


def probe_anchor(backbone: Backbone, image: Image.Image, question: str, cfg: AdaptConfig,
                 cache: BiasCache | None = None) -> tuple[Anchor, tuple[int, int]]:
    """The anchor from a K-token anchor run alone (no full unsteered answer). Returns ``(anchor, grid)``."""
    prepared = backbone.prepare(image, question)
    probe = backbone.generate(prepared, max_new_tokens=cfg.anchor.k,
                              capture_prefill=cfg.anchor.target_entropy == "model")
    prefill = probe.prefill_maps.cpu().numpy() if probe.prefill_maps is not None else None
    anchor = build_anchor(backbone, prepared.question, image.size, prepared.span.grid, probe.maps.cpu().numpy(),
                          cfg, prefill, cache)
    return anchor, prepared.span.grid


def anchor_image(backbone: Backbone, image: Image.Image, question: str, cfg: AdaptConfig,
                 cache: BiasCache | None = None) -> tuple[Image.Image, Anchor]:
    """The anchor-guided image for export (Sec. 4.1.4) at ``image``'s own size; the model reads a copy
    of at most ``MAX_SIDE`` pixels on the longest side."""
    anchor, grid = probe_anchor(backbone, fit(image), question, cfg, cache)
    return enhance(image, anchor.anchor, cfg.enhance, geometry=backbone.layout_geometry(image.size, grid)), anchor
