"""Preference tuning as admin jobs: ``python -m adapt train {vag-dpo|dpo} --out DIR ...``.

The training command writes into its run folder ``progress.json`` ({done, total, stage}),
``train_log.jsonl`` (one row per logged step: step, loss, margin, accuracy, lr, seconds),
``checkpoints/``, ``summary.json`` and the tuned model in ``model/``. The job runner shows the
first two live, cancels with SIGTERM (the trainer finishes its step and checkpoints), and a
cancelled or interrupted job is resumed in its own folder with ``--resume``. A finished job's
``model/`` is offered in the Inspect tab's backbone choice (:func:`tuned_models`).
"""

from __future__ import annotations

import shlex
from pathlib import Path

from adapt.paths import asset

# app.jobs imports this module to register its kinds: this one imports app.jobs inside its
# functions, so that either can be imported first

OBJECTIVES = {"vag-dpo": ("VAG-DPO", "chosen answer on the anchor-guided image, rejected on the noise image "
                                     "(paper Eq. 12)"),
              "dpo": ("DPO", "plain DPO: the original image on both sides")}
DATA_KINDS = ("rlaif-v", "rlhf-v")
# the trainer checkpoints on SIGTERM after the step in flight; a 7B step takes a while
STOP_SECONDS = 60.0


def kind_name(objective: str) -> str:
    return f"train-{objective}"


def check_data(spec: str) -> None:
    """``world`` or ``rlaif-v:PATH`` / ``rlhf-v:PATH`` with PATH on the server."""
    from .jobs import JobError

    spec = (spec or "").strip()
    if spec == "world":
        return
    kind, sep, path = spec.partition(":")
    if not sep or kind not in DATA_KINDS or not path.strip():
        raise JobError(f"parameter 'data': {spec!r} is not world, rlaif-v:PATH or rlhf-v:PATH")
    if not Path(path.strip()).expanduser().exists():
        raise JobError(f"data: {path.strip()!r} does not exist on the server")


def train_argv(objective: str, command: list[str] | None = None):
    """The argv builder of one objective; ``command`` replaces ``python -m adapt`` (tests)."""

    def build(p: dict, out: Path) -> list[str]:
        from .jobs import JobError, python_module

        check_data(p["data"])
        if p["images"] and not Path(p["images"]).expanduser().is_dir():
            raise JobError(f"images: {p['images']!r} is not a folder on the server")
        try:
            extra = shlex.split(p["extra"] or "")
        except ValueError as exc:
            raise JobError(f"parameter 'extra': {exc}") from None
        # --model-out: the tuned model stays in the job's folder, where the backbone choice finds it
        # (and a web form never writes over a shipped model)
        reserved = {"--out", "--resume", "--backbone", "--data", "--model-out"}
        clash = [a for a in extra if a.split("=")[0] in reserved]
        if clash:
            raise JobError(f"parameter 'extra' may not set {clash[0].split('=')[0]} (it has its own parameter "
                           "or is set by the runner)")
        argv = (list(command) if command else python_module("adapt")) + ["train", objective, "--out", str(out),
                                                                        "--data", p["data"], "--no-bar"]
        if p["model"]:
            argv += ["--backbone", p["model"]]
        if p["images"]:
            argv += ["--images", str(Path(p["images"]).expanduser())]
        for key in ("steps", "lr", "beta", "batch", "limit", "world_scenes", "save_every", "eval_scenes", "threads"):
            if p[key] not in (None, ""):
                argv += ["--" + key.replace("_", "-"), str(p[key])]
        if not p["lora"]:
            argv += ["--full"]
        return argv + extra

    return build


