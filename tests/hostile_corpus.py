"""Crafted trace files for the hostile-trace tests: a real trace saved once, then mutated (markup
in its strings, array and image bombs, NaN maps, shapes that disagree with the grid, missing keys,
wrong types, broken zips). Test-only: nothing here is part of the app."""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

# every way a string could become markup: raw HTML, an attribute breakout, Markdown links and
# images to javascript:, a code-span breakout; each sets window.__pwned if it ever runs
PAYLOAD = ("<img src=x onerror=\"window.__pwned=1\"><script>window.__pwned=2</script>"
           "\"'><svg onload=window.__pwned=3>[click](javascript:window.__pwned=4)"
           "![i](javascript:window.__pwned=5)`</code><b>bold</b>`")
MARK = "PWN"  # marks which field a payload came from: PAYLOAD + f" {MARK}{i}"


def base_trace(steps: int = 4):
    from app_helpers import synthetic_trace

    return synthetic_trace(steps=steps)


def members(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


def write_zip(path, items: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in items.items():
            z.writestr(name, data)
    return Path(path)


def with_doc(src, dst, change) -> Path:
    """``src`` with ``change(doc)`` applied to its trace.json (``change`` edits in place)."""
    items = members(src)
    doc = json.loads(items["trace.json"])
    change(doc)
    items["trace.json"] = json.dumps(doc).encode()
    return write_zip(dst, items)


def with_arrays(src, dst, change) -> Path:
    """``src`` with ``change(arrays)`` applied to its arrays.npz (a dict name → array, edited in place)."""
    items = members(src)
    arrays = dict(np.load(io.BytesIO(items["arrays.npz"])))
    change(arrays)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    items["arrays.npz"] = buf.getvalue()
    return write_zip(dst, items)


# ------------------------------------------------------------------------------ string fields
def string_paths(doc, prefix=()) -> list[tuple]:
    """Every path (keys and indices) to a string value in ``doc``; dict keys are strings too:
    a key is addressed as ``(..., ("key", k))``."""
    out = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.append((*prefix, ("key", k)))
            out += string_paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += string_paths(v, (*prefix, i))
    elif isinstance(doc, str):
        out.append(prefix)
    return out


def set_path(doc, path, value) -> None:
    *head, last = path
    node = doc
    for p in head:
        node = node[p]
    if isinstance(last, tuple) and last[0] == "key":
        node[value] = node.pop(last[1])
    else:
        node[last] = value


def enrich(doc) -> None:
    """Give the trace every string field the app shows: a compared method with its description,
    recorded hallucinations and colour / position errors, a timing name."""
    meta = doc.setdefault("meta", {})
    meta.update({"compare": "pai", "compare_about": "PAI: attention to the image scaled up",
                 "compare_info": {"fired": 3, "monitored": 8}, "hallucinated": {"unsteered": ["moon"]},
                 "scene_objects": [{"category": "star", "colour": "red", "position": "top"}],
                 "model": "embedded", "unknown_words": ["cat", "dog"]})
    doc.setdefault("timings", {})["compare"] = 0.25


def payload_traces(src, out_dir) -> list[tuple[str, Path]]:
    """One trace per string field (and dict key) of ``src``'s enriched trace.json, the payload in
    that field: [(field path as text, file)]."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = json.loads(members(src)["trace.json"])
    enrich(doc)
    out = []
    for i, path in enumerate(string_paths(doc)):
        if path == ("format",):
            continue  # another format is refused before anything is shown (checked on its own)
        d = json.loads(json.dumps(doc))
        set_path(d, path, f"{PAYLOAD} {MARK}{i}")
        name = "/".join(str(p[1]) + "(key)" if isinstance(p, tuple) else str(p) for p in path)
        out.append((name, with_doc(src, out_dir / f"field-{i:03d}.zip", lambda x, d=d: (x.clear(), x.update(d)))))
    return out


def all_fields_trace(src, dst) -> Path:
    """The payload in every string value at once, but for the few a trace is refused over (its
    format, the answers' image_used, the score names that name arrays); keys kept."""
    def change(doc):
        enrich(doc)
        for i, path in enumerate(string_paths(doc)):
            checked = path == ("format",) or path[-1] == "image_used" or path[0] == "scores"
            if not checked and not isinstance(path[-1], tuple):
                set_path(doc, path, f"{PAYLOAD} {MARK}{i}")
    return with_doc(src, dst, change)


# ------------------------------------------------------------------------------------- bombs
def _npy_header(shape, dtype="<f4") -> bytes:
    """A version 1.0 .npy header for ``shape`` (what numpy.lib.format writes)."""
    d = "{'descr': '%s', 'fortran_order': False, 'shape': %s, }" % (dtype, repr(tuple(shape)))
    pad = 64 - (10 + len(d) + 1) % 64
    text = (d + " " * pad + "\n").encode("latin1")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text


def array_bomb(src, dst, name: str = "unsteered.maps", gib: float = 1.0) -> Path:
    """``src`` whose array ``name`` is replaced by ``gib`` GiB of float32 zeros (a few MB compressed):
    the header declares the whole shape, the data is really there."""
    items = members(src)
    n = int(gib * 2**30) // 4
    inner = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(items["arrays.npz"])) as old, \
            zipfile.ZipFile(inner, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as new:
        for info in old.infolist():
            if info.filename != name + ".npy":
                new.writestr(info.filename, old.read(info))
        with new.open(name + ".npy", "w", force_zip64=True) as f:
            f.write(_npy_header((n // 64, 1, 64)))
            chunk = bytes(16 << 20)
            left = n * 4
            while left:
                f.write(chunk[:min(left, len(chunk))])
                left -= min(left, len(chunk))
    items["arrays.npz"] = inner.getvalue()
    return write_zip(dst, items)


def declared_array(src, dst, name: str, shape, dtype="<f4") -> Path:
    """``src`` whose array ``name`` has a header declaring ``shape`` but only a few bytes of data."""
    items = members(src)
    inner = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(items["arrays.npz"])) as old, zipfile.ZipFile(inner, "w") as new:
        for info in old.infolist():
            if info.filename != name + ".npy":
                new.writestr(info.filename, old.read(info))
        new.writestr(name + ".npy", _npy_header(shape, dtype) + bytes(64))
    items["arrays.npz"] = inner.getvalue()
    return write_zip(dst, items)


def png_bomb(width: int, height: int, mode: str = "L") -> bytes:
    """A valid PNG of ``width``×``height`` black pixels (8-bit grey or 1-bit), a few hundred KB."""
    bits, colour = (1, 0) if mode == "1" else (8, 0)
    row = bytes(1 + (width * bits + 7) // 8)  # filter byte + the row's pixels

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    c = zlib.compressobj(9)
    rows_per = max(1, (8 << 20) // len(row))
    block = row * rows_per
    parts, left = [], height
    while left:
        k = min(left, rows_per)
        parts.append(c.compress(block[: k * len(row)]))
        left -= k
    parts.append(c.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, bits, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def image_bomb(src, dst, width: int, height: int, member: str = "image.png", mode: str = "L") -> Path:
    items = members(src)
    items[member] = png_bomb(width, height, mode)
    return write_zip(dst, items)


def json_bomb(src, dst, mib: int = 300) -> Path:
    """trace.json padded with ``mib`` MiB of spaces (valid JSON, a few hundred KB compressed)."""
    items = members(src)
    items["trace.json"] = items["trace.json"] + b" " * (mib << 20)
    return write_zip(dst, items)


def many_members(src, dst, n: int = 2000) -> Path:
    items = members(src)
    items.update({f"junk/{i}.txt": b"" for i in range(n)})
    return write_zip(dst, items)


def deep_json(src, dst, depth: int = 100_000) -> Path:
    items = members(src)
    doc = json.loads(items["trace.json"])
    text = json.dumps(doc)
    items["trace.json"] = (text[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}").encode()
    return write_zip(dst, items)


def bombs(src, out_dir, gib: float = 0.5) -> dict[str, Path]:
    """Files whose unpacking would take far more memory or time than the trace they pretend to be
    (each a few hundred KB; the array bomb holds ``gib`` GiB of maps)."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    return {
        f"array bomb ({gib:g} GiB of maps)": array_bomb(src, d / "array-bomb.zip", gib=gib),
        "declared 64 GiB array": declared_array(src, d / "declared.zip", "layer_maps", (1 << 16, 1 << 9, 1 << 9)),
        "image bomb 20000x20000": image_bomb(src, d / "image-bomb.zip", 20_000, 20_000, mode="1"),
        "image bomb 12000x12000": image_bomb(src, d / "image-12k.zip", 12_000, 12_000),
        "enhanced image bomb": image_bomb(src, d / "enhanced-bomb.zip", 12_000, 12_000, member="enhanced.png"),
        "json bomb (300 MiB)": json_bomb(src, d / "json-bomb.zip"),
        "2000 members": many_members(src, d / "members.zip"),
        "deep json": deep_json(src, d / "deep.zip"),
    }


def broken(src, out_dir) -> dict[str, Path]:
    """Files that are not a well-formed trace: each must be refused with one readable line."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    data = Path(src).read_bytes()
    (d / "not-a-zip.zip").write_bytes(b"this is not a zip file at all" * 10)
    (d / "truncated.zip").write_bytes(data[: len(data) // 2])

    def drop_key(key):
        return lambda doc: doc.pop(key)

    def set_key(key, value):
        return lambda doc: doc.__setitem__(key, value)

    def answer_key(key, value):
        return lambda doc: doc["steered"].__setitem__(key, value)

    out = {
        "not a zip": d / "not-a-zip.zip",
        "truncated zip": d / "truncated.zip",
        "no trace.json": write_zip(d / "no-json.zip", {k: v for k, v in members(src).items() if k != "trace.json"}),
        "no image": write_zip(d / "no-image.zip", {k: v for k, v in members(src).items() if k != "image.png"}),
        "image not a png": write_zip(d / "bad-png.zip", {**members(src), "image.png": b"\x89PNG\r\n\x1a\nnope"}),
        "json not json": write_zip(d / "bad-json.zip", {**members(src), "trace.json": b"{nope"}),
        "json a list": write_zip(d / "json-list.zip", {**members(src), "trace.json": b"[1, 2]"}),
        "other format": with_doc(src, d / "format.zip", set_key("format", PAYLOAD)),
        "no question": with_doc(src, d / "no-question.zip", drop_key("question")),
        "no grid": with_doc(src, d / "no-grid.zip", drop_key("grid")),
        "no scores": with_doc(src, d / "no-scores.zip", drop_key("scores")),
        "no unsteered": with_doc(src, d / "no-unsteered.zip", drop_key("unsteered")),
        "question a number": with_doc(src, d / "question-num.zip", set_key("question", 7)),
        "grid a string": with_doc(src, d / "grid-str.zip", set_key("grid", "8x8")),
        "grid negative": with_doc(src, d / "grid-neg.zip", set_key("grid", [-8, -8])),
        "grid huge": with_doc(src, d / "grid-huge.zip", set_key("grid", [100_000, 100_000])),
        "meta a list": with_doc(src, d / "meta-list.zip", set_key("meta", [1, 2])),
        "config a string": with_doc(src, d / "config-str.zip", set_key("config", PAYLOAD)),
        "asi_layers strings": with_doc(src, d / "layers-str.zip", set_key("asi_layers", ["a"])),
        "asi_layers out of range": with_doc(src, d / "layers-range.zip", set_key("asi_layers", [99])),
        "tokens not a list": with_doc(src, d / "tokens.zip", answer_key("tokens", PAYLOAD)),
        "token ids strings": with_doc(src, d / "token-ids.zip", answer_key("token_ids", ["x"])),
        "unknown answer field": with_doc(src, d / "answer-field.zip", answer_key("evil", 1)),
        "image_used unknown": with_doc(src, d / "image-used.zip", answer_key("image_used", PAYLOAD)),
        "scores names unknown": with_doc(src, d / "scores-names.zip", set_key("scores", ["spec", PAYLOAD])),
        "grid disagrees (4x16)": with_doc(src, d / "grid-4x16.zip", set_key("grid", [4, 16])),
        "no anchor array": with_arrays(src, d / "no-anchor.zip", lambda a: a.pop("anchor")),
        "no answer maps": with_arrays(src, d / "no-maps.zip", lambda a: a.pop("steered.maps")),
        "NaN layer maps": with_arrays(src, d / "nan-layers.zip",
                                      lambda a: a["layer_maps"].__setitem__((0, 0, 0), np.nan)),
        "inf anchor": with_arrays(src, d / "inf-anchor.zip", lambda a: a["anchor"].__setitem__((1, 1), np.inf)),
        "NaN step maps": with_arrays(src, d / "nan-steps.zip",
                                     lambda a: a["unsteered.maps"].__setitem__((0, 0, 0), np.nan)),
        "anchor 4x16": with_arrays(src, d / "anchor-shape.zip",
                                   lambda a: a.__setitem__("anchor", a["anchor"].reshape(4, 16))),
        "maps of another grid": with_arrays(src, d / "maps-grid.zip",
                                            lambda a: a.__setitem__("steered.maps", a["steered.maps"][..., :32])),
        "maps of other steps": with_arrays(src, d / "maps-steps.zip",
                                           lambda a: a.__setitem__("steered.maps", a["steered.maps"][:2])),
        "lam of other layers": with_arrays(src, d / "lam.zip", lambda a: a.__setitem__("lam", a["lam"][:2])),
        "maps as strings": with_arrays(src, d / "maps-str.zip",
                                       lambda a: a.__setitem__("anchor", np.full((8, 8), "x"))),
        "object array": with_arrays(src, d / "maps-obj.zip",
                                    lambda a: a.__setitem__("anchor", np.full((8, 8), None, dtype=object))),
    }
    return out


# ------------------------------------------------------------------------------------ memory
PEAK_SCRIPT = r"""
import resource, sys, time
sys.path[:0] = sys.argv[2:]
from adapt.trace import Trace

def rss_kb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS"))

try:  # reset the peak to the current RSS (Linux >= 4.0), else the imports' peak counts too
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
base = rss_kb()
t = time.perf_counter()
try:
    Trace.load(sys.argv[1])
    result = "loaded"
except ValueError as exc:
    result = "refused: " + str(exc).splitlines()[0][:200]
except Exception as exc:
    result = f"crashed: {type(exc).__name__}: {exc}"[:200]
with open("/proc/self/status") as f:
    peak = next(int(l.split()[1]) for l in f if l.startswith("VmHWM"))
print(f"{(peak - base) / 1024:.1f}\t{time.perf_counter() - t:.2f}\t{result}")
"""


def peak_load(path, timeout: float = 120) -> tuple[float, float, str]:
    """(peak RSS added in MB, seconds, outcome) of ``Trace.load(path)`` in a fresh interpreter."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(path), str(root), str(root / "tests")],
                         capture_output=True, text=True, timeout=timeout, cwd=root)
    line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else f"nan\tnan\tno output: {out.stderr[-500:]}"
    mb, sec, result = line.split("\t", 2)
    return float(mb), float(sec), result
