"""Validation sweep of ASI: operator × trigger × strength × τ × layers, plus always-on rows.

Runs on the world's *validation* split only (never on test), descriptions only (128 new tokens),
on several world seeds at once (``seeds`` × ``per_seed`` scenes; ≥ 1 000 for a decision). Every
setting is a resumable world run in its own folder, so the sweep can be split over processes
(``shard``) and collected afterwards. The selection rule is :func:`select`, written before the
sweep ran:

    the lowest CHAIR_i among ADAPT settings (operators that use the anchor's direction) whose
    recall is within 2 points of greedy's and whose paired-bootstrap 95 % interval of the CHAIR_i
    change against greedy lies below zero.

Settings without the anchor's direction (``image-boost``, ``mass-aware`` with α = 0, PAI) are
PAI-like: they are selected by the same rule but reported apart and never called ADAPT-TF.
Writes ``sweep.csv``, ``sweep.json`` and ``sweep.png`` (the CHAIR_i–recall frontier of each operator).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..anchor import BiasCache
from ..backbones import Backbone
from ..config import AdaptConfig
from ..methods import AdaptTF, get_method
from ..steering import OPERATOR_INFO
from .metrics import chair_i_change
from .rundir import RUN_FILE, RunDirError, differences, recorded_config
from .world_bench import WorldRun, load_items, run_world, summarise_items

FIELDS = ["name", "method", "operator", "trigger", "tau", "mass_tau", "alpha", "gamma", "layers", "uses_anchor",
          "chair_i", "chair_s", "recall", "hallucinated_mentions", "mentions", "change", "ci_low", "ci_high",
          "fire_rate", "tokens_per_item", "seconds_per_item", "time_ratio", "n"]
MAX_RECALL_DROP = 0.02


@dataclass
class Setting:
    """One sweep row: a method name and its dotted config overrides."""

    name: str
    method: str = "adapt-tf"
    overrides: dict = field(default_factory=dict)

    def uses_anchor(self) -> bool:
        if self.method != "adapt-tf":
            return False
        op = self.overrides.get("asi.operator", "logprior")
        return OPERATOR_INFO[op][2] and (op not in ("logprior", "logprior-image", "mass-aware")
                                         or self.overrides.get("asi.alpha", 0.25) > 0)


def _name(over: dict) -> str:
    short = {"asi.operator": "", "asi.trigger": "trig", "asi.tau": "tau", "asi.mass_tau": "mtau", "asi.alpha": "a",
             "asi.gamma": "g", "asi.layers": "L", "asi.boost": "c", "asi.mode": "", "asi.ref_skip_step0": "skip0"}
    parts = []
    for k, v in over.items():
        v = str(v).replace(":", "").replace(",", "-")
        parts.append(f"{short.get(k, k)}{v}" if short.get(k, k) else v)
    return "_".join(parts)


def default_grid() -> list[Setting]:
    """The grid the defaults were chosen on (written before the sweep ran).

    Strengths: α 0.25 / 0.5 (0.25 / 1.0 for mass-kept), (α, γ) (0.25, 0.5), (0.25, 1), (0.1, 1),
    (0, 1) for mass-aware; triggers: relative AMC at τ 0.6 and 0.8, the mass ratio at 0.8, 0.9 and 0.95, AMC+mass, always; layers all and top:2. The authors'
    modes run at their own constants; image-boost and PAI are the no-direction references."""
    grid: list[Setting] = []
    triggers = [{"asi.trigger": "amc", "asi.tau": 0.6}, {"asi.trigger": "amc", "asi.tau": 0.8},
                {"asi.trigger": "mass", "asi.mass_tau": 0.8}, {"asi.trigger": "mass", "asi.mass_tau": 0.9},
                {"asi.trigger": "mass", "asi.mass_tau": 0.95},
                {"asi.trigger": "amc+mass", "asi.tau": 0.8, "asi.mass_tau": 0.95}, {"asi.trigger": "always"}]
    strengths = {
        "logprior": [{"asi.alpha": 0.25}, {"asi.alpha": 0.5}],
        "logprior-image": [{"asi.alpha": 0.25}, {"asi.alpha": 1.0}],
        "mass-aware": [{"asi.alpha": 0.25, "asi.gamma": 0.5}, {"asi.alpha": 0.25, "asi.gamma": 1.0},
                       {"asi.alpha": 0.1, "asi.gamma": 1.0}, {"asi.alpha": 0.0, "asi.gamma": 1.0}],
        "hhi": [{}],
        "quality": [{}],
        "image-boost": [{"asi.boost": 0.5}, {"asi.boost": 1.0}],
    }
    for op, opts in strengths.items():
        for strength in opts:
            for trig in triggers:
                if op in ("hhi", "quality", "image-boost") and trig["asi.trigger"] not in ("mass", "always"):
                    continue  # self-gated (hhi) or direction-free: the AMC rows add nothing to read
                for layers in ("all", "top:2"):
                    over = {"asi.operator": op, **trig, **strength, "asi.layers": layers}
                    grid.append(Setting(_name(over), "adapt-tf", over))
    for op in ("hhi", "quality"):  # the authors' code as a whole: their fusion with their modes
        for layers in ("all", "top:2"):
            over = {"anchor.fusion": "authors", "asi.operator": op, "asi.trigger": "always", "asi.layers": layers}
            grid.append(Setting("authors_" + _name(over).replace("anchor.fusionauthors_", ""), "adapt-tf", over))
    grid.append(Setting("pai", "pai", {}))
    return grid


def stage2_grid() -> list[Setting]:
    """The refinement written after stage 1 (:func:`default_grid`) showed ``mass-aware`` as the only
    ADAPT reading whose interval lies below zero, and its recall cost growing with the number of
    steered layers: γ, α and the layer set between top-2 and all, stronger anchor directions with the
    mass restored on every layer, and lower mass thresholds (fewer firings). Same validation scenes,
    same rule."""
    grid = []
    for trig in ({"asi.trigger": "mass", "asi.mass_tau": 0.8}, {"asi.trigger": "always"}):
        for gamma in (0.25, 0.35, 0.5):
            for layers in ("top:3", "top:4", "from:2", "from:3", "all"):
                if gamma == 0.5 and layers == "all":
                    continue  # in stage 1
                over = {"asi.operator": "mass-aware", **trig, "asi.alpha": 0.25, "asi.gamma": gamma, "asi.layers": layers}
                grid.append(Setting(_name(over), "adapt-tf", over))
    for layers in ("top:3", "top:4", "from:2", "from:3"):
        over = {"asi.operator": "mass-aware", "asi.trigger": "mass", "asi.mass_tau": 0.8, "asi.alpha": 0.1,
                "asi.gamma": 0.5, "asi.layers": layers}
        grid.append(Setting(_name(over), "adapt-tf", over))
    for alpha in (0.5, 1.0):  # a stronger direction: does the anchor buy back the recall the mass costs?
        for gamma in (0.35, 0.5):
            over = {"asi.operator": "mass-aware", "asi.trigger": "mass", "asi.mass_tau": 0.8, "asi.alpha": alpha,
                    "asi.gamma": gamma, "asi.layers": "all"}
            grid.append(Setting(_name(over), "adapt-tf", over))
    for mtau in (0.6, 0.7):
        for layers in ("top:4", "from:2", "all"):
            over = {"asi.operator": "mass-aware", "asi.trigger": "mass", "asi.mass_tau": mtau, "asi.alpha": 0.25,
                    "asi.gamma": 0.5, "asi.layers": layers}
            grid.append(Setting(_name(over), "adapt-tf", over))
    return grid


def stage3_grid() -> list[Setting]:
    """Written after stage 2 showed that the gain comes from the first layers (``from:2`` and the
    top-λ layers, which sit in the middle, change little; ``all`` does nearly everything): the
    mass-aware operator on the first layers only, with the same strengths. Same scenes, same rule."""
    grid = []
    for layers in ("0", "0,1", "0,1,2", "1"):
        for alpha, gamma in ((0.25, 0.5), (0.25, 1.0), (0.5, 0.5), (0.5, 1.0), (1.0, 1.0), (0.0, 1.0)):
            over = {"asi.operator": "mass-aware", "asi.trigger": "mass", "asi.mass_tau": 0.8, "asi.alpha": alpha,
                    "asi.gamma": gamma, "asi.layers": layers}
            grid.append(Setting(_name(over), "adapt-tf", over))
    return grid


def stage4_grid() -> list[Setting]:
    """Written after stage 3 showed layer 0 alone as the best place (and, there, the anchor's direction
    adding to the mass it restores): overshooting the anchor-phase mass (γ > 1), always on, and a lower
    mass threshold (fewer firings). Same scenes, same rule; the last look at validation."""
    grid = []
    for trig in ({"asi.trigger": "mass", "asi.mass_tau": 0.8}, {"asi.trigger": "always"}):
        for alpha in (0.5, 1.0):
            for gamma in (1.5, 2.0):
                over = {"asi.operator": "mass-aware", **trig, "asi.alpha": alpha, "asi.gamma": gamma, "asi.layers": "0"}
                grid.append(Setting(_name(over), "adapt-tf", over))
    for alpha in (0.5, 1.0):
        over = {"asi.operator": "mass-aware", "asi.trigger": "mass", "asi.mass_tau": 0.6, "asi.alpha": alpha,
                "asi.gamma": 1.0, "asi.layers": "0"}
        grid.append(Setting(_name(over), "adapt-tf", over))
    return grid


def stage5_grid() -> list[Setting]:
    """The anchor's own free choices at the picked ASI setting: the fusion temperature T, the
    model-intrinsic H*(q), the literal Eq. 7 bias map (noise λ) and the authors' fusion."""
    pick = {"asi.operator": "mass-aware", "asi.trigger": "mass", "asi.mass_tau": 0.8, "asi.alpha": 0.5,
            "asi.gamma": 1.5, "asi.layers": "0"}
    grid = []
    for extra in ({"anchor.temperature": 0.05}, {"anchor.temperature": 0.3}, {"anchor.temperature": 1.0},
                  {"anchor.target_entropy": "model"}, {"anchor.bias_lambda": "noise"}, {"anchor.fusion": "authors"},
                  {"anchor.debias": False}):
        over = {**pick, **extra}
        (key, value), = extra.items()
        grid.append(Setting(_name(pick) + f"_{key.split('.')[1]}-{value}", "adapt-tf", over))
    return grid


