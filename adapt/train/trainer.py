"""One trainer for VAG-DPO and plain DPO (paper Sec. 4.3, Eq. 12), a small loop on ``accelerate``.

Why not TRL: its vision DPO collator gives the chosen and the rejected answer the *same* images
(``images * 2``), and Eq. 12 scores them on different ones (v_w, v_l); carrying a second image means
replacing the collator and the forward that concatenates the two sides, which is most of TRL's DPO
code for VLMs. The loop here is ~300 lines, runs on ``accelerate`` (several processes or GPUs, mixed
precision) and owns its checkpoints, so resuming restores the optimizer, the scheduler and the data
position exactly.

What a run writes in its folder (the app's job runner reads the first two while it runs)::

    progress.json      {"done", "total", "stage": "pairs" | "train" | "eval" | "done" | "stopped"}, atomic
    train_log.jsonl    one row per logged step: step, loss, margin, accuracy, lr, seconds (+ rewards, sft)
    checkpoints/step-N/  trainable weights, optimizer, scheduler, state (written whole, then renamed)
    model/             the tuned model, loadable with adapt.backbones.load_backbone (LoRA merged)
    adapter/           the LoRA adapter alone (peft format), when LoRA was used
    training_curves.png, summary.json, train_config.json
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..backbones import Backbone
from .config import TrainConfig, TrainError
from .loss import IGNORE, dpo_loss, sequence_logps
from .pairs import PairSet

STATE_FILE = "state.json"


# --- inputs ----------------------------------------------------------------------------------------

def encode(backbone: Backbone, images: list, questions: list[str], answers: list[str]) -> tuple[dict, torch.Tensor]:
    """Model inputs for (image, question, answer) rows, right-padded, and labels that hold the answer
    tokens only (prompt and image tokens, padding: ``-100``, masked out of Eq. 12's sums).

    The prompt is the model's own chat template with the generation prompt, as at inference; the
    answer follows as ``" " + answer`` and the end-of-sequence token, as the embedded model was
    trained. Keys the processor gives per token (attention mask, Qwen2.5-VL's ``mm_token_type_ids``)
    are extended over the answer; per-image keys (pixels, grids) are concatenated."""
    tok = backbone.tokenizer
    eos = backbone.model.generation_config.eos_token_id
    eos = eos[0] if isinstance(eos, (list, tuple)) else eos
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    rows = []
    for image, question, answer in zip(images, questions, answers):
        enc = backbone.processor(images=[image], text=[backbone.prompt(question)], return_tensors="pt")
        ans = tok(" " + answer, add_special_tokens=False)["input_ids"] + [eos]
        rows.append((enc, torch.tensor(ans, dtype=torch.long)))
    lengths = [enc["input_ids"].shape[1] + len(ans) for enc, ans in rows]
    L = max(lengths)
    B = len(rows)
    ids = torch.full((B, L), pad, dtype=torch.long)
    labels = torch.full((B, L), IGNORE, dtype=torch.long)
    per_token: dict[str, torch.Tensor] = {}
    per_image: dict[str, list[torch.Tensor]] = {}
    for b, (enc, ans) in enumerate(rows):
        p = enc["input_ids"].shape[1]
        ids[b, :p] = enc["input_ids"][0]
        ids[b, p:p + len(ans)] = ans
        labels[b, p:p + len(ans)] = ans
        for k, v in enc.items():
            if k == "input_ids" or not torch.is_tensor(v):
                continue
            if v.dim() >= 2 and v.shape[0] == 1 and v.shape[1] == p:
                if k not in per_token:
                    per_token[k] = torch.zeros((B, L, *v.shape[2:]), dtype=v.dtype)
                per_token[k][b, :p] = v[0]
                if k == "attention_mask":
                    per_token[k][b, p:p + len(ans)] = 1
            else:
                per_image.setdefault(k, []).append(v)
    inputs = {"input_ids": ids, **per_token, **{k: torch.cat(v) for k, v in per_image.items()}}
    if "attention_mask" not in inputs:
        inputs["attention_mask"] = (labels != IGNORE) | (torch.arange(L)[None] < torch.tensor(
            [e["input_ids"].shape[1] for e, _ in rows])[:, None])
    return inputs, labels


def answer_logps(model, backbone: Backbone, images, questions, answers, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed answer-token log-probs ``[B]`` (and token counts) of ``model`` for the rows: the
    log π(y | x, v) terms of Eq. 12."""
    inputs, labels = encode(backbone, images, questions, answers)
    dtype = next(p for p in model.parameters()).dtype
    inputs = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in inputs.items()}
    out = model(**inputs, use_cache=False)
    return sequence_logps(out.logits, labels.to(device))


# --- the data order ----------------------------------------------------------------------------------

def sample_indices(n: int, seed: int, start: int, count: int) -> list[int]:
    """Pairs ``start`` … ``start + count − 1`` of the run's stream: epoch after epoch, each a fresh
    permutation of the ``n`` pairs drawn from (seed, epoch). A pure function of the position, so a
    resumed run (and every process of a multi-process one) reads exactly the pairs it would have."""
    out = []
    perms: dict[int, np.ndarray] = {}
    for g in range(start, start + count):
        e = g // n
        if e not in perms:
            perms[e] = np.random.default_rng([seed, e]).permutation(n)
        out.append(int(perms[e][g % n]))
    return out


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to ``min_lr_ratio`` of the peak."""
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        p = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))
    return f


# --- progress files ----------------------------------------------------------------------------------

class RunFiles:
    """``progress.json`` (atomic) and ``train_log.jsonl``, as :class:`adapt.world.train.RunLog` writes them."""

    def __init__(self, out: Path, total: int, main: bool = True):
        self.out, self.total, self.main = out, total, main
        self.start = time.perf_counter()

    def progress(self, done: int, stage: str, total: int | None = None) -> None:
        if not self.main:
            return
        tmp = self.out / ".progress.json"
        tmp.write_text(json.dumps({"done": done, "total": self.total if total is None else total, "stage": stage}))
        os.replace(tmp, self.out / "progress.json")

    def log(self, row: dict) -> None:
        if self.main:
            with open(self.out / "train_log.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")

    def truncate_log(self, step: int) -> None:
        """Drop rows after ``step`` (a resumed run logs those steps again)."""
        path = self.out / "train_log.jsonl"
        if not self.main or not path.exists():
            return
        keep = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    keep.append(line)
            except (json.JSONDecodeError, KeyError):
                continue
        path.write_text("".join(x + "\n" for x in keep))


# --- the run -----------------------------------------------------------------------------------------

@dataclass
class TrainResult:
    out: Path
    steps_done: int
    stopped: bool
    model: object = None  # the policy as trained (peft-wrapped with LoRA)


def _trainable(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def prepare_model(backbone: Backbone, cfg: TrainConfig):
    """The policy: LoRA adapters on the decoder (peft) or the projector + decoder trained in full; the
    vision tower stays frozen either way, as in LLaVA's tuning stages."""
    model = backbone.model
    for p in model.parameters():
        p.requires_grad_(False)
    if cfg.lora:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(cfg.seed)  # the adapters' initialisation, the same in every process
        lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=cfg.target_modules, bias="none")
        try:
            model = get_peft_model(model, lcfg)
        except ValueError as exc:
            raise TrainError(f"--target-modules {cfg.target_modules!r} matches no layer of this model ({exc})"[:400]) \
                from None
    else:
        for n, p in model.named_parameters():
            if "vision_tower" not in n and "visual" not in n.split(".")[:3]:
                p.requires_grad_(True)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        if cfg.lora:
            model.enable_input_require_grads()
    model.train()
    return model


