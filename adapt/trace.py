"""The Trace: everything one analysed answer produced, serialisable to one ``.zip`` (JSON + NPZ + PNG)."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
from PIL import Image

FORMAT = "adapt-trace/1"


@dataclass
class AnswerTrace:
    """One decoded answer with its attention dynamics (T steps × L layers)."""

    text: str
    token_ids: list[int]
    tokens: list[str]
    maps: np.ndarray  # [T, L, h*w] attention of each step's query over the image keys (the one used)
    amc: np.ndarray  # [T, L] AMC index against the anchor weights (Eq. 10), before any steering
    steered: np.ndarray  # [T, L] bool: ASI intervened at (step, layer)
    similarity: np.ndarray  # [T, L] cosine similarity of the step's map to the anchor (Sec. 3, signal 1)
    change: np.ndarray  # [T, L] 1 − cosine to the previous step's map (signal 2; step 0 is 0)
    mass: np.ndarray  # [T, L] total attention on image tokens (signal 3)
    seconds: float = 0.0
    image_used: str = "original"  # "original" | "enhanced"

    @property
    def num_interventions(self) -> int:
        return int(self.steered.sum())


@dataclass
class Trace:
    """Result of :func:`adapt.pipeline.analyse` (paper Sec. 3–4 in one object)."""

    question: str
    backbone: str
    grid: tuple[int, int]
    config: dict
    image: Image.Image
    enhanced_image: Image.Image | None
    layer_maps: np.ndarray  # [L, h, w] A_l: mean attention over the first K steps
    scores: dict[str, np.ndarray]  # "spec", "smooth", "focus", "fused" (c_l) → [L]
    lam: np.ndarray  # [L] fusion weights λ (Eq. 6)
    target_entropy: float  # H*(q) used by the focus criterion (Eq. 4)
    fused: np.ndarray  # [h, w] Ā (Eq. 6)
    bias: np.ndarray | None  # [h, w] B (Eq. 7), None when debiasing is off
    debias_mask: np.ndarray | None  # [h, w] D (Eq. 8)
    anchor: np.ndarray  # [h, w] W (Eq. 9)
    threshold: np.ndarray  # [L] AMC trigger threshold per layer
    asi_layers: list[int]  # layers monitored and steered
    unsteered: AnswerTrace
    steered: AnswerTrace | None
    bias_cache_hit: bool = False
    timings: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)  # e.g. ground-truth objects of a world scene

    @property
    def num_layers(self) -> int:
        return self.layer_maps.shape[0]

    # serialisation --------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write one zip: ``trace.json`` (text, scalars), ``arrays.npz``, ``image.png``, ``enhanced.png``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {}
        doc: dict = {"format": FORMAT}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("image", "enhanced_image"):
                continue
            if f.name in ("unsteered", "steered"):
                doc[f.name] = None if v is None else _answer_to_doc(v, f.name, arrays)
            elif f.name == "scores":
                doc["scores"] = sorted(v)
                arrays.update({f"scores.{k}": np.asarray(a) for k, a in v.items()})
            elif isinstance(v, np.ndarray) or (v is None and f.name in ("bias", "debias_mask")):
                if v is not None:
                    arrays[f.name] = v
            else:
                doc[f.name] = _jsonable(v)
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
            z.writestr("trace.json", json.dumps(doc, indent=1))
            buf = io.BytesIO()
            np.savez_compressed(buf, **arrays)
            z.writestr("arrays.npz", buf.getvalue())
            z.writestr("image.png", _png(self.image))
            if self.enhanced_image is not None:
                z.writestr("enhanced.png", _png(self.enhanced_image))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Trace":
        try:
            with zipfile.ZipFile(path) as z:
                names = set(z.namelist())
                doc = json.loads(z.read("trace.json"))
                arrays = dict(np.load(io.BytesIO(z.read("arrays.npz")), allow_pickle=False))
                image = Image.open(io.BytesIO(z.read("image.png"))).convert("RGB")
                enhanced = (Image.open(io.BytesIO(z.read("enhanced.png"))).convert("RGB")
                            if "enhanced.png" in names else None)
        except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, OSError, ValueError) as exc:
            raise ValueError(f"not an adapt trace file: {exc}") from exc
        if doc.get("format") != FORMAT:
            raise ValueError(f"unsupported trace format {doc.get('format')!r} (expected {FORMAT})")
        kw = {}
        for f in fields(cls):
            if f.name == "image":
                kw[f.name] = image
            elif f.name == "enhanced_image":
                kw[f.name] = enhanced
            elif f.name in ("unsteered", "steered"):
                kw[f.name] = None if doc[f.name] is None else _answer_from_doc(doc[f.name], f.name, arrays)
            elif f.name == "scores":
                kw[f.name] = {k: arrays[f"scores.{k}"] for k in doc["scores"]}
            elif f.name in doc:
                kw[f.name] = doc[f.name]
            else:
                kw[f.name] = arrays.get(f.name)
        kw["grid"] = tuple(kw["grid"])
        return cls(**kw)


_ANSWER_ARRAYS = ("maps", "amc", "steered", "similarity", "change", "mass")


def _answer_to_doc(a: AnswerTrace, prefix: str, arrays: dict) -> dict:
    for name in _ANSWER_ARRAYS:
        arrays[f"{prefix}.{name}"] = getattr(a, name)
    return {f.name: _jsonable(getattr(a, f.name)) for f in fields(a) if f.name not in _ANSWER_ARRAYS}


def _answer_from_doc(doc: dict, prefix: str, arrays: dict) -> AnswerTrace:
    return AnswerTrace(**doc, **{n: arrays[f"{prefix}.{n}"] for n in _ANSWER_ARRAYS})


def _jsonable(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.floating, np.integer, np.bool_)):
        return v.item()
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
