"""Background jobs for the admin tab: a job is one command line, one output folder, one kind.

A :class:`JobKind` turns validated parameters into the argv of a command-line pipeline that
writes its results under ``--out DIR`` (``progress.json``, ``*.jsonl`` rows as it goes,
``summary.json`` at the end). The :class:`JobRunner` starts those commands as subprocesses in
their own process group, keeps every job's record in ``<root>/<id>/job.json`` (plus ``log.txt``
and ``out/``), runs at most ``max_running`` at a time (the rest wait, in order), and can cancel
them. Because the state lives on disk, jobs survive a page reload and a server restart: on start
the runner re-attaches to jobs whose process is still alive and marks the others ``interrupted``.

New pipelines (VAG-DPO training, fuller evaluations) join by calling :func:`register_kind`.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from adapt.methods import NAMES as METHOD_NAMES

ACTIVE = ("queued", "running")
FINAL = ("finished", "failed", "cancelled", "interrupted")


class JobError(ValueError):
    """A job that cannot be started or found, with a message for the operator."""


# --------------------------------------------------------------------------------------------
# kinds
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    help: str = ""
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None
    kind: type | None = None  # inferred from default when None

    def clean(self, value):
        typ = self.kind or type(self.default)
        if value is None or (value == "" and typ is not str):
            value = self.default
        if value is None:
            return None
        try:
            if typ is bool:
                if isinstance(value, str):
                    value = value.strip().lower() in ("1", "true", "yes", "on")
                value = bool(value)
            elif typ is int:
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError
                value = int(value)
            elif typ is float:
                value = float(value)
                if not math.isfinite(value):
                    raise ValueError
            else:
                value = str(value).strip()
        except (TypeError, ValueError):
            raise JobError(f"parameter '{self.name}' must be a {typ.__name__}, got {value!r}") from None
        if self.choices is not None:
            items = value.split(",") if (isinstance(value, str) and self.kind is list) else [value]
            bad = [v for v in items if v not in self.choices]
            if bad:
                raise JobError(f"parameter '{self.name}': {bad[0]!r} is not one of {', '.join(map(str, self.choices))}")
        if self.minimum is not None and value < self.minimum:
            raise JobError(f"parameter '{self.name}' must be ≥ {self.minimum}")
        if self.maximum is not None and value > self.maximum:
            raise JobError(f"parameter '{self.name}' must be ≤ {self.maximum}")
        return value


@dataclass(frozen=True)
class JobKind:
    name: str
    label: str
    description: str
    params: tuple[Param, ...]
    build: Callable[[dict, Path], list[str]]  # (clean params, out dir) → argv
    # None: a stopped job cannot be continued; else the arguments added to its argv when it is
    # resumed in its own output folder (() for commands that resume by being run again)
    resume_args: tuple[str, ...] | None = None
    # how long a cancelled job gets after SIGTERM before SIGKILL (a trainer checkpoints first)
    stop_seconds: float = 5.0

    def defaults(self) -> dict:
        return {p.name: p.default for p in self.params}

    def clean(self, params: dict | None) -> dict:
        params = dict(params or {})
        known = {p.name for p in self.params}
        unknown = sorted(set(params) - known)
        if unknown:
            raise JobError(f"unknown parameter(s) for {self.name}: {', '.join(unknown)}; "
                           f"expected: {', '.join(sorted(known))}")
        return {p.name: p.clean(params.get(p.name)) for p in self.params}

    def help_markdown(self) -> str:
        rows = [f"**{self.label}** — {self.description}", "", "| parameter | default | meaning |", "|---|---|---|"]
        for p in self.params:
            extra = f" (one of {', '.join(map(str, p.choices))})" if p.choices else ""
            rows.append(f"| `{p.name}` | `{json.dumps(p.default)}` | {p.help}{extra} |")
        return "\n".join(rows)


KINDS: dict[str, JobKind] = {}


def register_kind(kind: JobKind) -> JobKind:
    """Make a pipeline available to the runner (and the admin tab). Later pipelines call this."""
    KINDS[kind.name] = kind
    return kind


def python_module(*args: str) -> list[str]:
    return [sys.executable, "-u", "-m", *args]


def _method_args(p: dict) -> list[str]:
    """The shared method flags of ``python -m adapt`` (empty values: the defaults of adapt/config.py)."""
    argv = []
    if p.get("model"):
        argv += ["--backbone", p["model"]]
    for key, flag in (("tau", "--tau"), ("alpha", "--alpha"), ("k", "--k"), ("layers", "--layers"),
                      ("max_new_tokens", "--max-new-tokens")):
        if p.get(key) not in (None, ""):
            argv += [flag, str(p[key])]
    return argv


def _eval_argv(p: dict, out: Path) -> list[str]:
    argv = python_module("adapt", "eval", "--benchmark", "world", "--split", p["split"], "--method", p["methods"],
                         "--out", str(out))
    if p["seed"] is not None:
        argv += ["--seed", str(p["seed"])]
    if p["limit"]:
        argv += ["--limit", str(p["limit"])]
    if not p["pope"]:
        argv += ["--no-pope"]
    return argv + _method_args(p)


def _export_argv(p: dict, out: Path) -> list[str]:
    if not p["input"]:
        raise JobError("parameter 'input' is required: a folder of images, a JSONL manifest or a dataset folder on the server")
    if not Path(p["input"]).expanduser().exists():
        raise JobError(f"input {p['input']!r} does not exist on the server")
    argv = python_module("adapt", "export-anchors", "--input", p["input"], "--out", str(out))
    if p["question"]:
        argv += ["--question", p["question"]]
    if p["overlays"]:
        argv += ["--overlays"]
    return argv + _method_args(p)


def _sweep_argv(p: dict, out: Path) -> list[str]:
    argv = python_module("adapt", "sweep", "--out", str(out), "--seeds", p["seeds"], "--per-seed", str(p["per_seed"]))
    if p["only"]:
        argv += ["--only", p["only"]]
    return argv + _method_args(p)


METHODS = tuple(METHOD_NAMES)
MODEL = Param("model", "", "backbone (empty = the embedded model; a local folder or hub id)", kind=str)
KNOB_PARAMS = (
    Param("tau", None, "AMC trigger τ (empty = default)", minimum=0.0, kind=float),
    Param("alpha", None, "steering strength α (empty = default)", minimum=0.0, kind=float),
    Param("layers", "", "ASI layers: all | top:N | from:i | 0,3,5 (empty = default)", kind=str),
    Param("max_new_tokens", None, "answer length (empty = default)", minimum=1, maximum=2048, kind=int),
)

register_kind(JobKind(
    name="world-eval",
    label="World benchmark",
    description="CHAIR / POPE / recall on synthetic world scenes with exact ground truth; greedy vs ADAPT-TF.",
    params=(
        Param("split", "validation", "scene split", choices=("validation", "test")),
        Param("seed", None, "a fresh world (empty = the standard split)", minimum=0, maximum=999, kind=int),
        Param("limit", 50, "number of scenes (0 = all of the split)", minimum=0, maximum=100_000),
        Param("methods", "greedy,adapt-tf", "comma-separated methods", choices=METHODS, kind=list),
        Param("pope", True, "also ask the POPE questions"),
        MODEL, *KNOB_PARAMS,
    ),
    build=_eval_argv,
))

register_kind(JobKind(
    name="export-anchors",
    label="Batch anchor export",
    description="Anchor-guided images as a Hugging Face dataset (parquet + card) for a folder of images, a JSONL of image/question, or a parquet / save_to_disk dataset.",
    params=(
        Param("input", "", "folder of images, JSONL manifest, or parquet / save_to_disk dataset (server path)", kind=str),
        Param("question", "", "question for every image of a folder (a JSONL has its own)", kind=str),
        Param("overlays", False, "also write original | heat map | enhanced strips"),
        MODEL,
    ),
    build=_export_argv,
))

register_kind(JobKind(
    name="sweep",
    label="Validation sweep (ASI operators × triggers × strengths × layers)",
    description="CHAIR_i, recall, mention counts, CIs and fire rates of every ASI setting against greedy on the "
                "validation split; the selection rule's pick in sweep.json.",
    params=(
        Param("seeds", "1,2,3,4", "comma-separated world seeds", kind=str),
        Param("per_seed", 250, "scenes per seed", minimum=1, maximum=100_000),
        Param("only", "", "comma-separated setting names to run (empty = the whole grid)", kind=str),
        MODEL,
    ),
    build=_sweep_argv,
))


def _train_argv(p: dict, out: Path) -> list[str]:
    argv = python_module("adapt.world.train", "--out", str(out), "--seed", str(p["seed"]),
                         "--threads", str(p["threads"]), "--eval-n", str(p["eval_n"]))
    for key in ("steps", "vision_steps", "pool"):
        if p[key] not in (None, ""):
            argv += ["--" + key.replace("_", "-"), str(p[key])]
    return argv


register_kind(JobKind(
    name="world-train",
    label="Train the embedded model",
    description="The two-stage training of the world model (vision tower on dense labels, then projector + "
                "decoder), then its quality on the test split. Writes a loadable model folder; the shipped "
                "assets/embedded is never overwritten (use the folder as the backbone, or copy it there).",
    params=(
        Param("seed", 0, "training seed", minimum=0, maximum=999),
        Param("steps", None, "language steps (empty = the script's default)", minimum=1, maximum=1_000_000, kind=int),
        Param("vision_steps", None, "vision-tower steps (empty = default)", minimum=1, maximum=1_000_000, kind=int),
        Param("pool", None, "training scenes (empty = default)", minimum=16, maximum=1_000_000, kind=int),
        Param("threads", 2, "CPU threads", minimum=1, maximum=256),
        Param("eval_n", 200, "test scenes for the quality report (0 = skip)", minimum=0, maximum=100_000),
    ),
    build=_train_argv,
))


# --------------------------------------------------------------------------------------------
# records
# --------------------------------------------------------------------------------------------
@dataclass
class Job:
    id: str
    kind: str
    params: dict
    argv: list[str]
    status: str = "queued"
    created: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    pid: int | None = None
    pid_start: str | None = None  # /proc start time: guards against pid reuse after a restart
    returncode: int | None = None
    message: str = ""

    @property
    def duration(self) -> float | None:
        if self.started is None:
            return None
        return (self.ended or time.time()) - self.started

    def to_dict(self) -> dict:
        return asdict(self)


def _proc_start(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int | None, start: str | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now = _proc_start(pid)
    if now is None:
        return True  # no /proc: trust kill(0)
    if start is not None and now != start:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return True


class JobRunner:
    """Starts, tracks and cancels jobs; all state on disk under ``root``."""

    def __init__(self, root: str | Path, max_running: int = 1, env: dict | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_running = max(1, int(max_running))
        self.env = env
        self._lock = threading.RLock()
        self._procs: dict[str, subprocess.Popen] = {}
        self._recover()
        self._watcher = threading.Thread(target=self._watch, name="adapt-jobs", daemon=True)
        self._watcher.start()

    # paths ---------------------------------------------------------------------------------
    def job_dir(self, job_id: str) -> Path:
        if not job_id or "/" in job_id or job_id.startswith("."):
            raise JobError(f"no job {job_id!r}")
        return self.root / job_id

    def out_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "out"

    def log_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "log.txt"

    # records -------------------------------------------------------------------------------
    def _write(self, job: Job) -> None:
        d = self.job_dir(job.id)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / "job.json.tmp"
        tmp.write_text(json.dumps(job.to_dict(), indent=1))
        tmp.replace(d / "job.json")

    def get(self, job_id: str) -> Job:
        path = self.job_dir(job_id) / "job.json"
        try:
            return Job(**json.loads(path.read_text()))
        except FileNotFoundError:
            raise JobError(f"no job {job_id!r}") from None
        except (json.JSONDecodeError, TypeError) as exc:
            raise JobError(f"job {job_id!r} has an unreadable record: {exc}") from None

    def list(self) -> list[Job]:
        jobs = []
        for p in self.root.glob("*/job.json"):
            try:
                jobs.append(self.get(p.parent.name))
            except JobError:
                continue
        return sorted(jobs, key=lambda j: j.created, reverse=True)

    # lifecycle -----------------------------------------------------------------------------
    def submit(self, kind: str, params: dict | None = None) -> Job:
        k = KINDS.get(kind)
        if k is None:
            raise JobError(f"unknown job kind {kind!r}; available: {', '.join(sorted(KINDS))}")
        clean = k.clean(params)
        job_id = time.strftime("%Y%m%d-%H%M%S") + "-" + kind + "-" + uuid.uuid4().hex[:6]
        out = self.out_dir(job_id)
        argv = k.build(clean, out)
        job = Job(id=job_id, kind=kind, params=clean, argv=argv)
        with self._lock:
            out.mkdir(parents=True, exist_ok=True)
            self._write(job)
            self._schedule()
        return self.get(job_id)

    def cancel(self, job_id: str) -> Job:
        with self._lock:
            job = self.get(job_id)
            if job.status == "queued":
                job.status, job.ended, job.message = "cancelled", time.time(), "cancelled before it started"
                self._write(job)
            elif job.status == "running":
                self._kill(job)
                job.status, job.ended, job.message = "cancelled", time.time(), "cancelled by the operator"
                proc = self._procs.pop(job.id, None)
                if proc is not None:
                    job.returncode = proc.poll()
                self._write(job)
                self._schedule()
            return job

    def resume(self, job_id: str) -> Job:
        """Queue a cancelled, failed or interrupted job again, in its own output folder, with its
        kind's resume arguments (the trainer's ``--resume``); its record and log carry on."""
        with self._lock:
            job = self.get(job_id)
            kind = KINDS.get(job.kind)
            if kind is None or kind.resume_args is None:
                raise JobError(f"jobs of kind {job.kind!r} cannot be resumed; start a new one")
            if job.status in ACTIVE or job.status == "finished":
                raise JobError(f"job {job.id} is {job.status}: there is nothing to resume")
            job.argv = job.argv + [a for a in kind.resume_args if a not in job.argv]
            job.status, job.started, job.ended, job.pid, job.pid_start, job.returncode = \
                "queued", None, None, None, None, None
            job.message = "resumed"
            self._write(job)
            self._schedule()
            return self.get(job_id)

    def _kill(self, job: Job) -> None:
        proc = self._procs.get(job.id)
        if proc is None and not _alive(job.pid, job.pid_start):
            return
        try:
            os.killpg(job.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError, TypeError):
            return
        kind = KINDS.get(job.kind)
        deadline = time.time() + (kind.stop_seconds if kind is not None else 5.0)
        while time.time() < deadline:
            if proc is not None and proc.poll() is not None:
                return
            if proc is None and not _alive(job.pid, job.pid_start):
                return
            time.sleep(0.05)
        try:
            os.killpg(job.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def _schedule(self) -> None:
        with self._lock:
            jobs = self.list()
            running = sum(j.status == "running" for j in jobs)
            for job in sorted((j for j in jobs if j.status == "queued"), key=lambda j: j.created):
                if running >= self.max_running:
                    break
                self._start(job)
                running += 1

    def _start(self, job: Job) -> None:
        log = open(self.log_path(job.id), "ab")
        log.write(f"$ {shlex.join(job.argv)}\n".encode())
        log.flush()
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        try:
            proc = subprocess.Popen(job.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=str(Path(__file__).resolve().parents[1]), env=env,
                                    start_new_session=True)
        except OSError as exc:
            job.status, job.ended, job.message = "failed", time.time(), f"could not start: {exc}"
            self._write(job)
            return
        finally:
            log.close()
        self._procs[job.id] = proc
        job.status, job.started, job.pid, job.pid_start = "running", time.time(), proc.pid, _proc_start(proc.pid)
        self._write(job)

    def _finish(self, job: Job, returncode: int | None) -> None:
        job.returncode = returncode
        job.ended = time.time()
        if returncode == 0:
            job.status = "finished"
        elif returncode is None:
            summary = (self.out_dir(job.id) / "summary.json").exists()
            job.status = "finished" if summary else "interrupted"
            job.message = "the server restarted while it ran" + ("" if summary else "; it did not finish")
        else:
            job.status = "failed"
            job.message = f"exit code {returncode}: " + (self.log_tail(job.id, 400).strip().splitlines() or [""])[-1]
        self._write(job)

    def poll(self) -> None:
        """Update records of processes that ended, then start waiting jobs."""
        with self._lock:
            for job_id, proc in list(self._procs.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                self._procs.pop(job_id, None)
                job = self.get(job_id)
                if job.status == "running":
                    self._finish(job, rc)
            for job in self.list():
                if job.status == "running" and job.id not in self._procs and not _alive(job.pid, job.pid_start):
                    self._finish(job, None)
            self._schedule()

    def _recover(self) -> None:
        """After a restart: jobs still running are watched by pid; dead ones are closed."""
        for job in self.list():
            if job.status == "running" and not _alive(job.pid, job.pid_start):
                self._finish(job, None)
        self._schedule()

    def _watch(self) -> None:
        while True:
            time.sleep(0.5)
            try:
                self.poll()
            except Exception:  # never let the watcher die: the next tick retries
                pass

    def shutdown(self, cancel_running: bool = False) -> None:
        if cancel_running:
            for job in self.list():
                if job.status in ACTIVE:
                    self.cancel(job.id)

    # outputs -------------------------------------------------------------------------------
    def log_tail(self, job_id: str, chars: int = 20_000) -> str:
        path = self.log_path(job_id)
        try:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - chars))
                text = f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""
        # progress bars redraw with carriage returns: keep what the terminal would show
        return "\n".join(line.rstrip("\r").split("\r")[-1] for line in text.split("\n"))

    def progress(self, job_id: str) -> dict:
        """``out/progress.json``; for pipelines made of sub-runs, the newest nested one."""
        out = self.out_dir(job_id)
        top = _read_json(out / "progress.json")
        if isinstance(top, dict):
            return top
        nested = sorted(out.glob("*/progress.json"), key=lambda p: p.stat().st_mtime)
        if nested:
            p = _read_json(nested[-1])
            if isinstance(p, dict):
                return p | {"stage": f"{nested[-1].parent.name}: {p.get('stage', '')}".strip(": ")}
        return {}

    def summary(self, job_id: str) -> dict | None:
        return _read_json(self.out_dir(job_id) / "summary.json")

    def rows(self, job_id: str, max_rows: int = 100_000) -> dict[str, list[dict]]:
        """Every ``*.jsonl`` under the output folder, as rows (a half-written last line is skipped)."""
        out: dict[str, list[dict]] = {}
        out_dir = self.out_dir(job_id)
        for path in sorted(out_dir.glob("*.jsonl")) + sorted(out_dir.glob("*/*.jsonl")):
            rows = []
            try:
                with open(path, encoding="utf-8") as f:
                    for line in f:
                        if len(rows) >= max_rows:
                            break
                        try:
                            row = json.loads(line)
                        except json.JSONDecodeError:
                            continue
                        if isinstance(row, dict):
                            rows.append(row)
            except OSError:
                continue
            name = path.stem if path.parent == out_dir else f"{path.parent.name}/{path.stem}"
            out[name] = rows
        return out

    def files(self, job_id: str) -> list[Path]:
        out = self.out_dir(job_id)
        return sorted(p for p in out.rglob("*") if p.is_file()) if out.exists() else []


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def default_root() -> Path:
    return Path(os.environ.get("ADAPT_JOBS_DIR") or Path(__file__).resolve().parents[1] / "runs" / "jobs")


# kinds kept in modules of their own (they import this one, so they are registered last)
from . import trainjob  # noqa: E402
from .taskjob import task_kind  # noqa: E402

register_kind(task_kind())
trainjob.register()