def ref_logps_path(pairs: PairSet, backbone: Backbone, sides: tuple[str, str]) -> Path:
    from ..anchor.build import backbone_id

    key = hashlib.sha256(json.dumps([backbone_id(backbone), list(sides)]).encode()).hexdigest()[:12]
    return pairs.root / f"ref-logps-{key}.json"


@torch.no_grad()
def reference_logps(model, backbone: Backbone, pairs: PairSet, sides: tuple[str, str], device, batch: int = 16,
                    progress: Callable[[int, int], None] | None = None) -> dict[str, list[float]]:
    """log π_ref(y_w|x, v_w) and log π_ref(y_l|x, v_l) of every pair, with the frozen base (computed once,
    before any update, and stored with the pairs)."""
    path = ref_logps_path(pairs, backbone, sides)
    have = json.loads(path.read_text()) if path.exists() else {}
    todo = [p for p in pairs.pairs if p["id"] not in have]
    was = model.training
    model.eval()
    for s in range(0, len(todo), batch):
        chunk = todo[s:s + batch]
        imgs = [pairs.image(p, sides[0]) for p in chunk] + [pairs.image(p, sides[1]) for p in chunk]
        qs = [p["question"] for p in chunk] * 2
        ans = [p["chosen"] for p in chunk] + [p["rejected"] for p in chunk]
        lp, _ = answer_logps(model, backbone, imgs, qs, ans, device)
        for k, p in enumerate(chunk):
            have[p["id"]] = [float(lp[k]), float(lp[len(chunk) + k])]
        if progress is not None:
            progress(len(pairs.pairs) - len(todo) + s + len(chunk), len(pairs.pairs))
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(have))
        os.replace(tmp, path)
    model.train(was)
    return have


