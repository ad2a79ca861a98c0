"""The resumable, shardable task runner behind ``python -m adapt eval --task``.

For every (task, method) one JSONL of records is written as it goes (``items-<method>.jsonl``): a crash
or Ctrl-C loses at most the batch in flight, and a rerun with the same configuration answers only what
is missing. ``run.json`` records the task, methods, full configuration, its hash, the git commit and
the model's revision; ``progress.json`` the items done so far (what the app's job view reads);
``summary.json`` holds the figures, ``table.md`` the results (paper Table 1's
layout), ``efficiency.md`` seconds and tokens per answer against greedy (Table 2b), ``summary.md`` /
``summary.csv`` the long form (:mod:`adapt.eval.tables`).

Sharding: under ``accelerate launch`` (or any launcher that sets ``RANK`` / ``WORLD_SIZE``) process i of
n answers the items i, i + n, i + 2n, … into ``items-<method>.shard-<i>-of-<n>.jsonl``; process 0 waits
until every shard has finished, merges them into ``items-<method>.jsonl`` and writes the summary.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .formats import write_json
from .rundir import backbone_identity, end_torn_line, model_revision, open_run, record
from .tables import TimedMethod, cost_figures, write_tables
from .tasks import Task

WAIT_POLL_S = 0.5


@dataclass
class Shard:
    """This process's place among the processes sharing a run."""

    index: int = 0
    count: int = 1

    @classmethod
    def from_env(cls) -> "Shard":
        """The shard ``accelerate launch`` (torchrun) gives this process, through ``RANK`` / ``WORLD_SIZE``."""
        n = int(os.environ.get("WORLD_SIZE", "1") or 1)
        i = int(os.environ.get("RANK", "0") or 0)
        return cls(i, n) if n > 1 else cls()

    @property
    def main(self) -> bool:
        return self.index == 0

    def tag(self) -> str:
        return f"shard-{self.index}-of-{self.count}"


def git_commit() -> dict:
    """The checkout's commit and whether tracked files differ from it (None outside a git checkout)."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    if head.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def _read_records(path: Path) -> dict[str, dict]:
    out = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
                out[str(rec["id"])] = rec
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line torn by an interrupted write: that item is answered again
    return out


def _items_path(run_dir: Path, method: str, shard: Shard | None = None) -> Path:
    return run_dir / (f"items-{method}.jsonl" if shard is None else f"items-{method}.{shard.tag()}.jsonl")


def _done_ids(run_dir: Path, method: str) -> set[str]:
    done = set(_read_records(_items_path(run_dir, method)))
    for p in run_dir.glob(f"items-{method}.shard-*.jsonl"):
        done |= set(_read_records(p))
    return done


def run_task(backbone, task: Task, methods: list, out: str | Path, config: dict | None = None,
             batch_size: int | None = None, limit: int | None = None, shard: Shard | None = None,
             progress: Callable[[int, int, str], None] | None = None, overwrite: bool = False) -> dict | None:
    """Run ``methods`` on ``task``'s items (the first ``limit``), resuming from what ``out`` holds.

    Returns the summary (``{method: figures}``) in the main process, None in the others. A run folder
    written with another configuration is refused (:class:`adapt.eval.rundir.RunDirError`) rather than
    mixed, unless ``overwrite`` (the main process then deletes the old run's files)."""
    shard = shard or Shard()
    run_dir = Path(out)
    names = [m.name for m in methods]
    full = {"task": task.name, "task_params": task.params(), "methods": {m.name: m.config_dict() for m in methods},
            "backbone": backbone_identity(backbone), "limit": limit, **(config or {})}
    # only the main process deletes; the others check (with --overwrite they wait for it at the barrier)
    if shard.main or not overwrite:
        open_run(run_dir, full, overwrite=overwrite)
    items = task.items()
    if limit is not None:
        items = items[:limit]
    ids = [task.item_id(it) for it in items]
    if shard.main:
        task.prepare(run_dir)
        record(run_dir, full, task=task.name, methods=names, **git_commit(), model_revision=model_revision(backbone),
               n_items=len(items), processes=shard.count, python=sys.version.split()[0])
    marker = run_dir / f".{shard.tag()}.done"
    marker.unlink(missing_ok=True)
    if shard.count > 1:
        _barrier()  # every process has removed its old marker before anyone looks for markers
    mine = [(i, it) for i, it in enumerate(items) if i % shard.count == shard.index]
    bs = max(1, batch_size or task.batch_size)
    total = len(mine) * len(methods)
    done_n = 0

    def report(stage: str) -> None:
        if shard.main:  # what the app's job view reads; the main process speaks for the run
            write_json(run_dir / "progress.json", {"done": done_n, "total": total, "stage": stage})
        if progress is not None:
            progress(done_n, total, stage)
    for method in methods:
        done = _done_ids(run_dir, method.name)
        todo = [it for i, it in mine if task.item_id(it) not in done]
        done_n += len(mine) - len(todo)
        report(method.name)
        path = _items_path(run_dir, method.name, shard if shard.count > 1 else None)
        end_torn_line(path)
        with path.open("a", encoding="utf-8") as f:
            timed = TimedMethod(method)
            for start in range(0, len(todo), bs):
                batch = todo[start:start + bs]
                recs = task.run_batch(backbone, timed, batch)
                cost = timed.take()
                for rec in recs:
                    if cost is not None:  # each record carries its share of the batch's long-form answers
                        rec["cost"] = {k: v / len(recs) for k, v in cost.items()}
                    f.write(json.dumps(rec) + "\n")
                f.flush()
                done_n += len(batch)
                report(method.name)
    marker.write_text(str(time.time()))
    if not shard.main:
        return None
    _wait_for_shards(run_dir, shard.count)
    records = {m: _merge(run_dir, m, ids) for m in names}
    summary = task.summarise_run(run_dir, names, records)
    for m in summary:
        summary[m].update(cost_figures(records.get(m, [])))
    write_json(run_dir / "summary.json", summary)
    write_tables(run_dir, summary, task.table_keys)
    report("done")
    return summary


def _barrier() -> None:
    from accelerate import PartialState

    PartialState().wait_for_everyone()


def _wait_for_shards(run_dir: Path, n: int) -> None:
    # files, not a collective: shards may finish far apart, longer than a process group's timeout
    markers = [run_dir / f".{Shard(i, n).tag()}.done" for i in range(n)]
    told = False
    while not all(m.exists() for m in markers):
        if not told:
            print(f"waiting for {sum(not m.exists() for m in markers)} other process(es) to finish", file=sys.stderr)
            told = True
        time.sleep(WAIT_POLL_S)


def _merge(run_dir: Path, method: str, ids: list[str]) -> list[dict]:
    """Fold the shard files into ``items-<method>.jsonl`` (in item order) and return this run's records."""
    merged = _read_records(_items_path(run_dir, method))
    shards = sorted(run_dir.glob(f"items-{method}.shard-*.jsonl"))
    for p in shards:
        merged.update(_read_records(p))
    order = {k: i for i, k in enumerate(ids)}
    keys = sorted(merged, key=lambda k: (order.get(k, len(order)), k))
    if shards:
        tmp = run_dir / f".items-{method}.jsonl.tmp"
        tmp.write_text("".join(json.dumps(merged[k]) + "\n" for k in keys), encoding="utf-8")
        tmp.replace(_items_path(run_dir, method))
        for p in shards:
            p.unlink()
    return [merged[k] for k in ids if k in merged]
