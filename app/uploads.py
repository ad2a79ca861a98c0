"""Uploads of the Export tab read in memory: image files, zips of images, per-image questions."""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

MAX_EXPORT_FILES = 500
MAX_ZIP_TOTAL = 1024 * 1024 * 1024
IMAGE_EXT = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclass
class Item:
    name: str
    data: bytes | None
    error: str = ""


def collect_items(paths: list[str]) -> tuple[list[Item], dict[str, str]]:
    """Images from uploaded files and zips (read in memory, names flattened), and any per-image
    questions found in ``.jsonl`` files (``{"image": name, "question": q}``)."""
    items: list[Item] = []
    questions: dict[str, str] = {}
    for p in paths or []:
        path = Path(p)
        name = path.name
        suffix = path.suffix.lower()
        try:
            if suffix == ".zip":
                _from_zip(path, items, questions)
            elif suffix == ".jsonl":
                questions.update(_questions_jsonl(path.read_text(encoding="utf-8", errors="replace")))
            else:
                items.append(Item(name, path.read_bytes()))
        except (OSError, zipfile.BadZipFile) as exc:
            items.append(Item(name, None, f"could not read {name}: {type(exc).__name__}"))
        if len(items) > MAX_EXPORT_FILES:
            raise ValueError(f"too many images: at most {MAX_EXPORT_FILES} per export")
    return items, questions


def _from_zip(path: Path, items: list[Item], questions: dict) -> None:
    """Members read one by one within bounds: one over the size limit is skipped alone (reported), and
    once the accepted members reach :data:`MAX_ZIP_TOTAL` the rest are skipped too. Sizes are checked
    on what is actually decompressed, not only on what the archive declares."""
    from adapt.images import MAX_BYTES

    total = 0
    with zipfile.ZipFile(path) as z:
        for m in z.infolist():
            if len(items) > MAX_EXPORT_FILES:
                raise ValueError(f"too many images: at most {MAX_EXPORT_FILES} per export")
            name = Path(m.filename).name
            if m.is_dir() or not name or name.startswith(".") or "__MACOSX" in m.filename:
                continue
            suffix = Path(name).suffix.lower()
            if suffix not in IMAGE_EXT and suffix != ".jsonl":
                items.append(Item(name, None, f"{name}: not an image (skipped)"))
                continue
            if m.file_size > MAX_BYTES or total + m.file_size > MAX_ZIP_TOTAL:
                items.append(Item(name, None, _too_large(name, m.file_size > MAX_BYTES, MAX_BYTES)))
                continue
            try:
                with z.open(m) as f:
                    data = f.read(MAX_BYTES + 1)
            except (zipfile.BadZipFile, OSError, NotImplementedError, RuntimeError) as exc:
                items.append(Item(name, None, f"{name}: could not be unpacked ({type(exc).__name__})"))
                continue
            if len(data) > MAX_BYTES:  # the header understated it
                items.append(Item(name, None, _too_large(name, True, MAX_BYTES)))
                continue
            total += len(data)
            if suffix == ".jsonl":
                questions.update(_questions_jsonl(data.decode("utf-8", "replace")))
            else:
                items.append(Item(name, data))


def _too_large(name: str, alone: bool, limit: int) -> str:
    if alone:
        return f"{name}: larger than {limit // 2**20} MB (skipped)"
    return f"{name}: the zip's images pass {MAX_ZIP_TOTAL // 2**20} MB in all (skipped)"


def _questions_jsonl(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and row.get("image") and row.get("question"):
            out[Path(str(row["image"])).name] = str(row["question"])
    return out


def parse_question_lines(text: str) -> dict[str, str]:
    """``name: question`` / ``name | question`` / ``name<TAB>question`` lines → {name: question}."""
    out = {}
    for line in (text or "").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^(.+?)\s*(?:\t|\|| :|:\s)\s*(.+)$", line)
        if m:
            out[Path(m.group(1).strip()).name] = m.group(2).strip()
    return out
