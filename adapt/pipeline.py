"""One ADAPT-TF analysis: backbone → capture → anchor → steering → :class:`~adapt.trace.Trace`.

Pipeline (DESIGN §4): (1) the anchor run — greedy decoding on the original image, whose first K
steps give the per-layer maps A_l; (2) the bias map B from noise images (cached on disk) and the
anchor W; (3) the anchor-guided image; (4) decoding with ASI on, on the enhanced image.
:func:`analyse` runs these as the registered method does (:class:`adapt.methods.AdaptTF`: steps 1 and
4 in one decoding, since nothing is steered before step K) and assembles the Trace from its answer
and the unsteered baseline's. The anchor is built by :mod:`adapt.anchor.build`, which the methods call.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from .anchor import BiasCache
from .anchor.build import default_bias_cache, shape_of, views_of  # noqa: F401 (default_bias_cache: the public example's)
from .steering import amc, steering_weights
from .backbones import Backbone, Generation
from .config import AdaptConfig
from .enhance import enhance
from .images import load_image
from .methods import describe, get_method
from .trace import AnswerTrace, Trace

Progress = Callable[[float, str], None]


def _quiet(fraction: float, message: str) -> None:
    pass


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


def view_boxes(backbone: Backbone, image_size: tuple[int, int], views) -> dict[str, list[float]]:
    """Each view's grid extent in the original image's pixels, ``name → [x0, y0, x1, y1]``, from the
    processor's geometry (past the image where the processor pads, as Mllama's last tiles); views the
    family has no geometry for are left out (the app then places them by name)."""
    geometries = backbone.view_geometries(image_size)
    return {v.name: [round(float(x), 4) for x in geometries[v.name].visible_box()]
            for v in views if v.name in geometries}


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
    if views is not None:  # where each view lies in the image: a reopened trace draws it there without the model
        meta["view_boxes"] = view_boxes(backbone, image.size, views)
    if ours.generation.keys:  # a decoder with layers that are not full attention: which were read, which not
        meta["keys"] = ours.generation.keys
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
