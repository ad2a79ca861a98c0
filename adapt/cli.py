"""Command line: ``python -m adapt {run, export-anchors, eval, score, sweep, diagnose, models, train}``."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

from .argtypes import float_range, int_list, int_range, name_list, out_dir, positive_int, shard, threads
from .prompts import MAX_QUESTION_CHARS

WORLD_SEEDS = 1000  # adapt.world.datasets accepts world seeds 0 … WORLD_SEEDS − 1
DTYPES = ("auto", "float32", "bfloat16", "float16")
MAX_NEW_TOKENS = 2048  # adapt.config's bound on max_new_tokens
STRENGTH = float_range(0.0, 100.0)  # τ, α, mass τ, γ: ratios and log-prior weights (defaults ≤ 2)


class UsageError(ValueError):
    """A command line that cannot run as given (exit 2, one line)."""


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line: the usage block of these subcommands runs to a dozen
    lines and buries the message."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _world_seed(text: str) -> int:
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a world seed is a whole number 0 … {WORLD_SEEDS - 1}, got {text!r}") from None
    if not 0 <= seed < WORLD_SEEDS:
        raise argparse.ArgumentTypeError(f"a world seed is 0 … {WORLD_SEEDS - 1}, got {seed}")
    return seed


def _config_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("method (defaults of adapt/config.py unless given)")
    g.add_argument("--config", help="JSON file with AdaptConfig sections (anchor / asi / enhance)")
    g.add_argument("--k", type=int_range(1, MAX_NEW_TOKENS), help="anchor tokens K (at most --max-new-tokens)")
    g.add_argument("--tau", type=STRENGTH, help="AMC trigger τ (0 … 100)")
    g.add_argument("--alpha", type=STRENGTH, help="steering strength α (0 … 100)")
    g.add_argument("--layers", help="ASI layers: all | top:N | from:i | 0,3,5")
    g.add_argument("--operator", help="reading of Eq. 11: logprior | logprior-image | mass-aware | hhi | quality | "
                                      "image-boost")
    g.add_argument("--trigger", help="when ASI steers: amc | mass | amc+mass | always")
    g.add_argument("--mass-tau", type=STRENGTH, help="mass trigger: fire where M_t < mass_tau · M_ref (0 … 100)")
    g.add_argument("--gamma", type=STRENGTH, help="mass-aware: share of the image-mass drop given back (0 … 100)")
    g.add_argument("--second-pass", choices=["off", "short", "pointed", "all"],
                   help="steer again from step 0: short answers / also pointed (yes/no) questions / every answer")
    g.add_argument("--num-noise", type=int_range(0, 16), help="noise images M for the bias map (0 … 16)")
    g.add_argument("--max-new-tokens", type=int_range(1, MAX_NEW_TOKENS), help=f"answer length (1 … {MAX_NEW_TOKENS})")
    g.add_argument("--enhance", action=argparse.BooleanOptionalAction, default=None,
                   help="answer on the anchor-guided image (the paper's ADAPT-TF; off by default)")
    g.add_argument("--no-asi", action="store_true", help="no steering")
    g.add_argument("--cache-dir", help="bias-map cache (default $ADAPT_CACHE or ~/.cache/adapt)")


def _backbone_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", default="embedded", help="'embedded', a local model directory or a hub id; a family's "
                   "load options after '?', e.g. DIR?image_splitting=off (docs/families.md)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 …")
    p.add_argument("--dtype", default="auto", choices=DTYPES, help="auto | float32 | bfloat16 | float16")
    p.add_argument("--device-map", default=None, help="e.g. auto (needs accelerate)")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--threads", type=threads, default=None,
                   help="torch CPU threads (default: 1 for small models such as the embedded one, else torch's own)")


def build_config(args):
    from .config import AdaptConfig

    cfg = AdaptConfig()
    if getattr(args, "config", None):
        cfg = AdaptConfig.from_dict(_read_json_object(args.config))
    overrides = {"anchor.k": args.k, "asi.tau": args.tau, "asi.alpha": args.alpha, "asi.layers": args.layers,
                 "asi.operator": args.operator, "asi.trigger": args.trigger, "asi.mass_tau": args.mass_tau,
                 "asi.gamma": args.gamma, "asi.second_pass": args.second_pass,
                 "anchor.num_noise": args.num_noise, "max_new_tokens": args.max_new_tokens}
    if args.enhance is not None:
        overrides["enhance.enabled"] = args.enhance
    if args.no_asi:
        overrides["asi.enabled"] = False
    cfg = cfg.replace(**{k: v for k, v in overrides.items() if v is not None}).validate()
    infinite = [k for k, v in _leaves(cfg.to_dict()) if isinstance(v, float) and not math.isfinite(v)]
    if infinite:
        raise UsageError(f"{infinite[0]} must be a finite number")
    if cfg.asi.enabled and cfg.asi.second_pass == "off" and cfg.anchor.k >= cfg.max_new_tokens:
        raise UsageError(f"K = {cfg.anchor.k} anchor tokens take the whole answer of {cfg.max_new_tokens} "
                         f"(--max-new-tokens): ASI would never steer; give --k below {cfg.max_new_tokens}, "
                         f"or --second-pass short to steer such answers from their first token")
    return cfg


def _leaves(d: dict, prefix: str = ""):
    for k, v in d.items():
        yield from (_leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [(prefix + k, v)])


def _read_json_object(path: str) -> dict:
    from .config import ConfigError

    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {path}: cannot be read ({type(exc).__name__})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--config {path}: not valid JSON ({exc.msg}, line {exc.lineno} column {exc.colno})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"--config {path}: must hold a JSON object with the sections anchor / asi / enhance")
    return doc


def load(args):
    import torch

    from .backbones import BackboneError, load_backbone
    from .threads import use_threads

    dtype = args.dtype if args.dtype == "auto" else getattr(torch, args.dtype)
    try:
        backbone = load_backbone(args.backbone, dtype=dtype, device=args.device, device_map=args.device_map,
                                 trust_remote_code=args.trust_remote_code)
    except BackboneError:
        raise
    except json.JSONDecodeError as exc:
        raise BackboneError(f"could not load the model '{args.backbone}': a JSON file of it is malformed "
                            f"({exc.msg}, line {exc.lineno} column {exc.colno})") from None
    except Exception as exc:  # missing weights, an unknown device ...
        detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise BackboneError(f"could not load the model '{args.backbone}': {type(exc).__name__}"
                            + (f": {detail}" if detail else "")) from None
    use_threads(backbone, args.threads)
    return backbone


def _question(text: str, backbone=None) -> str:
    """The question checked (length) and, once the model is known, cleaned of its special tokens."""
    from .prompts import check_length, clean_question, find_special_tokens, unknown_words

    if backbone is None:
        return check_length(text)
    removed = find_special_tokens(text, backbone.processor)
    if removed:
        print(f"note: removed the model's special token(s) {', '.join(removed)} from the question", file=sys.stderr)
    text = clean_question(text, backbone.processor)
    unknown = unknown_words(text, backbone.processor)
    if unknown:  # a word-level tokenizer reads them as <unk>: the model answers without them
        print(f"note: the model does not know the word(s) {', '.join(unknown)}; it reads each as its unknown token",
              file=sys.stderr)
    return text


def _cache(args):
    from .anchor import BiasCache

    return BiasCache(args.cache_dir) if args.cache_dir else BiasCache()


def cmd_run(args) -> int:
    from .enhance import overlay, side_by_side
    from .images import load_image
    from .pipeline import analyse

    cfg = build_config(args)
    _question(args.question)
    image = load_image(args.image)
    backbone = load(args)
    trace = analyse(backbone, image, _question(args.question, backbone), cfg, bias_cache=_cache(args))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    trace.save(out / "trace.zip")
    if trace.enhanced_image is not None:
        trace.enhanced_image.save(out / "enhanced.png")
    side_by_side(image, overlay(image, trace.anchor), *( [trace.enhanced_image] if trace.enhanced_image else [])
                 ).save(out / "anchor_overlay.png")
    u, s = trace.unsteered, trace.steered
    layout = (f"grid {trace.grid[0]}x{trace.grid[1]}" if not trace.views else
              "views " + ", ".join(f"{v.name} {v.h}x{v.w}" for v in trace.layout))
    print(f"backbone: {backbone.name} ({backbone.family}), {layout}, "
          f"{backbone.num_layers} layers; bias map {'cached' if trace.bias_cache_hit else 'computed'}")
    print(f"unsteered: {u.text}")
    if s is not None:
        print(f"ADAPT-TF:  {s.text}")
        print(f"AMC: mean unsteered {u.amc.mean():.4f}, steered {s.amc.mean():.4f}; {_trigger_reading(trace, cfg)}; "
              f"ASI layers {trace.asi_layers}; "
              f"interventions {s.num_interventions} over {s.steered.shape[0]} steps × {len(trace.asi_layers)} layers")
    print(f"λ per layer: {np.array2string(trace.lam, precision=3)}; H*(q) = {trace.target_entropy:.2f}")
    print("timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in trace.timings.items()))
    print(f"wrote {out / 'trace.zip'}, {out / 'enhanced.png'}, {out / 'anchor_overlay.png'}")
    return 0


def _trigger_reading(trace, cfg) -> str:
    """What ASI's trigger compared, per layer. The trace's threshold is the AMC one (NaN under the mass
    trigger); the mass trigger's is mass_tau × the layer's anchor-phase image mass, taken from the same
    steps the policy took it from (the steered run's first K, or the unsteered run's on a second pass)."""
    from .steering import steering_weights
    from .steering.policy import references_from_maps, second_pass_applies

    a, k = cfg.asi, cfg.anchor.k
    if a.trigger == "always":
        return "trigger always (no threshold)"
    parts = []
    if a.trigger in ("amc", "amc+mass"):
        parts.append(f"AMC threshold per layer {np.array2string(trace.threshold, precision=4)}")
    if a.trigger in ("mass", "amc+mass"):
        second = second_pass_applies(a, k, trace.question, trace.unsteered.maps.shape[0])
        maps = trace.unsteered.maps if second else trace.steered.maps
        m_ref = references_from_maps(maps, steering_weights(trace.anchor).reshape(-1), k, a.ref_skip_step0).m_ref
        parts.append(f"image-mass threshold per layer {np.array2string(a.mass_tau * m_ref[:, 0].numpy(), precision=4)}"
                     f" ({a.mass_tau:g} × the anchor-phase mass)")
    return f"trigger {a.trigger}: " + "; ".join(parts)


def cmd_export(args) -> int:
    from .export.cli import cmd_export as run

    return run(args)


def cmd_eval(args) -> int:
    from .eval.task_cli import ProgressBar
    from .eval.world_bench import Cancelled, WorldRun, make_methods, run_world

    if args.task:
        return cmd_task(args)
    if args.benchmark != "world":
        raise UsageError(f"unknown benchmark '{args.benchmark}' (available: world)")
    cfg = build_config(args)
    backbone = load(args)
    methods = make_methods(args.method.split(","), cfg, _cache(args))
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else None
    run = WorldRun(split=args.split, seed=args.seed, limit=args.limit, pope=not args.no_pope, out=Path(args.out),
                   seeds=seeds, batch_size=args.batch_size,
                   **({"describe_tokens": args.max_new_tokens} if args.max_new_tokens else {}))
    bar = ProgressBar("world", "scene")
    try:
        summary = run_world(backbone, methods, run, progress=bar.update, overwrite=args.overwrite)
    except Cancelled as exc:
        print(str(exc), file=sys.stderr)
        return 130
    bar.close()
    from .eval.tables import print_tables
    from .eval.world_bench import TABLE_KEYS

    print_tables(summary, TABLE_KEYS)
    out = Path(args.out)
    print(f"wrote {out / 'summary.json'}, {out / 'table.md'}, {out / 'efficiency.md'}, {out / 'summary.csv'}")
    return 0


def cmd_task(args) -> int:
    """``eval --task``: a registered task through the resumable, shardable runner (adapt/eval/runner.py)."""
    from .eval.formats import DataError
    from .eval.task_cli import run_task_cli

    try:
        return run_task_cli(args, load, build_config, _cache)
    except DataError as exc:
        raise UsageError(str(exc)) from None


def cmd_score(args) -> int:
    """``score pope|chair|amber``: metrics of existing answer files (adapt/score.py)."""
    from .eval.formats import DataError
    from .score import run_score

    try:
        return run_score(args)
    except DataError as exc:
        raise UsageError(str(exc)) from None


def cmd_sweep(args) -> int:
    from .eval.sweep import GRIDS, collect, run_settings, write

    seeds = [int(x) for x in args.seeds.split(",")]
    unknown = [g for g in args.grid.split(",") if g not in GRIDS]
    if unknown:
        raise UsageError(f"unknown --grid {', '.join(unknown)} (available: {', '.join(GRIDS)})")
    settings = [s for name in args.grid.split(",") for s in GRIDS[name]()]
    if args.only:
        wanted = {x.strip() for x in args.only.split(",")}
        settings = [s for s in settings if s.name in wanted or s.method in wanted]
    i, n = args.shard
    out = Path(args.out)
    if not args.collect:
        backbone = load(args)
        run_settings(backbone, out, settings, seeds, args.per_seed, cache=_cache(args), base=build_config(args),
                     shard=(i, n), split=args.split, batch_size=args.batch_size, overwrite=args.overwrite)
    if args.collect or n == 1:
        rows = collect(out, settings, expect={"split": args.split, "seeds": seeds, "per_seed": args.per_seed})
        result = write(out, rows, {"split": args.split, "seeds": seeds, "per_seed": args.per_seed})
        for label, best in (("ADAPT reading", result["selected"]), ("PAI-like (no anchor direction)",
                                                                    result["selected_pai_like"])):
            if best is None:
                print(f"selected {label}: none passes the rule")
            else:
                print(f"selected {label}: {best['name']}: CHAIR_i {best['chair_i']:.4f} ({best['change']:+.1%}, "
                      f"CI {best['ci_low']:+.1%} … {best['ci_high']:+.1%}), recall {best['recall']:.4f}, "
                      f"fires on {best['fire_rate'] or 0:.0%} of monitored pairs")
        print(f"rule: {result['rule']}")
        print(f"wrote {out / 'sweep.json'}, {out / 'sweep.csv'}, {out / 'sweep.png'}")
    return 0


def cmd_diagnose(args) -> int:
    from .eval.diagnose import SIGNALS, run_diagnosis

    backbone = load(args)
    res = run_diagnosis(backbone, Path(args.out), split=args.split, limit=args.limit, seed=args.seed,
                        cfg=build_config(args), cache=_cache(args), overwrite=args.overwrite)
    print(f"{'object mentions':16s}{'n':>6s}" + "".join(f"{s:>13s}" for s in SIGNALS))
    for group in ("correct", "hallucinated", "absent_partner"):
        g = res[group]
        print(f"{group:16s}{g['n']:6d}" + "".join(f"{g[s]:13.4f}" if g[s] is not None else f"{'-':>13s}"
                                                 for s in SIGNALS))
    sep = res["separation"]
    print(f"{'AUC halluc.':22s}" + "".join(f"{sep[s]:13.3f}" if sep[s] is not None else f"{'-':>13s}" for s in SIGNALS))
    if res["anchor_first_density"] is not None:
        print(f"anchor density (share of W / share of grid): first-named object {res['anchor_first_density']:.2f}, "
              f"other objects {res['anchor_other_density']:.2f}")
    print(f"wrote {Path(args.out) / 'diagnosis.json'}")
    return 0


def cmd_train(args) -> int:
    """``train vag-dpo|dpo``: preference tuning (adapt/train/cli.py)."""
    from .train.cli import run
    from .train.config import TrainError

    try:
        return run(args)
    except TrainError as exc:
        raise UsageError(str(exc)) from None


def cmd_models(args) -> int:
    """``models``: every registered family from the catalog (adapt/backbones/catalog.py)."""
    from dataclasses import asdict

    from .backbones import CATALOG, EMBEDDED, FAMILIES

    # the registry decides what is listed; the catalog only describes (a test keeps the two in step)
    entries = [{"model_type": k, **asdict(CATALOG[k])} for k in FAMILIES]
    embedded = {"backbone": EMBEDDED, "model_type": "llava",
                "about": "the shipped small LLaVA-class model, trained and measured on the synthetic world"}
    if args.json:
        print(json.dumps({"families": entries, "embedded": embedded}, indent=2, ensure_ascii=False))
        return 0
    for e in entries:
        print(f"{e['model_type']}: {e['name']}")
        for label, value in (("classes", f"{e['model_class']} · {e['processor']}"),
                             ("layout", f"[{e['layout_kind']}] {e['layout']}"), ("capturable", e["capturable"]),
                             ("hub ids", ", ".join(e["hub_ids"])), ("untested", e["untested"])):
            print(f"  {label + ':':12s}{value}")
    print(f"{EMBEDDED}: {embedded['about']} (model type llava; --backbone {EMBEDDED}, the default)")
    print("load any of them with --backbone <local folder or hub id>[?option=on|off] (idefics3: image_splitting; "
          "gemma3: pan_and_scan); details: docs/families.md")
    return 0


OVERWRITE_HELP = ("redo the run when --out holds one of another configuration (without it: the same configuration "
                  "resumes, another is refused)")


def parser() -> argparse.ArgumentParser:
    # the installed command is `adapt`; from a checkout it is `python -m adapt`
    prog = "adapt" if Path(sys.argv[0]).name == "adapt" else "python -m adapt"
    p = _Parser(prog=prog, description="ADAPT: watch and steer an MLLM's "
                "text-to-image attention to reduce hallucination.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="analyse one image + question: both answers, AMC summary, trace")
    r.add_argument("--image", required=True)
    r.add_argument("--question", required=True, help=f"at most {MAX_QUESTION_CHARS} characters")
    r.add_argument("--out", required=True, type=out_dir, help="folder for trace.zip and the images")
    _backbone_args(r)
    _config_args(r)
    r.set_defaults(fn=cmd_run)

    e = sub.add_parser("export-anchors", help="anchor-guided images of a folder, JSONL or Hugging Face dataset, "
                                              "as a dataset")
    from .export.cli import add_arguments as add_export_arguments

    add_export_arguments(e)
    _backbone_args(e)
    _config_args(e)
    e.set_defaults(fn=cmd_export)

    v = sub.add_parser("eval", help="benchmarks (world: exact CHAIR and POPE on the synthetic world)")
    v.add_argument("--benchmark", default="world")
    v.add_argument("--split", default="test", choices=["validation", "test"])
    v.add_argument("--seed", type=_world_seed, default=None,
                   help=f"a fresh world, 0 … {WORLD_SEEDS - 1} (default: the standard split)")
    v.add_argument("--seeds", default=None, type=int_list(_world_seed),
                   help="several world seeds, comma-separated (--limit scenes of each)")
    v.add_argument("--limit", type=positive_int, default=None, help="first N scenes (of each seed) / items")
    v.add_argument("--batch-size", type=int_range(1, 4096), default=32, help="scenes answered together (1 … 4096)")
    from .methods import NAMES

    v.add_argument("--method", default="greedy", type=name_list(NAMES, "method"),
                   help="comma-separated registered methods (the first is what the others are compared with): "
                        + ", ".join(NAMES))
    v.add_argument("--no-pope", action="store_true", help="descriptions only")
    v.add_argument("--out", required=True, type=out_dir)
    v.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    _backbone_args(v)
    _config_args(v)
    from .eval.task_cli import add_task_args
    from .score import add_parser as add_score_parser

    add_task_args(v)
    v.set_defaults(fn=cmd_eval)

    add_score_parser(sub, cmd_score)

    s = sub.add_parser("sweep", help="validation sweep of ASI operators × triggers × strengths × layers")
    s.add_argument("--out", default="runs/sweep", type=out_dir)
    s.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    s.add_argument("--split", default="validation", choices=["validation", "test"])
    s.add_argument("--seeds", default="1,2,3,4", type=int_list(_world_seed), help="world seeds (comma-separated)")
    s.add_argument("--per-seed", type=positive_int, default=250, help="scenes per seed")
    s.add_argument("--shard", default=(0, 1), type=shard,
                   help="i/n: run every n-th setting from the i-th (processes side by side)")
    s.add_argument("--collect", action="store_true", help="only build the table from the runs on disk")
    s.add_argument("--only", default=None, help="comma-separated setting names (or methods) to run")
    s.add_argument("--grid", default="stage1", help="stage1 (operators x triggers x strengths x layers), stage2 "
                                                     "(the mass-aware refinement), or both: stage1,stage2")
    s.add_argument("--batch-size", type=int_range(1, 4096), default=32, help="scenes answered together (1 … 4096)")
    _backbone_args(s)
    _config_args(s)
    s.set_defaults(fn=cmd_sweep)

    d = sub.add_parser("diagnose", help="where attention goes at correct vs hallucinated object mentions (world)")
    d.add_argument("--out", default="runs/diagnose", type=out_dir)
    d.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    d.add_argument("--split", default="validation", choices=["validation", "test"])
    d.add_argument("--seed", type=_world_seed, default=None,
                   help=f"a fresh world, 0 … {WORLD_SEEDS - 1} (default: the standard split)")
    d.add_argument("--limit", type=positive_int, default=100, help="world scenes")
    _backbone_args(d)
    _config_args(d)
    d.set_defaults(fn=cmd_diagnose)

    m = sub.add_parser("models", help="the supported model families: classes, image layout, capturable layers, "
                                      "example hub ids, what is untested on real weights")
    m.add_argument("--json", action="store_true", help="one JSON document instead of text")
    m.set_defaults(fn=cmd_models)

    from .train.cli import add_parser as add_train_parser

    add_train_parser(sub).set_defaults(fn=cmd_train)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from .backbones import BackboneError
    from .config import ConfigError
    from .eval.formats import DataError
    from .export import ExportError
    from .images import ImageError
    from .prompts import QuestionError

    try:
        return args.fn(args) or 0
    except (BackboneError, ConfigError, DataError, ExportError, ImageError, QuestionError, UsageError,
            FileNotFoundError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished items are on disk and a rerun resumes", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not the user's doing: one line, the traceback on request
        if os.environ.get("ADAPT_TRACEBACK"):
            raise
        print(f"error: unexpected {type(exc).__name__}: {_one_line(exc)} (ADAPT_TRACEBACK=1 shows where)",
              file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 500 else text[:497] + "…"


if __name__ == "__main__":
    sys.exit(main())