GRIDS = {"stage1": default_grid, "stage2": stage2_grid, "stage3": stage3_grid, "stage4": stage4_grid, "stage5": stage5_grid}


def _config_for(base: AdaptConfig, s: Setting) -> AdaptConfig:
    return base.replace(**s.overrides) if s.overrides else base


def run_settings(backbone: Backbone, out: Path, settings: list[Setting], seeds: list[int], per_seed: int,
                 cache: BiasCache | None = None, base: AdaptConfig | None = None, shard: tuple[int, int] = (0, 1),
                 split: str = "validation", batch_size: int = 32, overwrite: bool = False) -> None:
    """Runs greedy (shard 0) and this shard's settings; every run resumes where it stopped, a setting's
    folder holding another configuration is refused (:mod:`adapt.eval.rundir`) or, with ``overwrite``,
    redone."""
    base = base or AdaptConfig()
    out = Path(out)
    i, n = shard

    def run(name, method):
        run_world(backbone, [method], WorldRun(split=split, seeds=seeds, limit=per_seed, pope=False,
                                               out=out / name, batch_size=batch_size), overwrite=overwrite)

    if i == 0:
        run("greedy", get_method("greedy"))
    for j, s in enumerate(settings):
        if j % n != i:
            continue
        cfg = _config_for(base, s)
        method = AdaptTF(cfg, cache) if s.method == "adapt-tf" else get_method(s.method, cfg, cache)
        run(s.name, method)
        print(f"{s.name}: done", flush=True)


