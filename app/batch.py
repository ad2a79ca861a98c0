"""The Export tab's batch: uploads → the library's export (:func:`adapt.export.export_dataset`) → one zip
with the parquet dataset, ``images/``, ``manifest.jsonl`` and the dataset card.

Uploads are read in memory and handed to the library as rows named by the user's own file names, so
the report, the manifest and the dataset name those (``a.png`` + ``a.jpg`` → ``a-png.png`` /
``a-jpg.png``, the CLI's rule), never a path on the server."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from adapt.threads import use_threads

from .analysis import bias_cache
from .knobs import Knobs
from .names import scrub
from .scratch import scratch_dir
from .uploads import collect_items, parse_question_lines

IN_ZIP = ("data", "images", "overlays", "manifest.jsonl", "README.md")  # not export.json: it names the model path
NO_QUESTION = "no question: give one question for all images or one for this file"


def export_batch(backbone, paths: list[str], question: str, per_image: str, knobs: Knobs, progress=None,
                 overlays: bool = True, should_stop=None):
    """Anchor-guided images of the uploads as one zip; bad files are reported and skipped, the rest
    still exported. ``should_stop()`` is read between batches (the Stop button).

    Returns (zip path, report rows [file, question, status, detail], preview images)."""
    from adapt.export import ExportOptions, export_dataset, rows_source

    items, questions = collect_items(paths)
    questions.update(parse_question_lines(per_image))
    if not items:
        raise ValueError("no images to export: upload image files or a zip of images")
    default_q = (question or "").strip()
    rows = []
    for item in items:
        q = questions.get(item.name, default_q)
        error = item.error or ("" if q else NO_QUESTION)
        rows.append({"file_name": item.name, "image": None if error else item.data, "question": q,
                     "error": error})
    source = rows_source(rows, None, description=f"{len(rows)} uploaded file(s)")
    cfg = knobs.config()
    work = scratch_dir("export")
    out = work / "anchor-export"
    total = len(rows)

    def report_progress(done, _total, name):
        if progress:
            progress(done / max(1, total), f"{done}/{total}: {name}")

    use_threads(backbone)
    export_dataset(backbone, source, out, cfg, cache=bias_cache(), opts=ExportOptions(overlays=overlays, batch_size=8),
                   progress=report_progress, should_stop=should_stop)
    report, previews = [], []
    manifest = out / "manifest.jsonl"
    for line in manifest.read_text().splitlines() if manifest.exists() else []:
        r = json.loads(line)
        if r["status"] == "ok":
            report.append([r["source"], r["question"], "ok", r["output"]])
            if len(previews) < 12:
                previews.append((str(out / r["output"]), r["source"]))
        else:  # the scratch folder is the server's business, should a message ever name it
            report.append([r["source"], r["question"], "skipped", scrub(str(r.get("error") or "error"), work)])
    zpath = work / "anchor-export.zip"
    with zipfile.ZipFile(zpath, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name in IN_ZIP:
            p = out / name
            for f in sorted(p.rglob("*")) if p.is_dir() else [p] if p.exists() else []:
                if f.is_file() and not f.name.startswith("."):
                    z.write(f, Path("anchor-export") / f.relative_to(out))
    if progress:
        progress(1.0, "done")
    return zpath, report, previews
