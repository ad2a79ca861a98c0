"""The Trace: everything one analysed answer produced, serialisable to one ``.zip`` (JSON + NPZ + PNG)."""

from __future__ import annotations

import io
import json
import math
import shutil
import struct
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
from PIL import Image

FORMAT = "adapt-trace/1"


@dataclass(frozen=True)
class TraceLimits:
    """What :meth:`Trace.load` accepts from a file, checked before anything is decompressed.

    The defaults hold every trace the pipeline writes for real checkpoints with room to spare
    (LLaVA-1.5: a 24×24 grid, 32 layers; both answers' per-step maps of 40 layers over 576 cells
    fit 128 MiB up to ~720 steps each) and keep a hostile file's cost far below the app's memory.
    Arrays must also have exactly the shapes the trace's own grid, layers and steps give them."""

    max_members: int = 16  # a trace has 3 or 4
    max_json_bytes: int = 8 << 20
    max_array_bytes: int = 128 << 20  # all arrays together, decompressed
    max_arrays: int = 64  # a trace has ~25
    max_image_pixels: int = 2 * 2048 * 2048  # images are fitted to 2048 px (adapt.images.MAX_SIDE)
    max_image_bytes: int = 64 << 20  # a PNG member as stored in the zip, decompressed
    max_grid_cells: int = 1 << 15  # image tokens (LLaVA-1.5: 576; Qwen2.5-VL at its largest: 16 384)
    max_layers: int = 512
    max_steps: int = 4096  # decoding steps per answer (max_new_tokens is at most 2048)


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
    # a multi-view layout (grid is then (1, n), maps flat over the n image keys): each view's name, h, w
    # and whether its rows end in a newline key, in key order; None for one grid
    views: list | None = None

    @property
    def num_layers(self) -> int:
        return self.layer_maps.shape[0]

    @property
    def layout(self):
        """The trace's :class:`~adapt.hooks.Views` (a one-grid trace: one view ``base`` on its grid)."""
        from .hooks.layout import Views

        if not self.views:
            return Views.from_shapes([("base", self.grid[0], self.grid[1], False)])
        return Views.from_shapes([(v["name"], v["h"], v["w"], v["newline"]) for v in self.views])

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
    def load(cls, path: str | Path, limits: TraceLimits | None = None) -> "Trace":
        """Read a trace written by :meth:`save`.

        The file may come from anyone (the app opens uploads): every size it declares (members,
        arrays, images) is checked against ``limits`` and against the trace's own grid, layers and
        steps before anything is decompressed, and maps must be finite. Anything else than a
        well-formed trace raises ``ValueError`` with one line saying what is wrong."""
        lim = limits or TraceLimits()
        try:
            with zipfile.ZipFile(path) as z:
                infos = _members(z, lim)
                doc = _read_doc(z, infos["trace.json"])
                with tempfile.TemporaryFile() as tmp:  # the npz is a zip itself: seekable, on disk
                    with z.open(infos["arrays.npz"]) as src:
                        shutil.copyfileobj(src, tmp, 1 << 20)
                    tmp.seek(0)
                    arrays = _read_arrays(tmp, doc, lim)
                image = _read_png(z, infos["image.png"], lim)
                enhanced = _read_png(z, infos["enhanced.png"], lim) if "enhanced.png" in infos else None
        except _Refused as exc:
            raise ValueError(str(exc)) from None
        except RecursionError:
            raise ValueError("trace.json is nested too deeply") from None
        except (zipfile.BadZipFile, zipfile.LargeZipFile, KeyError, json.JSONDecodeError, OSError, ValueError,
                EOFError, RuntimeError, NotImplementedError, zlib.error, Image.DecompressionBombError) as exc:
            raise ValueError(f"not an adapt trace file: {_one_line(exc)}") from None
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


# ------------------------------------------------------------------------------- reading safely
class _Refused(ValueError):
    """A trace file that breaks a rule of :meth:`Trace.load`; the message is the user's one line."""