def collect(out: Path, settings: list[Setting], greedy_name: str = "greedy", expect: dict | None = None) -> list[dict]:
    """Rows of the sweep table from the runs on disk (paired with greedy on the same scenes).

    ``expect`` (e.g. ``{"split": …, "seeds": …, "per_seed": …}``): every run folder must record these
    values and the backbone greedy's folder records; a folder that differs is refused
    (:class:`adapt.eval.rundir.RunDirError`), never mixed into the table."""
    out = Path(out)
    g_config = _check_setting(out / greedy_name, expect, None)
    g_items = load_items(out / greedy_name / f"items-{greedy_name}.jsonl")
    greedy = summarise_items(g_items)
    by_seed = {it["seed"]: it for it in g_items}
    rows = [_row(Setting(greedy_name, "greedy"), greedy, greedy, None)]
    for s in settings:
        path = out / s.name / f"items-{s.method}.jsonl"
        if not path.exists():
            continue
        _check_setting(out / s.name, expect, None if g_config is None else g_config.get("backbone"))
        items = load_items(path)
        if not items:  # started, nothing written yet
            continue
        pairs = [(by_seed[it["seed"]], it) for it in items if it["seed"] in by_seed]
        change = chair_i_change([b["mentioned"] for b, _ in pairs], [it["mentioned"] for _, it in pairs],
                                [it["truth"] for _, it in pairs])
        rows.append(_row(s, summarise_items(items), greedy, change))
    return rows


def _check_setting(folder: Path, expect: dict | None, backbone: dict | None) -> dict | None:
    """The run configuration ``folder`` records, refused where it differs from ``expect`` / ``backbone``."""
    if expect is None and backbone is None:
        return None
    config = recorded_config(folder)
    if config is None:
        raise RunDirError(f"{folder} holds no {RUN_FILE}: its answers cannot be told to belong to this sweep; "
                          f"rerun the sweep with --overwrite")
    want = dict(expect or {}) | ({"backbone": backbone} if backbone is not None else {})
    diffs = differences({k: config.get(k) for k in want}, want)
    if diffs:
        raise RunDirError(f"{folder} was run with other options ({'; '.join(diffs[:4])}); rerun the sweep with "
                          f"those options, or with --overwrite to redo it")
    return config


