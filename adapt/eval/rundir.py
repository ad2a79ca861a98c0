"""One rule for every folder a run writes into: the same configuration resumes, another is refused.

Every runner that keeps answers on disk and picks up where it stopped (the world benchmark, the task
runner, the sweep's settings, ``diagnose``) calls :func:`open_run` before it reads a single old answer,
and :func:`record` to write ``run.json``. What counts as *configuration* is what can change an
answer: the methods and their settings, the backbone (its name, weights digest and dtype), the task's
data, split, seeds, number of items and answer lengths. What may change on a resume is how the work is
spread: processes (shards), threads, device placement and batch size (answers are padded and masked per
row, so a batch of 1 and of 4 give the same text: checked on the world, 4 scenes × 2 methods).

A folder holding another configuration is refused with one line naming the keys that differ (old →
new); ``overwrite=True`` (``--overwrite``) deletes that run's own files and starts again. Files of
the user's that the runner does not write are never touched.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from .formats import DataError, write_json

RUN_FILE = "run.json"
# what the runners write into a run folder (and --overwrite removes): answers, tables, progress, shards
OUTPUTS = ("run.json", "items-*.jsonl", ".items-*.jsonl.tmp", "summary.json", "summary.md", "summary.csv",
           "summary.png", "table.md", "efficiency.md", "progress.json", ".progress.json", ".run.json.tmp",
           ".progress.json.tmp", ".shard-*.done", "sample_ids.txt", "mentions.jsonl", "diagnosis.json")
ANSWERS = ("items-*.jsonl", "mentions.jsonl")  # files that a resume would reuse
_ABSENT = object()
MAX_LISTED = 4


class RunDirError(DataError):
    """A run folder that holds another run (the CLI prints one line and exits 2)."""


def config_hash(config: dict) -> str:
    """SHA-256 of the configuration's canonical JSON (the first 16 hex digits)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_revision(backbone) -> dict:
    """Which weights answered: the hub commit transformers recorded, and a digest of the local files
    (names, sizes and the first MiB of each), so a retrained local model is told apart."""
    cfg = getattr(getattr(backbone, "model", None), "config", None)
    out = {"name": getattr(backbone, "name", None), "hub_commit": getattr(cfg, "_commit_hash", None),
           "name_or_path": getattr(cfg, "_name_or_path", None)}
    path = Path(str(out["name_or_path"] or ""))
    if out["name_or_path"] and path.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".json", ".safetensors", ".bin")):
            h.update(f.name.encode())
            h.update(str(f.stat().st_size).encode())
            with f.open("rb") as fh:
                h.update(fh.read(2**20))
        out["files_sha256"] = h.hexdigest()
    return out


def backbone_identity(backbone) -> dict:
    """The part of a backbone that decides its answers: name, weights (hub commit or file digest) and
    dtype. Where the folder sits is left out, so a moved checkout still resumes."""
    rev = model_revision(backbone)
    dtype = getattr(getattr(backbone, "model", None), "dtype", None)
    name = rev["name"]
    if name and rev.get("files_sha256") and Path(str(name)).is_dir():  # a local folder: its digest says which
        name = Path(str(name)).name
    return {"name": name, "hub_commit": rev["hub_commit"], "files_sha256": rev.get("files_sha256"),
            "dtype": None if dtype is None else str(dtype).removeprefix("torch.")}


def _show(v) -> str:
    if v is _ABSENT:
        return "absent"
    if isinstance(v, dict) and v:
        return "{…}"
    text = json.dumps(v, default=str)
    return text if len(text) <= 40 else text[:37] + "…"


def _diff(a, b, key: str):
    if isinstance(a, dict) and isinstance(b, dict) and a and b:
        for k in [*b, *(k for k in a if k not in b)]:
            yield from _diff(a.get(k, _ABSENT), b.get(k, _ABSENT), f"{key}.{k}" if key else str(k))
    elif a != b:
        yield f"{key}: {_show(a)} → {_show(b)}"


def differences(old: dict, new: dict) -> list[str]:
    """``key: old → new`` for every dotted key whose value differs (a section only one side has is
    named once), in the new configuration's order."""
    return list(_diff(_plain(old), _plain(new), ""))


def _plain(config: dict) -> dict:
    # what run.json gives back: tuples become lists, keys strings
    return json.loads(json.dumps(config, default=str))


def recorded_config(out: Path):
    """The configuration ``out/run.json`` records; None when there is no run.json. Raises
    :class:`RunDirError` for a run.json that cannot be read or records no configuration."""
    path = Path(out) / RUN_FILE
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise RunDirError(f"{path} cannot be read, so its answers cannot be trusted to match; "
                          f"add --overwrite to redo the run, or choose another --out") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
        raise RunDirError(f"{path} does not record its configuration (an older version wrote it); "
                          f"add --overwrite to redo the run, or choose another --out")
    return doc["config"]


def clear(out: Path, outputs=OUTPUTS) -> None:
    """Delete the run files ``outputs`` (glob patterns) from ``out``; the user's other files stay."""
    for pattern in outputs:
        for p in Path(out).glob(pattern):
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()


def open_run(out, config: dict, overwrite: bool = False, redo_changed: bool = False, outputs=OUTPUTS) -> bool:
    """Make ``out`` ready for a run of ``config``; True when it holds the same run to resume.

    Same configuration: resume (nothing is deleted). Another one: :class:`RunDirError` naming the keys
    that differ, or, with ``overwrite`` (always) or ``redo_changed`` (only then), the old run's files
    are deleted and the run starts over. Answer files without a ``run.json`` are another run too."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} is a file; give a folder")
    same = False
    if not overwrite:
        try:
            same = _holds_same_run(out, config)
        except RunDirError:
            if not redo_changed:
                raise
            overwrite = True
    if overwrite:
        clear(out, outputs)
    out.mkdir(parents=True, exist_ok=True)
    return same


def _holds_same_run(out: Path, config: dict) -> bool:
    """True: ``out`` holds a run of ``config``; False: no run to reuse; raises for another run."""
    old = recorded_config(out)
    if old is None:
        # a shard's file may precede run.json: process 0 writes it, another process can finish first
        stray = [p.name for pattern in ANSWERS for p in out.glob(pattern) if ".shard-" not in p.name]
        if stray:
            raise RunDirError(f"{out} holds answers ({stray[0]}) but no {RUN_FILE} saying how they were made; "
                              f"add --overwrite to redo the run, or choose another --out")
        return False
    diffs = differences(old, config)
    if diffs:
        listed = "; ".join(diffs[:MAX_LISTED]) + (f"; and {len(diffs) - MAX_LISTED} more"
                                                  if len(diffs) > MAX_LISTED else "")
        raise RunDirError(f"{out} holds a run with another configuration ({listed}); rerun with its options to "
                          f"resume it, add --overwrite to redo it, or choose another --out")
    return True


def end_torn_line(path: Path) -> None:
    """End an answer file whose last line an interrupted write left without its newline, so the next
    record appended does not join it (the torn record is answered again on the resume)."""
    path = Path(path)
    if path.exists() and path.stat().st_size:
        with path.open("rb+") as f:
            f.seek(-1, 2)
            if f.read(1) != b"\n":
                f.write(b"\n")


def record(out, config: dict, **extra) -> str:
    """Write ``out/run.json``: ``config`` (what :func:`open_run` compares), its hash and ``extra``
    (facts that may change on a resume: commit, processes, …). Returns the hash."""
    digest = config_hash(config)
    write_json(Path(out) / RUN_FILE, {**extra, "config": config, "config_hash": digest})
    return digest