_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)  # others decompress unbounded per read
_OPTIONAL_DOC = {"bias_cache_hit": False, "timings": {}, "meta": {}, "views": None}
_DOC = {"question": str, "backbone": str, "grid": list, "config": dict, "target_entropy": (int, float),
        "asi_layers": list, "scores": list, "unsteered": dict, "steered": (dict, type(None)), "bias_cache_hit": bool,
        "timings": dict, "meta": dict, "views": (list, type(None))}
_ANSWER_DOC = {"text": str, "token_ids": list, "tokens": list, "seconds": (int, float), "image_used": str}
_FINITE = ("layer_maps", "fused", "anchor", "bias", "debias_mask", "lam")  # maps shown as images or weights
_KIND_NAMES = {str: "text", list: "a list", dict: "an object", (dict, type(None)): "an object or null",
               (int, float): "a number", bool: "true or false", (list, type(None)): "a list or null"}
_VIEW_DOC = {"name": str, "h": int, "w": int, "newline": bool}
MAX_VIEWS = 64  # LLaVA-NeXT has 2, InternVL up to 13, Idefics3 up to 37


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:199] + "…"


def _short(name: str) -> str:
    """A name from the file, quoted and cut short for a one-line message."""
    return repr(name if len(name) <= 40 else name[:39] + "…")


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n} bytes"


def _members(z: zipfile.ZipFile, lim: TraceLimits) -> dict[str, zipfile.ZipInfo]:
    infos = z.infolist()
    if len(infos) > lim.max_members:
        raise _Refused(f"not an adapt trace file: {len(infos)} members (a trace has at most {lim.max_members})")
    by_name: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        if info.filename in by_name:
            raise _Refused(f"not an adapt trace file: {_short(info.filename)} is in it twice")
        by_name[info.filename] = info
    for name in ("trace.json", "arrays.npz", "image.png"):
        if name not in by_name:
            raise _Refused(f"not an adapt trace file: it has no {name}")
    caps = {"trace.json": lim.max_json_bytes, "arrays.npz": lim.max_array_bytes + (1 << 20),
            "image.png": lim.max_image_bytes, "enhanced.png": lim.max_image_bytes}
    for name, cap in caps.items():
        info = by_name.get(name)
        if info is None:
            continue
        if info.compress_type not in _ZIP_METHODS:
            raise _Refused(f"{name}: unsupported compression (a trace is stored or deflated)")
        if info.flag_bits & 0x1:
            raise _Refused(f"{name}: encrypted")
        if info.file_size > cap:
            raise _Refused(f"{name}: {_mib(info.file_size)} unpacked, more than the {_mib(cap)} a trace may hold")
    return by_name


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _has_type(v, kind) -> bool:
    return isinstance(v, kind) and not (kind == (int, float) and isinstance(v, bool))  # JSON true is no number


def _read_doc(z: zipfile.ZipFile, info: zipfile.ZipInfo) -> dict:
    """trace.json, its types checked (the arrays' shapes are checked against it later)."""
    doc = json.loads(z.read(info))
    if not isinstance(doc, dict):
        raise _Refused("trace.json: not a JSON object")
    if doc.get("format") != FORMAT:
        shown = repr(doc.get("format"))
        raise _Refused(f"unsupported trace format {shown[:60]} (expected {FORMAT})")
    for key, default in _OPTIONAL_DOC.items():
        doc.setdefault(key, default)
    for key, kind in _DOC.items():
        if key not in doc:
            raise _Refused(f"trace.json: no {key!r}")
        if not _has_type(doc[key], kind):
            raise _Refused(f"trace.json: {key!r} is not {_KIND_NAMES[kind]}")
    if not math.isfinite(doc["target_entropy"]):
        raise _Refused("trace.json: 'target_entropy' is not a finite number")
    grid = doc["grid"]
    if len(grid) != 2 or not all(_is_int(g) and g >= 1 for g in grid):
        raise _Refused(f"trace.json: 'grid' must be two positive integers, not {json.dumps(grid)[:40]}")
    if doc["views"] is not None:
        _check_views(doc["views"], grid)
    if not all(_is_int(i) and i >= 0 for i in doc["asi_layers"]):
        raise _Refused("trace.json: 'asi_layers' must be layer indices")
    if not all(isinstance(k, str) for k in doc["scores"]) or len(set(doc["scores"])) != len(doc["scores"]):
        raise _Refused("trace.json: 'scores' must be distinct names")
    for run in ("unsteered", "steered"):
        a = doc[run]
        if a is None:
            continue
        unknown = set(a) - set(_ANSWER_DOC)
        if unknown:
            raise _Refused(f"trace.json: {run} has unknown fields ({len(unknown)})")
        for key, kind in _ANSWER_DOC.items():
            if key in ("seconds", "image_used") and key not in a:
                continue  # written by later versions; the dataclass has defaults
            if key not in a:
                raise _Refused(f"trace.json: {run} has no {key!r}")
            if not _has_type(a[key], kind):
                raise _Refused(f"trace.json: {run}.{key} is not {_KIND_NAMES[kind]}")
        if not all(isinstance(t, str) for t in a["tokens"]) or not all(_is_int(t) for t in a["token_ids"]):
            raise _Refused(f"trace.json: {run} tokens must be strings and token ids integers")
        if a.get("image_used", "original") not in ("original", "enhanced"):
            raise _Refused(f"trace.json: {run}.image_used must be 'original' or 'enhanced'")
    return doc