def latest_checkpoint(out: Path) -> Path | None:
    ck = sorted((p for p in (out / "checkpoints").glob("step-*") if (p / STATE_FILE).exists()),
                key=lambda p: int(p.name.split("-")[1])) if (out / "checkpoints").exists() else []
    return ck[-1] if ck else None


def save_checkpoint(out: Path, step: int, model, optimizer, scheduler, cfg: TrainConfig, extra: dict) -> Path:
    """``checkpoints/step-N/``, written in a temporary folder and renamed: a kill at any moment leaves
    the previous checkpoint whole."""
    from safetensors.torch import save_file

    root = out / "checkpoints"
    tmp = root / f".tmp-step-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({n: p.detach().cpu().contiguous() for n, p in _trainable(model).items()}, str(tmp / "trainable.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    (tmp / STATE_FILE).write_text(json.dumps({"step": step, "samples_seen": extra["samples_seen"],
                                              "fingerprint": cfg.fingerprint(), **extra}, indent=1))
    final = root / f"step-{step}"
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    kept = sorted((p for p in root.glob("step-*")), key=lambda p: int(p.name.split("-")[1]))
    for old in kept[:-cfg.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model, optimizer, scheduler, cfg: TrainConfig) -> dict:
    from safetensors.torch import load_file

    state = json.loads((path / STATE_FILE).read_text())
    if state.get("fingerprint") != cfg.fingerprint():
        raise TrainError(f"--resume: {path} was trained with other settings; resume with the same options "
                         f"(see {path.parent.parent / 'train_config.json'}) or choose a new --out")
    weights = load_file(str(path / "trainable.safetensors"))
    params = _trainable(model)
    if set(weights) != set(params):
        raise TrainError(f"--resume: {path} holds other trainable weights than this model")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(weights[n].to(p.device, p.dtype))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    return state


