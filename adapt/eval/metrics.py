"""Exact hallucination metrics: CHAIR over world objects, POPE, grounding IoU.  Pure functions."""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


def chair(responses_objects: Sequence[Iterable[str]], truths: Sequence[Iterable[str]]) -> dict:
    """CHAIR over object categories.

    ``responses_objects[i]``: the categories mentioned in response i (e.g. ``read_objects(text)``;
    repeats are collapsed: each category counts once per response); ``truths[i]``: the categories
    present in image i.

    chair_s = fraction of responses with at least one hallucinated category;
    chair_i = hallucinated mentions / all mentions (summed over responses);
    recall  = covered true categories / all true categories (summed over responses)."""
    if len(responses_objects) != len(truths):
        raise ValueError("responses_objects and truths differ in length")
    n = len(truths)
    hall_resp = hall = mentioned = covered = total = 0
    for resp, truth in zip(responses_objects, truths):
        r, t = set(resp), set(truth)
        h = len(r - t)
        hall += h
        hall_resp += h > 0
        mentioned += len(r)
        covered += len(r & t)
        total += len(t)
    return {
        "chair_s": hall_resp / n if n else 0.0,
        "chair_i": hall / mentioned if mentioned else 0.0,
        "recall": covered / total if total else 0.0,
        "n": n,
    }


def chair_i_change(base_objects: Sequence[Iterable[str]], new_objects: Sequence[Iterable[str]],
                   truths: Sequence[Iterable[str]], samples: int = 2000, seed: int = 0) -> dict:
    """Relative change of CHAIR_i from a base run to a new run on the same images, with a paired
    bootstrap 95 % interval (images resampled with replacement, both runs together).

    Returns ``{"change", "ci_low", "ci_high"}`` (None where the base run has no hallucination);
    e.g. −0.2 means 20 % fewer hallucinated mentions per mention. With few hallucinations the
    interval is wide: that is the point of reporting it."""
    if not (len(base_objects) == len(new_objects) == len(truths)):
        raise ValueError("the two runs and the truths differ in length")

    def counts(objects):
        return np.array([(len(set(r) - set(t)), len(set(r))) for r, t in zip(objects, truths)], dtype=float)

    a, b = counts(base_objects), counts(new_objects)

    def change(idx):
        ha, ma = a[idx, 0].sum(-1), a[idx, 1].sum(-1)
        hb, mb = b[idx, 0].sum(-1), b[idx, 1].sum(-1)
        ca, cb = ha / np.maximum(ma, 1), hb / np.maximum(mb, 1)
        return np.where(ca > 0, cb / np.where(ca > 0, ca, 1) - 1, np.nan)

    n = len(truths)
    full = float(change(np.arange(n)[None])[0]) if n else float("nan")
    boot = change(np.random.default_rng(seed).integers(0, n, size=(samples, n))) if n else np.array([np.nan])
    boot = boot[np.isfinite(boot)]
    lo, hi = (np.percentile(boot, [2.5, 97.5]) if boot.size else (np.nan, np.nan))
    # undefined (the base run has no hallucination to change) is None, which JSON can hold
    return {k: (float(v) if np.isfinite(v) else None) for k, v in (("change", full), ("ci_low", lo), ("ci_high", hi))}


def paired_mean_diff(base: Sequence[Sequence[float]], new: Sequence[Sequence[float]], samples: int = 2000,
                     seed: int = 0) -> dict:
    """Difference of a pooled mean (new − base) over paired units, with a paired-bootstrap 95 % interval.

    ``base[i]`` and ``new[i]`` hold the values of unit i (e.g. one scene's POPE answers scored 0/1) in
    both runs; units are resampled with replacement, both runs together."""
    if len(base) != len(new):
        raise ValueError("the two runs differ in length")
    n = len(base)
    if n == 0:
        return {"diff": None, "ci_low": None, "ci_high": None}
    sums = np.array([[sum(b), len(b), sum(x), len(x)] for b, x in zip(base, new)], dtype=float)

    def diff(idx):
        s = sums[idx].sum(-2)
        return s[..., 2] / np.maximum(s[..., 3], 1) - s[..., 0] / np.maximum(s[..., 1], 1)

    full = float(diff(np.arange(n)))
    boot = diff(np.random.default_rng(seed).integers(0, n, size=(samples, n)))
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"diff": full, "ci_low": float(lo), "ci_high": float(hi)}


def parse_yes_no(text: str) -> str:
    """Answer parsing of the original POPE evaluation: keep the text before the first '.',
    drop commas, split into words; 'no' or 'not' among them -> 'no', else 'yes'."""
    t = text.strip()
    if "." in t:
        t = t.split(".")[0]
    t = t.replace(",", "")
    ws = t.split(" ")
    if "No" in ws or "not" in ws or "no" in ws:
        return "no"
    return "yes"


def pope_metrics(preds: Sequence[str], labels: Sequence[str]) -> dict:
    """Accuracy, precision, recall, F1 and yes-ratio with 'yes' as the positive class.

    ``preds`` are 'yes'/'no' (parse free text with ``parse_yes_no`` first)."""
    if len(preds) != len(labels):
        raise ValueError("preds and labels differ in length")
    tp = fp = tn = fn = 0
    for p, l in zip(preds, labels):
        p, l = p.strip().lower(), l.strip().lower()
        if p == "yes" and l == "yes":
            tp += 1
        elif p == "yes":
            fp += 1
        elif l == "no":
            tn += 1
        else:
            fn += 1
    n = tp + fp + tn + fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "acc": (tp + tn) / n if n else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": (tp + fp) / n if n else 0.0,
        "n": n,
    }


def iou(box_a: Sequence[float], box_b: Sequence[float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    ax0, ay0, ax1, ay1 = box_a
    bx0, by0, bx1, by1 = box_b
    iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
    ih = max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return inter / union if union > 0 else 0.0


def grounding_accuracy(pred_boxes: Sequence[Sequence[float]], true_boxes: Sequence[Sequence[float]], threshold: float = 0.5) -> dict:
    """Share of predictions with IoU >= threshold, and the mean IoU."""
    ious = [iou(p, t) for p, t in zip(pred_boxes, true_boxes)]
    n = len(ious)
    return {
        "acc": sum(i >= threshold for i in ious) / n if n else 0.0,
        "mean_iou": sum(ious) / n if n else 0.0,
        "n": n,
    }
