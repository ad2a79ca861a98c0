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
    from adapt.images import MAX_BYTES

    with zipfile.ZipFile(path) as z:
        members = [m for m in z.infolist() if not m.is_dir() and not Path(m.filename).name.startswith(".")
                   and "__MACOSX" not in m.filename]
        if sum(m.file_size for m in members) > MAX_ZIP_TOTAL:
            raise ValueError(f"{path.name}: more than {MAX_ZIP_TOTAL // 2**20} MB uncompressed")
        for m in members:
            name = Path(m.filename).name
            suffix = Path(name).suffix.lower()
            if suffix == ".jsonl":
                questions.update(_questions_jsonl(z.read(m).decode("utf-8", "replace")))
            elif suffix in IMAGE_EXT:
                if m.file_size > MAX_BYTES:
                    items.append(Item(name, None, f"{name}: larger than {MAX_BYTES // 2**20} MB"))
                else:
                    items.append(Item(name, z.read(m)))
            else:
                items.append(Item(name, None, f"{name}: not an image (skipped)"))


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