class StopFlag:
    """Set by SIGINT / SIGTERM: the loop finishes its step, checkpoints and returns. A second Ctrl-C
    interrupts at once (the last checkpoint is whole either way)."""

    def __init__(self):
        self.set = False
        self._old = {}

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.set and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def train_loop(backbone: Backbone, pairs: PairSet, cfg: TrainConfig, out: Path, accelerator, resume: bool = False,
               should_stop: Callable[[int], bool] | None = None, show_bar: bool = True) -> TrainResult:
    """Eq. 12 on ``pairs`` for ``cfg.steps`` optimizer steps; returns when done or asked to stop
    (``should_stop(step)``, a signal), with a checkpoint of the last finished step either way."""
    from tqdm import tqdm

    cfg.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sides = cfg.sides()
    device = accelerator.device
    main = accelerator.is_main_process
    files = RunFiles(out, cfg.steps, main)
    world = accelerator.num_processes
    rank = accelerator.process_index
    # the reference: the frozen base, before any adapter or update exists
    ref = None
    if cfg.reference == "precomputed":
        if main:
            bar = tqdm(total=len(pairs), desc="reference log-probs", unit="pair", disable=not show_bar)
            def progress(d, t):  # part of preparing the pairs, for the job runner
                bar.update(d - bar.n)
                files.progress(d, "pairs", total=t)
            reference_logps(backbone.model, backbone, pairs, sides, device, progress=progress)
            bar.close()
        accelerator.wait_for_everyone()
        ref = json.loads(ref_logps_path(pairs, backbone, sides).read_text())
    model = prepare_model(backbone, cfg)
    params = list(_trainable(model).values())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    # the scheduler is not handed to accelerate: it would step once per process per step
    model, optimizer = accelerator.prepare(model, optimizer)
    start, elapsed = 0, 0.0
    if resume:
        ck = latest_checkpoint(out)
        if ck is not None:
            state = load_checkpoint(ck, accelerator.unwrap_model(model), optimizer.optimizer, scheduler, cfg)
            start = state["step"]
            elapsed = state.get("seconds", 0.0)
            files.truncate_log(start)
            if main:
                print(f"resumed from {ck} (step {start} of {cfg.steps})", flush=True)
    elif main and (out / "train_log.jsonl").exists():
        (out / "train_log.jsonl").unlink()
    n = len(pairs)
    per_micro = cfg.batch * world
    t0 = time.perf_counter() - elapsed  # "seconds" in the log counts on across a resume
    bar = tqdm(total=cfg.steps, initial=start, desc=f"{cfg.objective}", unit="step", disable=not (main and show_bar))
    stopped = False
    step = start
    with StopFlag() as flag:
        files.progress(start, "train")
        for step in range(start, cfg.steps):
            rows = []
            for m in range(cfg.grad_accum):
                g0 = (step * cfg.grad_accum + m) * per_micro
                idx = sample_indices(n, cfg.seed, g0 + rank * cfg.batch, cfg.batch)
                batch = [pairs.pairs[i] for i in idx]
                imgs = [pairs.image(p, sides[0]) for p in batch] + [pairs.image(p, sides[1]) for p in batch]
                qs = [p["question"] for p in batch] * 2
                ans = [p["chosen"] for p in batch] + [p["rejected"] for p in batch]
                # one forward over chosen and rejected rows: DDP sees one forward per backward
                sync = accelerator.no_sync(model) if m < cfg.grad_accum - 1 else contextlib.nullcontext()
                with sync, accelerator.autocast():
                    lp, ntok = answer_logps(model, backbone, imgs, qs, ans, device)
                    pc, pr = lp[:len(batch)], lp[len(batch):]
                    if ref is not None:
                        rc = torch.tensor([ref[p["id"]][0] for p in batch], device=device)
                        rr = torch.tensor([ref[p["id"]][1] for p in batch], device=device)
                    else:
                        rc, rr = live_reference(model, accelerator, backbone, imgs, qs, ans, len(batch), device)
                    res = dpo_loss(pc, pr, rc, rr, cfg.beta)
                    loss = res.loss
                    sft = -(pc / ntok[:len(batch)].clamp_min(1)).mean()
                    if cfg.sft_weight:
                        loss = loss + cfg.sft_weight * sft
                    accelerator.backward(loss / cfg.grad_accum)
                rows.append(torch.stack([res.losses, res.margins, res.accuracies, res.chosen_rewards,
                                         res.rejected_rewards, sft.detach().expand(len(batch))], 1))
            if cfg.max_grad_norm:
                accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            stats = accelerator.gather(torch.cat(rows).detach().float()).mean(0).tolist()
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                files.log({"step": done, "loss": round(stats[0], 6), "margin": round(stats[1], 6),
                           "accuracy": round(stats[2], 4), "lr": lr, "seconds": round(time.perf_counter() - t0, 2),
                           "chosen_reward": round(stats[3], 6), "rejected_reward": round(stats[4], 6),
                           "sft": round(stats[5], 6)})
            files.progress(done, "train")
            bar.update(1)
            bar.set_postfix(loss=f"{stats[0]:.4f}", acc=f"{stats[2]:.2f}")
            want_stop = flag.set or (should_stop is not None and should_stop(done))
            t = torch.tensor([1.0 if want_stop else 0.0], device=device)
            want_stop = bool(accelerator.reduce(t, "max").item()) if world > 1 else want_stop
            if done % cfg.save_every == 0 or done == cfg.steps or want_stop:
                if main:
                    save_checkpoint(out, done, accelerator.unwrap_model(model), optimizer.optimizer, scheduler, cfg,
                                    {"samples_seen": done * cfg.grad_accum * per_micro, "processes": world,
                                     "seconds": round(time.perf_counter() - t0, 2)})
                accelerator.wait_for_everyone()
            if want_stop and done < cfg.steps:
                stopped = True
                files.progress(done, "stopped")
                break
    bar.close()
    steps_done = step + 1 if cfg.steps > start else start
    return TrainResult(out=out, steps_done=steps_done, stopped=stopped, model=accelerator.unwrap_model(model))