def train_kind(objective: str, command: list[str] | None = None):
    from .jobs import MODEL, JobKind, Param

    label, about = OBJECTIVES[objective]
    return JobKind(
        name=kind_name(objective),
        label=f"{label} training",
        description=f"Preference tuning, {about}. Live loss, reward margin and accuracy per step; cancel "
                    "checkpoints the step in flight and *Resume job* continues it; a finished job's tuned model "
                    "appears in the Inspect tab's backbone choice.",
        params=(
            MODEL,
            Param("data", "world", "world (pairs from the world's training scenes) | rlaif-v:PATH | rlhf-v:PATH "
                                   "(server path)", kind=str),
            Param("images", "", "folder that relative image paths in the data are read from (server path)", kind=str),
            Param("limit", None, "first N records of the data (empty = all)", minimum=1, maximum=10_000_000, kind=int),
            Param("world_scenes", None, "data world: training scenes the pairs come from (empty = default)",
                  minimum=1, maximum=1_000_000, kind=int),
            Param("steps", None, "optimizer steps (empty = the trainer's default)", minimum=1, maximum=10_000_000,
                  kind=int),
            Param("lr", None, "learning rate (empty = default)", minimum=0.0, maximum=1.0, kind=float),
            Param("beta", None, "DPO β (empty = the paper's 0.1)", minimum=0.0, maximum=100.0, kind=float),
            Param("batch", None, "pairs per micro-step (empty = default)", minimum=1, maximum=4096, kind=int),
            Param("lora", True, "LoRA adapters (false: full tuning of projector + decoder)"),
            Param("save_every", None, "checkpoint every N steps (empty = default)", minimum=1, maximum=10_000_000,
                  kind=int),
            Param("eval_scenes", None, "world validation scenes scored after training (0 = skip; empty = default)",
                  minimum=0, maximum=100_000, kind=int),
            Param("threads", None, "CPU threads (empty = default)", minimum=1, maximum=256, kind=int),
            Param("extra", "", "more `adapt train` flags, e.g. --sft-weight 1 --lora-r 16", kind=str),
        ),
        build=train_argv(objective, command),
        resume_args=("--resume",),
        stop_seconds=STOP_SECONDS,
    )


def register(command: list[str] | None = None) -> list:
    from .jobs import register_kind

    return [register_kind(train_kind(o, command)) for o in OBJECTIVES]


# ------------------------------------------------------------------------- tuned models in the app
SHIPPED_TUNED = {"embedded-vagdpo": asset("embedded-vagdpo")}
JOB_PREFIX = "job:"


def tuned_models(runner) -> list[tuple[str, str]]:
    """(label, value) of the tuned models a researcher can compare with their base: the shipped
    ``assets/embedded-vagdpo`` when present, and every finished training job's ``model/`` (newest
    first). Values are names, not server paths: :func:`resolve` turns them into folders."""
    out = []
    for name, path in SHIPPED_TUNED.items():
        if (path / "config.json").is_file():
            out.append((f"{name} (shipped VAG-DPO tuning of the embedded model)", name))
    if runner is not None:
        for job in runner.list():
            if job.kind not in {kind_name(o) for o in OBJECTIVES} or job.status != "finished":
                continue
            if (runner.out_dir(job.id) / "model" / "config.json").is_file():
                label = OBJECTIVES[job.kind.removeprefix("train-")][0]
                base = job.params.get("model") or "embedded"
                out.append((f"{label}-tuned {base} · job {job.id}", JOB_PREFIX + job.id))
    return out


def resolve(name: str, runner) -> str:
    """The folder behind a tuned model's name (other names unchanged). Raises JobError for a job
    that has no model."""
    from .jobs import JobError

    name = (name or "").strip()
    if name in SHIPPED_TUNED:
        path = SHIPPED_TUNED[name]
        if not (path / "config.json").is_file():
            raise JobError(f"{name} is not installed on this server")
        return str(path)
    if name.startswith(JOB_PREFIX):
        job_id = name[len(JOB_PREFIX):]
        if runner is None:
            raise JobError("training jobs are not enabled on this server")
        job = runner.get(job_id)
        model = runner.out_dir(job.id) / "model"
        if not (model / "config.json").is_file():
            raise JobError(f"job {job.id} has no tuned model (it is {job.status})")
        return str(model)
    return name
