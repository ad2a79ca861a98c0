"""``python -m adapt train {vag-dpo|dpo} --out DIR ...``: build the pairs, train, save, (score).

Runs as one process or under ``accelerate launch`` (every process runs this; the main one builds the
pairs and writes the files). User errors raise :class:`adapt.train.config.TrainError`, which the
top-level CLI prints as one line with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..argtypes import float_range, int_range, non_negative_int, out_dir, positive_int, threads
from ..config import ENHANCE_MODES
from .config import DEFAULT_TARGETS, TrainConfig, TrainError
from .world_pairs import WorldPairSpec

DEFAULTS = TrainConfig()


def add_parser(sub, parser_class=None) -> argparse.ArgumentParser:
    """The ``train`` subcommand's parser."""
    kw = {"parser_class": parser_class} if parser_class else {}
    t = sub.add_parser("train", help="preference tuning: VAG-DPO (paper Eq. 12) or plain DPO", **kw)
    t.add_argument("objective", choices=["vag-dpo", "dpo"],
                   help="vag-dpo: chosen on the anchor-guided image, rejected on the noise image; dpo: original both")
    t.add_argument("--out", required=True, type=out_dir, help="run folder (progress.json, train_log.jsonl, checkpoints/, model/)")
    t.add_argument("--backbone", default="embedded", help="'embedded', a local model directory or a hub id")
    t.add_argument("--data", default="world", help="world | rlaif-v:PATH (parquet) | rlhf-v:PATH (json)")
    t.add_argument("--images", default=None, help="folder that relative image paths in --data are read from")
    t.add_argument("--limit", type=positive_int, default=None, help="first N records of --data")
    t.add_argument("--pairs", default=None, type=out_dir,
                   help="built pair set to reuse or build: a new or empty folder, or one holding pairs (default DIR/pairs)")
    t.add_argument("--world-scenes", type=positive_int, default=1500, help="--data world: training scenes to draw pairs from")
    t.add_argument("--world-seed", type=non_negative_int, default=500,
                   help="--data world: train-split stream (never validation/test)")
    t.add_argument("--steps", type=positive_int, default=DEFAULTS.steps)
    t.add_argument("--lr", type=float_range(0.0, 1.0, lo_open=True), default=DEFAULTS.lr)
    t.add_argument("--beta", type=float_range(0.0, 100.0, lo_open=True), default=DEFAULTS.beta,
                   help="Eq. 12's β (paper: 0.1)")
    t.add_argument("--batch", type=int_range(1, 4096), default=DEFAULTS.batch, help="pairs per process per micro-step")
    t.add_argument("--grad-accum", type=int_range(1, 4096), default=DEFAULTS.grad_accum)
    t.add_argument("--warmup-steps", type=non_negative_int, default=DEFAULTS.warmup_steps)
    t.add_argument("--seed", type=int_range(0, 2**32 - 1), default=DEFAULTS.seed)
    mode = t.add_mutually_exclusive_group()
    mode.add_argument("--lora", dest="lora", action="store_true", default=True, help="LoRA adapters (default)")
    mode.add_argument("--full", dest="lora", action="store_false", help="full tuning of projector + decoder")
    t.add_argument("--lora-r", type=int_range(1, 4096), default=DEFAULTS.lora_r)
    t.add_argument("--lora-alpha", type=int_range(1, 65536), default=DEFAULTS.lora_alpha)
    t.add_argument("--lora-dropout", type=float_range(0.0, 0.99), default=DEFAULTS.lora_dropout)
    t.add_argument("--target-modules", default=DEFAULT_TARGETS, help="regex of the modules LoRA adapts")
    t.add_argument("--sft-weight", type=float_range(0.0, 100.0), default=DEFAULTS.sft_weight,
                   help="per-token SFT term on the chosen answer (a departure from Eq. 12; 0: off)")
    t.add_argument("--noise-step", type=int_range(0, 999), default=DEFAULTS.noise_step,
                   help="v_l's forward-noise step (paper: 500)")
    t.add_argument("--chosen-image", choices=["original", "enhanced", "noise"], default=None,
                   help="override the chosen side's image (ablation)")
    t.add_argument("--rejected-image", choices=["original", "enhanced", "noise"], default=None,
                   help="override the rejected side's image (ablation)")
    t.add_argument("--enhance-mode", choices=list(ENHANCE_MODES), default=DEFAULTS.enhance_mode,
                   help="how the anchor-guided image v_w fades low-anchor regions: paper (toward white) or, keeping "
                        "hue, background / blur / luminance")
    t.add_argument("--world-yesno", type=float_range(0.0, 1.0), default=WorldPairSpec.yesno,
                   help="--data world: share of scenes given a pair of yes/no existence questions")
    t.add_argument("--world-omitted", type=float_range(0.0, 1.0), default=WorldPairSpec.omitted,
                   help="--data world: share of scenes given an 'omitted' pair (the exact description against "
                        "it without one present object: what keeps recall)")
    t.add_argument("--reference", choices=["precomputed", "live"], default=DEFAULTS.reference,
                   help="log π_ref computed once with the pairs, or live with the adapters disabled")
    t.add_argument("--save-every", type=positive_int, default=DEFAULTS.save_every, help="checkpoint every N steps")
    t.add_argument("--log-every", type=positive_int, default=DEFAULTS.log_every)
    t.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default=DEFAULTS.mixed_precision)
    t.add_argument("--gradient-checkpointing", action="store_true")
    t.add_argument("--eval-scenes", type=non_negative_int, default=DEFAULTS.eval_scenes,
                   help="after training, score the model on N world validation scenes of seed 1 (0: skip)")
    t.add_argument("--model-out", default=None, type=out_dir,
                   help="where the final model goes: a new or empty folder, or a model this command wrote (default DIR/model)")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint in DIR")
    t.add_argument("--device", default=None, help="cpu, cuda … (default: accelerate's choice)")
    t.add_argument("--threads", type=threads, default=None, help="torch CPU threads (default: 1 for the embedded model)")
    t.add_argument("--cache-dir", default=None, help="bias-map cache for the anchors (default $ADAPT_CACHE)")
    t.add_argument("--no-bar", action="store_true", help="no progress bars (logs only)")
    return t