def live_reference(model, accelerator, backbone, imgs, qs, ans, b, device):
    """log π_ref with the adapters disabled (LoRA): the same weights, the frozen base."""
    inner = accelerator.unwrap_model(model)
    if not hasattr(inner, "disable_adapter"):
        raise TrainError("--reference live needs LoRA (full tuning uses the precomputed reference)")
    with torch.no_grad(), inner.disable_adapter():
        lp, _ = answer_logps(inner, backbone, imgs, qs, ans, device)
    return lp[:b], lp[b:]


# --- saving and the curves ----------------------------------------------------------------------------

def save_model(model, backbone: Backbone, out: Path, cfg: TrainConfig, half: bool, target: Path | None = None) -> Path:
    """``target`` (default ``out/model``): the tuned model with the LoRA adapters merged (``out/adapter``
    keeps the adapter alone), loadable with :func:`adapt.backbones.load_backbone`; fp16 for the
    embedded model as :func:`adapt.world.train.save` stores it."""
    target = Path(target) if target is not None else out / "model"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if cfg.lora:
        model.save_pretrained(str(out / "adapter"))
        model = model.merge_and_unload()
    model.eval()
    if half:
        from ..world.train import save

        save(model, backbone.processor, str(tmp), dtype=torch.float16)
    else:
        model.save_pretrained(str(tmp))
        backbone.processor.save_pretrained(str(tmp))
    model.generation_config.save_pretrained(str(tmp))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def plot_curves(log_path: Path, png: Path, title: str = "") -> None:
    """Loss, reward margin and accuracy per step (a running mean over 10 steps drawn on top)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(x) for x in log_path.read_text().splitlines() if x.strip()]
    if not rows:
        return
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, key in zip(axes, ("loss", "margin", "accuracy")):
        y = np.array([r[key] for r in rows], dtype=float)
        ax.plot(steps, y, lw=0.7, alpha=0.45)
        k = min(10, len(y))
        ax.plot(steps[k - 1:], np.convolve(y, np.ones(k) / k, mode="valid"), lw=1.6)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