def _check_views(views: list, grid: list) -> None:
    """A multi-view trace's layout: well-formed views whose flat columns add up to the ``(1, n)`` grid."""
    if not 1 <= len(views) <= MAX_VIEWS:
        raise _Refused(f"trace.json: 'views' must hold 1 to {MAX_VIEWS} views, not {len(views)}")
    names = set()
    total = 0
    for v in views:
        if not isinstance(v, dict) or set(v) != set(_VIEW_DOC):
            raise _Refused("trace.json: each view must be an object with name, h, w and newline")
        ok = isinstance(v["name"], str) and 0 < len(v["name"]) <= 40 and isinstance(v["newline"], bool) \
            and _is_int(v["h"]) and _is_int(v["w"]) and v["h"] >= 1 and v["w"] >= 1
        if not ok:
            raise _Refused("trace.json: a view needs a short name, positive integer h and w, and a newline flag")
        if v["name"] in names:
            raise _Refused(f"trace.json: view {_short(v['name'])} is named twice")
        names.add(v["name"])
        total += v["h"] * (v["w"] + int(v["newline"]))
        if total > 1 << 31:
            break
    if grid[0] != 1 or total != grid[1]:
        raise _Refused(f"trace.json: the views hold {total} image keys but the grid is {grid[0]}×{grid[1]} "
                       "(a multi-view trace's grid is 1×n)")


