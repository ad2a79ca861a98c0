"""The Export tab's batch: uploads → anchor-guided images + ``manifest.jsonl`` as one zip."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from adapt.threads import use_threads

from .analysis import bias_cache
from .knobs import Knobs
from .names import scrub
from .scratch import safe_stem, scratch_dir
from .uploads import collect_items, parse_question_lines

def export_batch(backbone, paths: list[str], question: str, per_image: str, knobs: Knobs, progress=None,
                 overlays: bool = True):
    """Anchor-guided images + ``manifest.jsonl`` (the CLI's format, :func:`adapt.export.export_anchors`)
    as one zip; bad files are reported and skipped, the rest still exported.

    Returns (zip path, report rows [file, question, status, detail], preview images)."""
    from adapt.export import ExportItem, export_anchors

    items, questions = collect_items(paths)
    questions.update(parse_question_lines(per_image))
    if not items:
        raise ValueError("no images to export: upload image files or a zip of images")
    default_q = (question or "").strip()
    cfg = knobs.config()
    work = scratch_dir("export")
    src, out = work / "input", work / "anchor-export"
    src.mkdir()
    out.mkdir()
    todo, errors, used = [], [], set()
    for item in items:
        q = questions.get(item.name, default_q)
        item_id = safe_stem(item.name)
        while item_id in used:
            item_id += "_"
        used.add(item_id)
        if not item.error and not q:
            item.error = "no question: give one question for all images or one for this file"
        if item.error:
            errors.append({"id": item_id, "source": item.name, "question": q, "status": "error",
                           "error": item.error})
            continue
        path = src / (item_id + (Path(item.name).suffix.lower() or ".img"))
        path.write_bytes(item.data)
        todo.append(ExportItem(id=item_id, image=str(path), question=q))
    names = {it.id: Path(it.image).name for it in todo}
    names.update({e["id"]: e["source"] for e in errors})
    originals = {safe_stem(i.name): i.name for i in items}

    def report_progress(done, total, item_id):
        if progress:
            progress(done / max(1, total), f"{done}/{total}: {originals.get(item_id, item_id)}")

    if todo:
        use_threads(backbone)
        export_anchors(backbone, todo, out, cfg, cache=bias_cache(), overlays=overlays, progress=report_progress)
    manifest = out / "manifest.jsonl"
    with manifest.open("a") as f:
        for e in errors:
            f.write(json.dumps(e) + "\n")
    report, previews = [], []
    for line in manifest.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        name = originals.get(r.get("id"), r.get("source", ""))
        if r.get("status") == "ok":
            report.append([name, r.get("question", ""), "ok", r.get("output", "")])
            if len(previews) < 12 and r.get("output"):
                previews.append((str(out / r["output"]), name))
        else:
            err = scrub(str(r.get("error", "error")), src, work)  # the scratch folder is the server's business
            report.append([name, r.get("question", ""), "skipped", err])
    zpath = work / "anchor-export.zip"
    with zipfile.ZipFile(zpath, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for f in sorted(out.rglob("*")):
            if f.is_file():
                z.write(f, Path("anchor-export") / f.relative_to(out))
    if progress:
        progress(1.0, "done")
    return zpath, report, previews
