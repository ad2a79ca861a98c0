"""Preference records from local copies of public sets, loaded with ``datasets`` (nothing downloads).

- **RLAIF-V** (parquet; a file or a folder of them): ``image`` (``{"bytes", "path"}`` or raw bytes) or
  ``image_path``, ``question``, ``chosen``, ``rejected``, optional ``logps``, ``idx``.
- **RLHF-V** (JSON list or JSON lines): ``text`` holding question / chosen / rejected (a JSON string,
  as the published set stores it, or an object), and ``image`` (a path, or ``{"bytes", "path"}``) or
  ``image_path``.

Rows are decoded one at a time (:func:`decode_row`), so that a broken record (no image, an image that
cannot be read, an empty answer) is skipped and counted by the pair builder while the others go on.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .config import TrainError


class RecordError(ValueError):
    """One record that cannot be used (skipped and reported; the others go on)."""


@dataclass
class PreferenceRecord:
    """One (image, question, chosen, rejected) with where it came from."""

    id: str
    image: Image.Image
    question: str
    chosen: str
    rejected: str
    kind: str = "public"
    meta: dict = field(default_factory=dict)


@dataclass
class RawSet:
    """Undecoded rows of a preference set and how to read their images."""

    name: str
    rows: list[dict]
    root: Path  # relative image paths are read from here

    def __len__(self) -> int:
        return len(self.rows)


def parse_data_spec(spec: str) -> tuple[str, str | None]:
    """``world`` | ``rlaif-v:PATH`` | ``rlhf-v:PATH`` → (kind, path)."""
    if spec == "world":
        return "world", None
    kind, sep, path = spec.partition(":")
    if not sep or kind not in ("rlaif-v", "rlhf-v") or not path:
        raise TrainError(f"--data {spec!r}: expected world, rlaif-v:PATH or rlhf-v:PATH")
    return kind, path


def _files(path: str, exts: tuple[str, ...], what: str) -> list[str]:
    p = Path(path).expanduser()
    if p.is_dir():
        files = sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in exts)
        if not files:
            raise TrainError(f"{what}{path}: the folder holds no {'/'.join(exts)} files")
        return files
    if not p.exists():
        raise TrainError(f"{what}{path}: no such file or folder")
    return [str(p)]


def _load(builder: str, files: list[str], what: str, path: str):
    import datasets

    datasets.disable_progress_bars()
    # datasets logs its own copy of a read error; the user gets one line, below
    level = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL + 10)
    try:
        return datasets.load_dataset(builder, data_files=files, split="train")
    except Exception as exc:  # pyarrow / json errors of many kinds: one line for the user
        detail = " ".join(str(exc).split())[:200]
        raise TrainError(f"{what}{path}: cannot be read as {builder} ({type(exc).__name__}: {detail})") from None
    finally:
        datasets.logging.set_verbosity(level)


def load_rlaif_v(path: str, limit: int | None = None) -> RawSet:
    """The RLAIF-V set (parquet) at ``path``, undecoded."""
    import datasets

    ds = _load("parquet", _files(path, (".parquet",), "--data rlaif-v:"), "--data rlaif-v:", path)
    missing = {"question", "chosen", "rejected"} - set(ds.column_names)
    if missing or not ({"image", "image_path"} & set(ds.column_names)):
        raise TrainError(f"--data rlaif-v:{path}: not an RLAIF-V file (needs question, chosen, rejected and image "
                         f"or image_path; missing {', '.join(sorted(missing)) or 'image'})")
    if "image" in ds.column_names and isinstance(ds.features["image"], datasets.Image):
        ds = ds.cast_column("image", datasets.Image(decode=False))  # decode per record: a bad one is skipped
    rows = ds.select(range(min(limit, len(ds)))) if limit else ds
    p = Path(path).expanduser()
    return RawSet("rlaif-v", [dict(r) for r in rows], p if p.is_dir() else p.parent)


def load_rlhf_v(path: str, limit: int | None = None) -> RawSet:
    """The RLHF-V set (JSON or JSON lines with a ``text`` column) at ``path``, undecoded."""
    files = _files(path, (".json", ".jsonl"), "--data rlhf-v:")
    rows = []
    for f in files:  # a top-level JSON list is read directly; datasets' json builder takes JSON lines
        try:
            text = Path(f).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TrainError(f"--data rlhf-v:{f}: cannot be read ({type(exc).__name__})") from None
        if text.lstrip().startswith("["):
            try:
                doc = json.loads(text)
            except json.JSONDecodeError as exc:
                raise TrainError(f"--data rlhf-v:{f}: not valid JSON ({exc.msg}, line {exc.lineno} column "
                                 f"{exc.colno})") from None
            if not all(isinstance(r, dict) for r in doc):
                raise TrainError(f"--data rlhf-v:{f}: the JSON list must hold objects")
            rows += doc
        else:
            rows += [dict(r) for r in _load("json", [f], "--data rlhf-v:", f)]
    if rows and "text" not in rows[0]:
        raise TrainError(f"--data rlhf-v:{path}: not an RLHF-V file (no 'text' column)")
    p = Path(path).expanduser()
    return RawSet("rlhf-v", rows[:limit] if limit else rows, p if p.is_dir() else p.parent)


def load_public(spec: str, limit: int | None = None, images: str | None = None) -> RawSet:
    """``rlaif-v:PATH`` or ``rlhf-v:PATH`` (``images``: where relative image paths are read from)."""
    kind, path = parse_data_spec(spec)
    raw = load_rlaif_v(path, limit) if kind == "rlaif-v" else load_rlhf_v(path, limit)
    if images:
        raw.root = Path(images).expanduser()
    if not raw.rows:
        raise TrainError(f"--data {spec}: the set is empty")
    return raw


def _image(value, path_value, root: Path) -> Image.Image:
    data = None
    if isinstance(value, dict):
        data = value.get("bytes")
        path_value = path_value or value.get("path")
    elif isinstance(value, (bytes, bytearray)):
        data = value
    elif isinstance(value, str) and value:
        if value.startswith("data:image") or len(value) > 1024:  # inline base64
            try:
                data = base64.b64decode(value.split(",", 1)[-1])
            except ValueError:
                raise RecordError("image: not a path and not base64") from None
        else:
            path_value = path_value or value
    try:
        if data:
            im = Image.open(io.BytesIO(data))
        elif path_value:
            f = Path(path_value)
            im = Image.open(f if f.is_absolute() else root / f)
        else:
            raise RecordError("no image")
        im.load()
    except FileNotFoundError:
        raise RecordError(f"image {path_value}: no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise RecordError(f"image cannot be read ({type(exc).__name__})") from None
    return im.convert("RGB")


def _text(v, name: str) -> str:
    if not isinstance(v, str) or not v.strip():
        raise RecordError(f"empty {name}")
    return v.strip()


def decode_row(raw: RawSet, i: int) -> PreferenceRecord:
    """Row ``i`` of ``raw`` as a :class:`PreferenceRecord`; :class:`RecordError` if it is broken."""
    row = raw.rows[i]
    rid = f"{raw.name}-{row.get('idx', i)}" if row.get("idx") is not None else f"{raw.name}-{i}"
    rid = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(rid))
    if raw.name == "rlhf-v":
        t = row.get("text")
        if isinstance(t, str):
            try:
                t = json.loads(t)
            except json.JSONDecodeError:
                raise RecordError("'text' is not JSON") from None
        if not isinstance(t, dict):
            raise RecordError("'text' holds no question / chosen / rejected")
        q, c, r = t.get("question"), t.get("chosen"), t.get("rejected")
    else:
        q, c, r = row.get("question"), row.get("chosen"), row.get("rejected")
    question, chosen, rejected = _text(q, "question"), _text(c, "chosen answer"), _text(r, "rejected answer")
    image = _image(row.get("image"), row.get("image_path"), raw.root)
    meta = {k: row[k] for k in ("origin_dataset", "origin_split", "idx", "logps") if row.get(k) is not None}
    return PreferenceRecord(rid, image, question, chosen, rejected, kind=raw.name, meta=meta)
