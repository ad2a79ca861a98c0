"""Grounding from the anchor (paper Table 3a): for a referring expression, the candidate box with the
highest mean map value in the original image's pixels, for several maps of one anchor run.

The maps compared (all from the same K-token anchor run, :func:`adapt.anchor.build.probe_anchor`):

==============  ===================================================================================
``last_layer``  the raw attention of the decoder's last layer, A_L (no criterion, no fusion)
``spec``        the layer that spectral consistency alone ranks first (Eq. 1–2)
``smooth``      the layer that spatial smoothness alone ranks first (Eq. 3)
``focus``       the layer that adaptive focus alone ranks first (Eq. 4–5)
``fused``       the λ-weighted fusion Ā of all layers (Eq. 6), before debiasing
``anchor``      the debiased anchor W = N(Ā ⊙ D) (Eq. 7–9): ADAPT's visual anchor
==============  ===================================================================================

Each grid map is drawn at the original size through the backbone's cell → pixel map
(:meth:`adapt.backbones.base.Backbone.input_geometry`); pixels the processor cropped away carry no
value and do not enter a box's mean.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .metrics import iou
from .refcoco import box_mean

MAP_SOURCES = ("last_layer", "spec", "smooth", "focus", "fused", "anchor")
CRITERIA = ("spec", "smooth", "focus")


def candidate_maps(anchor) -> dict[str, np.ndarray]:
    """The grid maps of :data:`MAP_SOURCES` from one :class:`adapt.anchor.build.Anchor`; a criterion the
    fusion did not compute (the authors' fusion has other criteria) is left out."""
    layers = anchor.layer_maps
    out = {"last_layer": layers[-1]}
    for crit in CRITERIA:
        scores = anchor.fusion.scores.get(crit)
        if scores is not None:
            out[crit] = layers[int(np.argmax(scores))]
    out["fused"] = anchor.fusion.fused
    out["anchor"] = anchor.anchor
    return out


def pick(pixel_map: np.ndarray, candidates: Sequence[Sequence[float]]) -> int:
    """Index of the candidate with the highest mean map value (the first one on a tie); a candidate
    entirely outside what the model saw ranks last."""
    means = [box_mean(pixel_map, b) for b in candidates]
    return int(np.argmax(means))


def ground(backbone, image, question: str, candidates: Sequence[Sequence[float]], gold: Sequence[float], cfg,
           cache=None) -> dict:
    """One item: the anchor run on (``image``, ``question``), then per map the picked candidate, its
    box and IoU with ``gold`` (boxes ``(x0, y0, x1, y1)`` in original pixels). Also the chosen layer
    of each criterion and the grid, so a record explains itself."""
    from ..anchor.build import probe_anchor

    anchor, grid = probe_anchor(backbone, image, question, cfg, cache)
    geometry = backbone.layout_geometry(image.size, grid)  # a multi-view layout: each view through its own
    maps = candidate_maps(anchor)
    picks = {}
    for name, grid_map in maps.items():
        i = pick(geometry.to_image(grid_map), candidates)
        picks[name] = {"index": i, "iou": iou(candidates[i], gold)}
    layers = {c: int(np.argmax(anchor.fusion.scores[c])) for c in CRITERIA if c in anchor.fusion.scores}
    return {"picks": picks, "criterion_layers": layers, "grid": list(getattr(grid, "signature", grid)),
            "chance": chance_accuracy(candidates, gold), "chance_iou": float(np.mean([iou(c, gold) for c in candidates]))}


def chance_accuracy(candidates: Sequence[Sequence[float]], gold: Sequence[float], threshold: float = 0.5) -> float:
    """Expected accuracy of a uniformly random pick: the share of candidates with IoU ≥ ``threshold``."""
    return float(np.mean([iou(c, gold) >= threshold for c in candidates]))


def summarise(records: list[dict], threshold: float = 0.5) -> dict:
    """Accuracy (IoU ≥ ``threshold``) and mIoU of every map over the records, plus a random pick's
    expectation (``chance_acc``, ``chance_miou``) and which layer each criterion chose how often."""
    out: dict = {"n": len(records)}
    if not records:
        return out
    for name in MAP_SOURCES:
        ious = [r["picks"][name]["iou"] for r in records if name in r["picks"]]
        if ious:
            out[f"acc_{name}"] = float(np.mean([v >= threshold for v in ious]))
            out[f"miou_{name}"] = float(np.mean(ious))
    out["chance_acc"] = float(np.mean([r["chance"] for r in records]))
    out["chance_miou"] = float(np.mean([r["chance_iou"] for r in records]))
    for crit in CRITERIA:
        chosen = [r["criterion_layers"][crit] for r in records if crit in r.get("criterion_layers", {})]
        if chosen:
            values, counts = np.unique(chosen, return_counts=True)
            out[f"layers_{crit}"] = {int(v): int(c) for v, c in zip(values, counts)}
    return out


TABLE_KEYS = tuple(f"{m}_{s}" for s in MAP_SOURCES for m in ("acc", "miou")) + ("chance_acc", "chance_miou", "n")