def config_from_args(args) -> TrainConfig:
    return TrainConfig(objective=args.objective, beta=args.beta, noise_step=args.noise_step,
                       chosen_image=args.chosen_image, rejected_image=args.rejected_image,
                       enhance_mode=args.enhance_mode, lr=args.lr,
                       steps=args.steps, batch=args.batch, grad_accum=args.grad_accum,
                       warmup_steps=args.warmup_steps, seed=args.seed, lora=args.lora, lora_r=args.lora_r,
                       lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout, target_modules=args.target_modules,
                       sft_weight=args.sft_weight, reference=args.reference, log_every=args.log_every,
                       save_every=args.save_every, mixed_precision=args.mixed_precision,
                       gradient_checkpointing=args.gradient_checkpointing, eval_scenes=args.eval_scenes).validate()


def _bar(desc: str, disable: bool):
    from tqdm import tqdm

    return tqdm(desc=desc, unit="item", file=sys.stderr, disable=disable)


def build_pair_set(backbone, args, cfg: TrainConfig, pairs_dir: Path, files, show_bar: bool):
    """The pairs of ``--data`` (built here, or read again when already built)."""
    from ..anchor import BiasCache
    from ..config import AdaptConfig
    from .data import load_public
    from .pairs import ListSource, RawSource, build_pairs

    cache = BiasCache(args.cache_dir) if args.cache_dir else BiasCache()
    if args.data == "world":
        from .world_pairs import greedy_descriptions, world_records, world_scenes

        spec = WorldPairSpec(scenes=args.world_scenes, seed=args.world_seed, yesno=args.world_yesno,
                             omitted=args.world_omitted)
        try:
            scenes = world_scenes(spec)
        except ValueError as exc:
            raise TrainError(str(exc)) from None
        pairs_dir.mkdir(parents=True, exist_ok=True)
        desc_path = pairs_dir / "world_descriptions.json"
        texts = json.loads(desc_path.read_text()) if desc_path.exists() else []
        if len(texts) < len(scenes):
            bar = _bar("greedy descriptions", not show_bar)
            done = len(texts)

            def prog(d, t):
                bar.total = len(scenes)
                bar.update(done + d - bar.n)
                files.progress(done + d, "pairs", total=2 * len(scenes))
            texts += greedy_descriptions(backbone, scenes[done:], spec, progress=prog)
            bar.close()
            desc_path.write_text(json.dumps(texts))
        source = ListSource(world_records(scenes, texts[:len(scenes)], spec))
        shares = [f"{k}={getattr(spec, k):g}" for k in ("yesno", "omitted")
                  if getattr(spec, k) != getattr(WorldPairSpec, k)]
        data = ":".join([f"world:{spec.scenes}:{spec.seed}"] + shares)
        offset, total = len(scenes), len(scenes) + len(source)
    else:
        raw = load_public(args.data, args.limit, args.images)
        source, data = RawSource(raw), args.data + (f"[:{args.limit}]" if args.limit else "")
        offset, total = 0, len(raw)
    bar = _bar("pairs", not show_bar)

    def progress(d, t):
        bar.total = t
        bar.update(d - bar.n)
        files.progress(offset + d, "pairs", total=total)
    adapt_cfg = AdaptConfig().replace(**{"enhance.mode": cfg.enhance_mode})
    pairs = build_pairs(backbone, source, pairs_dir, data, noise_step=cfg.noise_step, adapt_cfg=adapt_cfg, cache=cache,
                        progress=progress)
    bar.close()
    return pairs


