"""Batch export of anchor-guided images (paper Sec. 4.1.4) with a JSONL manifest, resumable.

Input: a folder of images (one question for all, or a ``questions.jsonl`` beside them) or a
JSONL list of ``{"image": path, "question": q, "id": optional}``. Output: ``images/<id>.png``
(the original's size), optional ``overlays/<id>.png``, and ``manifest.jsonl`` with one line per
item, ``"status": "ok"`` or ``"error"`` with the reason. A bad file is reported and skipped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from .anchor import BiasCache
from .backbones import Backbone
from .config import AdaptConfig
from .enhance import overlay, side_by_side
from .images import EXTENSIONS, ImageError, load_image
from .pipeline import anchor_image


@dataclass
class ExportItem:
    id: str
    image: str  # path
    question: str


class ExportError(ValueError):
    """The export's input cannot be read at all (as opposed to one bad item)."""


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "item"


def read_items(source: str | Path, question: str | None = None) -> list[ExportItem]:
    """Items from a folder of images or a JSONL file (relative image paths resolve beside it)."""
    source = Path(source)
    if source.is_dir():
        qfile = source / "questions.jsonl"
        if qfile.exists() and question is None:
            return read_items(qfile)
        if not question:
            raise ExportError("a folder of images needs --question (or a questions.jsonl inside it)")
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in EXTENSIONS)
        if not files:
            raise ExportError(f"no images ({', '.join(sorted(EXTENSIONS))}) in {source}")
        return [ExportItem(id=i, image=str(p), question=question) for i, p in zip(unique_ids(files), files)]
    if source.is_file() and source.suffix == ".jsonl":
        items, seen = [], set()
        for n, line in enumerate(source.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                img = Path(d["image"])
                q = d.get("question") or question
                if not q:
                    raise KeyError("question")
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ExportError(f"{source}:{n}: needs JSON with 'image' and 'question' ({exc})") from None
            img = img if img.is_absolute() else source.parent / img
            base = _safe_id(str(d.get("id") or img.stem))
            uid, k = base, 1
            while uid in seen:
                k += 1
                uid = f"{base}-{k}"
            seen.add(uid)
            items.append(ExportItem(id=uid, image=str(img), question=q))
        return items
    raise ExportError(f"{source}: not a folder of images or a .jsonl file")


def unique_ids(files: list[Path]) -> list[str]:
    """One output id per file, never two alike: the stem where it is unique, else the stem and the
    extension (``scene.png`` and ``scene.jpg`` → ``scene-png``, ``scene-jpg``), else a counter.

    Depends only on the names given, so a rerun over the same folder finds its earlier outputs."""
    stems = [_safe_id(p.stem) for p in files]
    clash = {s for s in stems if stems.count(s) > 1}
    out, seen = [], set()
    for p, stem in zip(files, stems):
        base = f"{stem}-{_safe_id(p.suffix.lstrip('.').lower()) or 'img'}" if stem in clash else stem
        uid, k = base, 1
        while uid in seen:
            k += 1
            uid = f"{base}-{k}"
        seen.add(uid)
        out.append(uid)
    return out


def _done(manifest: Path) -> set[str]:
    done = set()
    if manifest.exists():
        for line in manifest.read_text().splitlines():
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                continue
            if d.get("status") == "ok":
                done.add(d["id"])
    return done


def export_anchors(backbone: Backbone, items: Iterable[ExportItem], out: str | Path, cfg: AdaptConfig | None = None,
                   cache: BiasCache | None = None, overlays: bool = False,
                   progress: Callable[[int, int, str], None] | None = None,
                   should_stop: Callable[[], bool] | None = None) -> dict:
    """Write anchor-guided images and the manifest; skip items already exported.

    Returns counts (``ok``, ``error``, ``skipped``, ``total``) and ``failed``: (source, reason) of
    every item that failed. Two items with one id would write one file: the second is refused."""
    from .prompts import clean_question

    cfg = cfg or AdaptConfig()
    items = list(items)
    first_of: dict[str, str] = {}
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    if overlays:
        (out / "overlays").mkdir(exist_ok=True)
    manifest = out / "manifest.jsonl"
    done = _done(manifest)
    counts = {"ok": 0, "error": 0, "skipped": 0, "total": len(items), "failed": []}
    with manifest.open("a") as f:
        for i, item in enumerate(items):
            if should_stop is not None and should_stop():
                counts["cancelled"] = True
                break
            clash = first_of.setdefault(item.id, item.image)
            if clash != item.image:
                record = {"id": item.id, "source": item.image, "question": item.question, "status": "error",
                          "error": f"its output name {item.id}.png is taken by {Path(clash).name}"}
                counts["error"] += 1
                counts["failed"].append((item.image, record["error"]))
                f.write(json.dumps(record) + "\n")
                f.flush()
            elif item.id in done:
                counts["skipped"] += 1
            else:
                record = {"id": item.id, "source": item.image, "question": item.question}
                try:
                    question = clean_question(item.question, getattr(backbone, "processor", None))
                    original = load_image(item.image, max_side=None)  # exported at its own size
                    enhanced, anchor = anchor_image(backbone, original, question, cfg, cache)
                    target = out / "images" / f"{item.id}.png"
                    enhanced.save(target)
                    record.update(status="ok", output=str(target.relative_to(out)), size=list(original.size),
                                  grid=list(anchor.anchor.shape), bias_cache_hit=anchor.cache_hit)
                    if overlays:
                        ov = out / "overlays" / f"{item.id}.png"
                        side_by_side(original, overlay(original, anchor.anchor), enhanced).save(ov)
                        record["overlay"] = str(ov.relative_to(out))
                    counts["ok"] += 1
                except (ImageError, ValueError, OSError) as exc:
                    record.update(status="error", error=str(exc))
                    counts["error"] += 1
                    counts["failed"].append((item.image, str(exc)))
                f.write(json.dumps(record) + "\n")
                f.flush()
            if progress is not None:
                progress(i + 1, len(items), item.id)
    return counts
