"""Benchmark tasks as admin jobs: ``python -m adapt eval --task NAME`` with its data on the server.

The job kind checks the data paths before anything starts (a wrong path is one line in the
admin tab, not a failed job); the job runs the CLI itself, whose runner writes the
``progress.json`` the job view reads.
"""

from __future__ import annotations

import os
from pathlib import Path

# app.jobs imports this module to register its kind: this one imports app.jobs inside its
# functions, so that either can be imported first

# What each registered task reads from the server's disk: parameter → (CLI flag, "dir" | "file" |
# "files", what it is). Tasks registered later and not listed here still run; only the paths they
# are given are checked.
PATHS = {
    "images": ("--images", "dir", "folder of the task's images"),
    "annotations": ("--annotations", None, "chair-coco: folder with COCO instances_*.json and captions_*.json; "
                                           "amber: its annotations.json"),
    "questions": ("--questions", "files", "pope: question JSONL file(s), comma-separated; mmhal: "
                                          "response_template.json"),
    "queries": ("--queries", "file", "amber: query_all.json"),
    "association": ("--association", "file", "amber: relation.json"),
    "safe_words": ("--safe-words", "file", "amber: safe_words.txt (optional)"),
    "items": ("--items", "file", "refcoco: grounding items JSONL"),
    "ids": ("--ids", "file", "chair-coco: the image ids of a published run (optional)"),
}
NEEDS = {
    "world": {}, "world-grounding": {},
    "chair-coco": {"annotations": "dir", "images": "dir"},
    "pope": {"questions": "files", "images": "dir"},
    "amber": {"queries": "file", "annotations": "file", "association": "file", "images": "dir"},
    "refcoco": {"items": "file", "images": "dir"},
    "mmhal": {"questions": "file", "images": "dir"},
}
OPTIONAL = {"amber": ("safe_words",), "chair-coco": ("ids",)}
WORLD_TASKS = ("world", "world-grounding")


def task_names() -> tuple[str, ...]:
    from adapt.eval.tasks import TASKS

    return tuple(TASKS)


def _check_path(param: str, value: str, kind: str) -> None:
    from .jobs import JobError

    for one in ([v.strip() for v in value.split(",") if v.strip()] if kind == "files" else [value]):
        p = Path(one).expanduser()
        if not p.exists():
            raise JobError(f"{param}: {one!r} does not exist on the server")
        if kind == "dir" and not p.is_dir():
            raise JobError(f"{param}: {one!r} is not a folder")
        if kind in ("file", "files") and not p.is_file():
            raise JobError(f"{param}: {one!r} is not a file")
        if not os.access(p, os.R_OK):
            raise JobError(f"{param}: {one!r} cannot be read by the server")


def check_task_params(p: dict) -> None:
    """A readable refusal before the job starts: the task's data paths missing, wrong or given to a
    task that does not read them."""
    from .jobs import JobError

    task = p["task"]
    needs = NEEDS.get(task)
    given = {k for k in PATHS if p.get(k)}
    if needs is not None:
        reads = set(needs) | set(OPTIONAL.get(task, ()))
        for k in needs:
            if not p.get(k):
                raise JobError(f"task {task} needs '{k}' ({PATHS[k][2]}, a path on the server)")
        extra = sorted(given - reads)
        if extra:
            raise JobError(f"task {task} does not read {', '.join(repr(x) for x in extra)}; "
                           + (f"it reads {', '.join(sorted(reads))}" if reads else "it needs no data paths"))
    for k in sorted(given):
        kind = (needs or {}).get(k) or PATHS[k][1] or ("dir" if Path(p[k]).expanduser().is_dir() else "file")
        _check_path(k, p[k], kind)


def task_argv(p: dict, out: Path) -> list[str]:
    from .jobs import _method_args, python_module

    check_task_params(p)
    argv = python_module("adapt", "eval", "--task", p["task"], "--method", p["methods"], "--out", str(out))
    for k, (flag, _, _) in PATHS.items():
        if p.get(k):
            argv += [flag, str(Path(p[k]).expanduser()) if k != "questions" else
                     ",".join(str(Path(v.strip()).expanduser()) for v in p[k].split(",") if v.strip())]
    if p["limit"]:
        argv += ["--limit", str(p["limit"])]
    if p["task"] in WORLD_TASKS:
        argv += ["--split", p["split"]]
        if p["seed"] is not None:
            argv += ["--seed", str(p["seed"])]
    if p["task"] == "world" and not p["pope"]:
        argv += ["--no-pope"]
    if p["task"] == "world-grounding":
        argv += ["--scenes", str(p["scenes"])]
    if p["task"] == "chair-coco":
        argv += ["--sample", str(p["sample"]), "--sample-seed", str(p["sample_seed"])]
    if p["parser"]:
        argv += ["--parser", p["parser"]]
    if p["batch_size"]:
        argv += ["--batch-size", str(p["batch_size"])]
    return argv + _method_args(p)


def task_kind():
    from adapt.eval.pope import PARSERS

    from .jobs import KNOB_PARAMS, METHODS, MODEL, JobKind, Param

    return JobKind(
        name="eval-task",
        label="Benchmark task",
        description="A registered benchmark task (`python -m adapt eval --task …`: CHAIR on COCO, POPE, AMBER, "
                    "RefCOCO grounding, MM-Hal, the world) for each method, on data already on the server "
                    "(nothing is downloaded). Resumable: the same parameters continue a stopped job's folder.",
        params=(
            Param("task", "world", "registered task", choices=task_names()),
            Param("methods", "greedy,adapt-tf", "comma-separated methods", choices=METHODS, kind=list),
            Param("limit", 20, "first N items (world: scenes per seed; 0 = all)", minimum=0, maximum=10_000_000),
            MODEL,
            *(Param(k, "", f"{about} (server path)", kind=str) for k, (_, _, about) in PATHS.items()),
            Param("split", "validation", "world / world-grounding: scene split", choices=("validation", "test")),
            Param("seed", None, "world / world-grounding: a fresh world (empty = the standard split)", minimum=0,
                  maximum=999, kind=int),
            Param("pope", True, "world: also ask the POPE questions"),
            Param("scenes", 50, "world-grounding: scenes whose items are scored", minimum=1, maximum=100_000),
            Param("sample", 500, "chair-coco: images drawn from the sorted ids", minimum=1, maximum=1_000_000),
            Param("sample_seed", 0, "chair-coco: the seed of that draw", minimum=0, maximum=2 ** 31 - 1),
            Param("parser", "", "yes/no answer parser (empty = the task's own)", choices=("", *PARSERS), kind=str),
            Param("batch_size", None, "items answered together (empty = the task's default)", minimum=1,
                  maximum=4096, kind=int),
            *KNOB_PARAMS,
        ),
        build=task_argv,
        resume_args=(),  # the runner resumes a folder written with the same configuration
    )