def run(args) -> int:
    """The ``train`` subcommand."""
    import torch
    from accelerate import Accelerator

    from ..backbones import EMBEDDED, load_backbone, resolve
    from ..threads import SMALL_MODEL_PARAMS, use_threads
    from .pairs import load_pairs
    from .trainer import RunFiles, latest_checkpoint, plot_curves, save_model, train_loop

    cfg = config_from_args(args)
    out = Path(args.out)
    if not args.resume and latest_checkpoint(out) is not None:
        raise TrainError(f"{out} already holds a training run; pass --resume to continue it or choose a new --out")
    if args.data != "world":
        from .data import parse_data_spec

        parse_data_spec(args.data)
    _own_folder(args.pairs, "meta.json", "--pairs", "a built pair set")
    _own_folder(args.model_out, "config.json", "--model-out", "a model")
    if args.model_out and Path(args.model_out).expanduser().resolve() == Path(resolve(args.backbone)).resolve():
        raise TrainError(f"--model-out {args.model_out} is the model being tuned; give another folder")
    # without cpu=True accelerate runs each CPU process of a multi-process launch alone (no process group)
    cpu = args.device == "cpu" or (args.device is None and not torch.cuda.is_available())
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=cpu)
    main = accelerator.is_main_process
    show_bar = main and not args.no_bar
    out.mkdir(parents=True, exist_ok=True)
    files = RunFiles(out, cfg.steps, main)
    device = args.device if args.device not in (None, "cpu") else str(accelerator.device)
    backbone = load_backbone(args.backbone, device=device)
    threads = use_threads(backbone, args.threads)
    torch.set_num_threads(threads)
    if main:
        (out / "train_config.json").write_text(json.dumps({**cfg.to_dict(), "backbone": args.backbone,
                                                           "data": args.data, "processes": accelerator.num_processes,
                                                           "command": "python -m adapt train " + " ".join(sys.argv[2:])
                                                           if sys.argv[1:2] == ["train"] else ""}, indent=1))
    t0 = time.perf_counter()
    pairs_dir = Path(args.pairs) if args.pairs else out / "pairs"
    files.progress(0, "pairs", total=1)
    if main:
        pairs = build_pair_set(backbone, args, cfg, pairs_dir, files, show_bar)
    accelerator.wait_for_everyone()
    if not main:
        pairs = load_pairs(pairs_dir)
    t_pairs = time.perf_counter() - t0
    if main:
        print(f"pairs: {len(pairs)} ({', '.join(f'{k} {v}' for k, v in sorted(pairs.counts().items()))}); "
              f"skipped {len(pairs.skipped)}", file=sys.stderr, flush=True)
        for s in pairs.skipped[:20]:
            print(f"skipped record {s['index']}: {s['reason']}", file=sys.stderr)
    t1 = time.perf_counter()
    result = train_loop(backbone, pairs, cfg, out, accelerator, resume=args.resume, show_bar=show_bar)
    t_train = time.perf_counter() - t1
    if result.stopped:
        if main:
            print(f"stopped at step {result.steps_done} of {cfg.steps}; the checkpoint is in {out / 'checkpoints'}; "
                  f"--resume continues", file=sys.stderr)
        return 130
    summary: dict = {}
    if main:
        # small models are stored in fp16 as the embedded one is; real checkpoints keep their dtype
        small = sum(p.numel() for p in result.model.parameters()) < SMALL_MODEL_PARAMS
        target = save_model(result.model, backbone, out, cfg, half=args.backbone == EMBEDDED or small,
                            target=Path(args.model_out) if args.model_out else None)
        plot_curves(out / "train_log.jsonl", out / "training_curves.png",
                    f"{cfg.objective} on {args.data}: lr {cfg.lr}, β {cfg.beta}, {cfg.steps} steps")
        log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines() if x.strip()]
        last = log[-10:]
        summary = {"objective": cfg.objective, "sides": list(cfg.sides()), "steps": cfg.steps,
                   "pairs": len(pairs), "pair_kinds": pairs.counts(), "skipped": len(pairs.skipped),
                   "processes": accelerator.num_processes, "model": str(target),
                   "seconds_pairs": round(t_pairs, 1), "seconds_train": round(t_train, 1),
                   "loss_first10": _mean(log[:10], "loss"), "loss_last10": _mean(last, "loss"),
                   "margin_last10": _mean(last, "margin"), "accuracy_last10": _mean(last, "accuracy"),
                   "config": cfg.to_dict()}
        if cfg.eval_scenes:
            summary["eval"] = evaluate(target, out, cfg, files)
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        command = "python -m adapt train " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["train"] else ""
        (target / "train_report.json").write_text(json.dumps({"command": command, "base": args.backbone,
                                                              "data": args.data, **summary}, indent=1))
        files.progress(cfg.steps, "done")
        print(f"wrote {target} (loss {summary['loss_first10']:.4f} → {summary['loss_last10']:.4f}, accuracy "
              f"{summary['accuracy_last10']:.2f}); {out / 'summary.json'}, {out / 'training_curves.png'}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


def _own_folder(path: str | None, marker: str, flag: str, what: str) -> None:
    """A folder this command writes into must be new, empty, or already hold ``what`` (its ``marker``
    file): a folder of other files is never filled with hundreds of MB of ours."""
    if path is None:
        return
    p = Path(path).expanduser()
    if p.is_dir() and not (p / marker).exists() and any(p.iterdir()):
        raise TrainError(f"{flag} {path} holds other files and not {what} ({marker}); give a new or empty folder")


def _mean(rows, key):
    return round(sum(r[key] for r in rows) / len(rows), 6) if rows else None


def evaluate(model_dir: Path, out: Path, cfg: TrainConfig, files) -> dict:
    """Greedy CHAIR and POPE of the tuned model on ``eval_scenes`` world validation scenes (seed 1)."""
    from ..backbones import load_backbone
    from ..eval.world_bench import WorldRun, make_methods, run_world

    files.progress(0, "eval", total=cfg.eval_scenes)
    bb = load_backbone(str(model_dir))
    run = WorldRun(split="validation", seeds=[1], limit=cfg.eval_scenes, out=out / "eval")
    # the run owns out/eval: a model retrained since its last score is scored again, not read back
    s = run_world(bb, make_methods(["greedy"], None, None), run,
                  progress=lambda d, t, m: files.progress(d, "eval", total=t), redo_changed=True)["greedy"]
    return {k: s.get(k) for k in ("chair_s", "chair_i", "hallucinated_mentions", "mentions", "recall",
                                  "pope_random_acc", "pope_adversarial_acc", "n")}