def _row(s: Setting, summary: dict, greedy: dict, change: dict | None) -> dict:
    o = s.overrides
    return {"name": s.name, "method": s.method, "operator": o.get("asi.operator"), "trigger": o.get("asi.trigger"),
            "tau": o.get("asi.tau"), "mass_tau": o.get("asi.mass_tau"), "alpha": o.get("asi.alpha"),
            "gamma": o.get("asi.gamma"), "layers": o.get("asi.layers"), "uses_anchor": s.uses_anchor(),
            "chair_i": summary["chair_i"], "chair_s": summary["chair_s"], "recall": summary["recall"],
            "hallucinated_mentions": summary["hallucinated_mentions"], "mentions": summary["mentions"],
            "change": None if change is None else change["change"],
            "ci_low": None if change is None else change["ci_low"],
            "ci_high": None if change is None else change["ci_high"],
            "fire_rate": summary.get("fire_rate"), "tokens_per_item": summary.get("tokens_per_item"),
            "seconds_per_item": summary["seconds_per_item"],
            "time_ratio": summary["seconds_per_item"] / greedy["seconds_per_item"], "n": summary["n"]}


def select(rows: list[dict], uses_anchor: bool = True, max_recall_drop: float = MAX_RECALL_DROP) -> dict | None:
    """The selection rule: the lowest CHAIR_i among settings (``uses_anchor``: ADAPT readings; else the
    PAI-like ones) whose recall is at most ``max_recall_drop`` below greedy's and whose paired-bootstrap
    95 % interval of the CHAIR_i change against greedy lies below zero. None when no setting passes."""
    greedy = next(r for r in rows if r["method"] == "greedy")
    ok = [r for r in rows if r["method"] != "greedy" and bool(r["uses_anchor"]) == uses_anchor
          and r["recall"] >= greedy["recall"] - max_recall_drop
          and r["ci_high"] is not None and r["ci_high"] < 0]
    return min(ok, key=lambda r: r["chair_i"]) if ok else None


def frontier(rows: list[dict]) -> list[dict]:
    """Rows not dominated in (lower CHAIR_i, higher recall)."""
    return [r for r in rows if not any(
        o is not r and o["chair_i"] <= r["chair_i"] and o["recall"] >= r["recall"]
        and (o["chair_i"] < r["chair_i"] or o["recall"] > r["recall"]) for o in rows)]


def pareto(rows: list[dict]) -> list[dict]:
    """Rows not dominated in (lower chair_i, lower time_ratio)."""
    return [r for r in rows if not any(
        o is not r and o["chair_i"] <= r["chair_i"] and o["time_ratio"] <= r["time_ratio"]
        and (o["chair_i"] < r["chair_i"] or o["time_ratio"] < r["time_ratio"]) for o in rows)]


def write(out: Path, rows: list[dict], meta: dict) -> dict:
    out = Path(out)
    with (out / "sweep.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    result = {**meta, "rule": " ".join(select.__doc__.split()), "rows": rows, "selected": select(rows), "selected_pai_like": select(rows, uses_anchor=False)}
    (out / "sweep.json").write_text(json.dumps(result, indent=1))
    plot(rows, out / "sweep.png")
    return result


def plot(rows: list[dict], path: Path) -> None:
    """CHAIR_i against recall: one colour per operator, each operator's frontier joined; greedy black."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6), dpi=120)
    greedy = next(r for r in rows if r["method"] == "greedy")
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r["method"] != "greedy":
            groups.setdefault(r["operator"] or r["method"], []).append(r)
    for op, rs in sorted(groups.items()):
        pts = ax.scatter([r["recall"] for r in rs], [r["chair_i"] for r in rs], s=18, alpha=0.6, label=op)
        front = sorted(frontier(rs), key=lambda r: r["recall"])
        ax.plot([r["recall"] for r in front], [r["chair_i"] for r in front], color=pts.get_facecolor()[0], lw=1.2)
    ax.scatter([greedy["recall"]], [greedy["chair_i"]], c="black", s=60, marker="*", label="greedy", zorder=5)
    ax.axvline(greedy["recall"] - MAX_RECALL_DROP, color="grey", ls=":", lw=1)
    ax.axhline(greedy["chair_i"], color="grey", ls=":", lw=1)
    best = select(rows)
    if best is not None:
        ax.scatter([best["recall"]], [best["chair_i"]], s=160, facecolors="none", edgecolors="red",
                   label="selected (ADAPT rule)")
    ax.set_xlabel("object recall (validation)")
    ax.set_ylabel("CHAIR_i (validation)")
    ax.set_title(f"ASI readings on {greedy['n']} validation scenes: frontier per operator\n"
                 "(dotted: greedy's CHAIR_i and greedy recall − 2 points)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