def _npy_header(f) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, header length) of a .npy stream, reading only its header."""
    from numpy.lib import format as npformat

    version = npformat.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = npformat.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, _, dtype = npformat.read_array_header_2_0(f)
    else:
        raise _Refused(f"arrays.npz: unsupported .npy version {version}")
    return tuple(shape), dtype, f.tell()


def _expected_shapes(doc: dict, layers: int, steps: dict[str, int]) -> dict[str, tuple[int, ...]]:
    h, w = doc["grid"]
    out = {"layer_maps": (layers, h, w), "lam": (layers,), "threshold": (layers,), "fused": (h, w),
           "anchor": (h, w), "bias": (h, w), "debias_mask": (h, w)}
    out.update({f"scores.{k}": (layers,) for k in doc["scores"]})
    for run, t in steps.items():
        out[f"{run}.maps"] = (t, layers, h * w)
        out.update({f"{run}.{n}": (t, layers) for n in _ANSWER_ARRAYS if n != "maps"})
    return out


def _read_arrays(f, doc: dict, lim: TraceLimits) -> dict[str, np.ndarray]:
    """arrays.npz, every member's header read first: dtype numeric, shape exactly what the trace's
    grid, layers (``layer_maps``) and steps (each answer's ``maps``) give, total within the limit."""
    h, w = doc["grid"]
    if h * w > lim.max_grid_cells:
        raise _Refused(f"trace.json: a {h}×{w} grid is larger than {lim.max_grid_cells} image tokens")
    with zipfile.ZipFile(f) as npz:
        infos = npz.infolist()
        if len(infos) > lim.max_arrays:
            raise _Refused(f"arrays.npz: {len(infos)} arrays (a trace has at most {lim.max_arrays})")
        headers = {}
        for info in infos:
            name = info.filename.removesuffix(".npy")
            if info.compress_type not in _ZIP_METHODS or name in headers:
                raise _Refused(f"arrays.npz: {_short(name)} is stored in a way numpy never writes")
            with npz.open(info) as member:
                shape, dtype, offset = _npy_header(member)
            if dtype.hasobject or dtype.kind not in "biuf":
                raise _Refused(f"arrays.npz: {_short(name)} holds {dtype}, not numbers")
            headers[name] = (shape, dtype, info.file_size - offset)
        runs = [r for r in ("unsteered", "steered") if doc[r] is not None]
        for name in ("layer_maps", "fused", "anchor", "lam", "threshold",
                     *(f"scores.{k}" for k in doc["scores"]), *(f"{r}.{n}" for r in runs for n in _ANSWER_ARRAYS)):
            if name not in headers:
                raise _Refused(f"arrays.npz: no {_short(name)}")
        layers = headers["layer_maps"][0][0] if headers["layer_maps"][0] else 0
        if not 1 <= layers <= lim.max_layers:
            raise _Refused(f"arrays.npz: 'layer_maps' has {layers} layers (1 to {lim.max_layers} allowed)")
        steps = {}
        for r in runs:
            shape = headers[f"{r}.maps"][0]
            steps[r] = shape[0] if shape else -1
            if not 0 <= steps[r] <= lim.max_steps:
                raise _Refused(f"arrays.npz: '{r}.maps' has {steps[r]} steps (0 to {lim.max_steps} allowed)")
        expected = _expected_shapes(doc, layers, steps)
        total = 0
        for name, (shape, dtype, stored) in headers.items():
            if name not in expected:
                raise _Refused(f"arrays.npz: {_short(name)} is not part of a trace")
            if shape != expected[name]:
                raise _Refused(f"arrays.npz: {_short(name)} has shape {shape}, but the trace's grid {h}×{w}, "
                               f"{layers} layers and its steps give {expected[name]}")
            nbytes = math.prod(shape) * dtype.itemsize
            if stored < nbytes:
                raise _Refused(f"arrays.npz: {_short(name)} is cut short")
            total += nbytes
        if total > lim.max_array_bytes:
            raise _Refused(f"arrays.npz: {_mib(total)} of arrays, more than the {_mib(lim.max_array_bytes)} "
                           "a trace may hold")
        bad = [i for i in doc["asi_layers"] if i >= layers]
        if bad:
            raise _Refused(f"trace.json: 'asi_layers' names layer {bad[0]}, the trace has {layers}")
        f.seek(0)
        with np.load(f, allow_pickle=False) as data:
            arrays = {name: data[name] for name in headers}
    for name in (*_FINITE, *(f"{r}.maps" for r in runs)):
        if name in arrays and not np.isfinite(arrays[name]).all():
            raise _Refused(f"arrays.npz: {_short(name)} has NaN or infinite values")
    return arrays


def _read_png(z: zipfile.ZipFile, info: zipfile.ZipInfo, lim: TraceLimits) -> Image.Image:
    """A PNG member as RGB, its pixel count read from its header before any pixel is decoded."""
    with z.open(info) as f:
        head = f.read(24)
        if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
            raise _Refused(f"{info.filename}: not a PNG image")
        w, h = struct.unpack(">II", head[16:24])
        if w * h > lim.max_image_pixels or w == 0 or h == 0:
            raise _Refused(f"{info.filename}: {w}×{h} pixels (a trace's images have at most "
                           f"{lim.max_image_pixels / 1e6:.1f} megapixels)")
        f.seek(0)
        img = Image.open(f, formats=["PNG"])
        if img.size != (w, h):
            raise _Refused(f"{info.filename}: not a PNG image")
        return img.convert("RGB")
