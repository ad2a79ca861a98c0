"""Referring-expression grounding from an attention map (paper Table 3a): RefCOCO / RefCOCOg-style items,
the box with the highest mean map value, accuracy at IoU ≥ 0.5 and mIoU.

Items are JSONL lines ``{"id", "image", "expression", "candidates": [[x, y, w, h], ...], "gold": [x, y, w, h]}``
with boxes in COCO's ``x, y, width, height`` pixels of the original image (the order the RefCOCO
annotations use); ``"gold"`` may instead be the index of the referred candidate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .formats import DataError, iter_jsonl
from .metrics import grounding_accuracy


@dataclass
class GroundingItem:
    """One referring expression with its candidate boxes and the referred box, ``(x0, y0, x1, y1)`` pixels."""

    id: str
    image: str
    expression: str
    candidates: list[tuple[float, float, float, float]]
    gold: tuple[float, float, float, float]


def _xyxy(box, path, lineno) -> tuple[float, float, float, float]:
    try:
        x, y, w, h = (float(v) for v in box)
    except (TypeError, ValueError):
        raise DataError(f"{path}, line {lineno}: a box is not four numbers [x, y, w, h]: {box!r}") from None
    if w <= 0 or h <= 0:
        raise DataError(f"{path}, line {lineno}: a box has no area: {box!r}")
    return (x, y, x + w, y + h)


def load_items(path: str | Path) -> list[GroundingItem]:
    """The grounding items of a JSONL file (see the module's docstring for the format)."""
    out = []
    for lineno, obj in iter_jsonl(path, ("image", "expression", "candidates", "gold"), "grounding item file"):
        if not isinstance(obj["candidates"], list) or not obj["candidates"]:
            raise DataError(f"{path}, line {lineno}: candidates must be a non-empty list of boxes")
        cands = [_xyxy(b, path, lineno) for b in obj["candidates"]]
        gold = obj["gold"]
        if isinstance(gold, int) and not isinstance(gold, bool):
            if not 0 <= gold < len(cands):
                raise DataError(f"{path}, line {lineno}: gold index {gold} is not one of the {len(cands)} candidates")
            gold_box = cands[gold]
        else:
            gold_box = _xyxy(gold, path, lineno)
        out.append(GroundingItem(str(obj.get("id", lineno)), str(obj["image"]), str(obj["expression"]), cands,
                                 gold_box))
    return out


def box_mean(heat: np.ndarray, box: Sequence[float]) -> float:
    """Mean of a pixel-space map (H × W, the original image's size) inside ``(x0, y0, x1, y1)``; a box
    smaller than a pixel takes the pixel it lies in. NaN pixels (cropped away by the processor) are
    left out; a box made only of them is ``-inf`` (it cannot win)."""
    h, w = heat.shape
    x0, y0, x1, y1 = box
    c0, r0 = int(np.clip(np.floor(x0), 0, w - 1)), int(np.clip(np.floor(y0), 0, h - 1))
    c1, r1 = int(np.clip(np.ceil(x1), c0 + 1, w)), int(np.clip(np.ceil(y1), r0 + 1, h))
    vals = heat[r0:r1, c0:c1]
    seen = ~np.isnan(vals)
    return float(vals[seen].mean()) if seen.any() else float("-inf")


def pick_box(heat: np.ndarray, candidates: Sequence[Sequence[float]]) -> int:
    """Index of the candidate with the highest mean map value (the first one on a tie)."""
    return int(np.argmax([box_mean(heat, b) for b in candidates]))


def grounding_scores(heats: Sequence[np.ndarray], items: Sequence[GroundingItem], threshold: float = 0.5) -> dict:
    """Accuracy (IoU ≥ ``threshold`` with the referred box) and mIoU of the boxes the maps pick."""
    picked = [it.candidates[pick_box(h, it.candidates)] for h, it in zip(heats, items)]
    res = grounding_accuracy(picked, [it.gold for it in items], threshold)
    return {"accuracy": res["acc"], "miou": res["mean_iou"], "n": res["n"]}
