"""Validation sweep of ASI's τ, α and monitored layers: hallucination vs overhead (paper Sec. 4.2).

Runs on the world's *validation* split only (never on test), descriptions only. Writes
``sweep.csv``, ``sweep.json`` and ``sweep.png`` (CHAIR_i against the time ratio over greedy,
the Pareto front marked). Every configuration is a resumable world run in its own folder.
"""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

from ..anchor import BiasCache
from ..backbones import Backbone
from ..config import AdaptConfig
from .world_bench import WorldRun, adapt_tf_method, greedy_method, run_world

FIELDS = ["method", "k", "layers", "tau", "alpha", "chair_i", "chair_s", "recall", "trap_chair_i", "nontrap_chair_i",
          "partner_rate", "seconds_per_item", "time_ratio", "interventions_per_item", "n"]


def pareto(rows: list[dict]) -> list[dict]:
    """Rows not dominated in (lower chair_i, lower time_ratio)."""
    return [r for r in rows if not any(
        o is not r and o["chair_i"] <= r["chair_i"] and o["time_ratio"] <= r["time_ratio"]
        and (o["chair_i"] < r["chair_i"] or o["time_ratio"] < r["time_ratio"]) for o in rows)]


def recommend(rows: list[dict], max_recall_drop: float = 0.02) -> dict | None:
    """The rule the defaults were chosen by: the lowest CHAIR_i among ADAPT-TF settings that lower
    greedy's and whose recall is at most ``max_recall_drop`` below greedy's (the project's recall
    budget); None when no setting does both."""
    greedy = next(r for r in rows if r["method"] == "greedy")
    ok = [r for r in rows if r["method"] != "greedy" and r["chair_i"] < greedy["chair_i"]
          and r["recall"] >= greedy["recall"] - max_recall_drop]
    return min(ok, key=lambda r: r["chair_i"]) if ok else None


def run_sweep(backbone: Backbone, out: Path, limit: int, taus: list[float], alphas: list[float],
              layer_specs: list[str], cache: BiasCache | None = None, base: AdaptConfig | None = None,
              ks: list[int] | None = None) -> list[dict]:
    """ADAPT-TF for every (K, layers, τ, α) against greedy on the validation split (``base``: the rest)."""
    base = base or AdaptConfig()
    ks = ks or [base.anchor.k]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    greedy = run_world(backbone, [greedy_method(base)],
                       WorldRun(split="validation", limit=limit, pope=False, out=out / "greedy"))["greedy"]
    rows = [_row("greedy", None, "-", None, None, greedy, greedy)]
    for k, layers, tau, alpha in itertools.product(ks, layer_specs, taus, alphas):
        cfg = base.replace(**{"anchor.k": k, "asi.layers": layers, "asi.tau": tau, "asi.alpha": alpha})
        name = f"layers={layers.replace(':', '')}_tau={tau}_alpha={alpha}"
        if k != AdaptConfig().anchor.k:
            name = f"k={k}_" + name
        summary = run_world(backbone, [adapt_tf_method(cfg, cache)],
                            WorldRun(split="validation", limit=limit, pope=False, out=out / name))["adapt-tf"]
        rows.append(_row("adapt-tf", k, layers, tau, alpha, summary, greedy, out / name / "items-adapt-tf.jsonl"))
        runs.append(name)
        print(f"{name}: chair_i {summary['chair_i']:.4f} recall {summary['recall']:.4f} "
              f"time x{rows[-1]['time_ratio']:.2f}", flush=True)
    with (out / "sweep.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    best = recommend(rows)
    (out / "sweep.json").write_text(json.dumps({"limit": limit, "split": "validation", "rows": rows,
                                                "pareto": pareto(rows), "recommended": best}, indent=1))
    plot(rows, out / "sweep.png")
    if best is not None:
        print(f"recommended (lowest CHAIR_i below greedy's, within 2 recall points of it): K {best['k']}, "
              f"layers {best['layers']}, τ {best['tau']}, α {best['alpha']}: chair_i {best['chair_i']:.4f} "
              f"recall {best['recall']:.4f}")
    else:
        print("recommended: none (no setting lowers greedy's CHAIR_i within 2 recall points of it)")
    return rows


def _row(method, k, layers, tau, alpha, s, greedy, items_path=None) -> dict:
    interventions = None
    if items_path is not None and Path(items_path).exists():
        lines = [json.loads(l) for l in Path(items_path).read_text().splitlines() if l.strip()]
        interventions = sum(l["info"].get("interventions", 0) for l in lines) / max(len(lines), 1)
    return {"method": method, "k": k, "layers": layers, "tau": tau, "alpha": alpha, "chair_i": s["chair_i"],
            "chair_s": s["chair_s"], "recall": s["recall"], "trap_chair_i": s.get("trap_chair_i"),
            "nontrap_chair_i": s.get("nontrap_chair_i"), "partner_rate": s.get("partner_rate"),
            "seconds_per_item": s["seconds_per_item"],
            "time_ratio": s["seconds_per_item"] / greedy["seconds_per_item"],
            "interventions_per_item": interventions, "n": s["n"]}


def _label(r: dict) -> str:
    if r["method"] == "greedy":
        return "greedy"
    label = f"K{r.get('k')} {r['layers']} τ{r['tau']} α{r['alpha']}" if r["tau"] is not None else f"K{r.get('k')} ASI off"
    if r.get("enhance"):
        label += " +enhanced image"
    if r.get("debias") is False:
        label += " no debiasing"
    return label


def plot(rows: list[dict], path: Path) -> None:
    """CHAIR_i against the time ratio (Pareto front in red) and against recall."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), dpi=120)
    front = {id(r) for r in pareto(rows)}
    for r in rows:
        colour = "black" if r["method"] == "greedy" else ("tab:red" if id(r) in front else "tab:blue")
        label = _label(r)
        for ax, x in zip(axes, (r["time_ratio"], r["recall"])):
            ax.scatter(x, r["chair_i"], c=colour, s=30)
            ax.annotate(label, (x, r["chair_i"]), fontsize=6, xytext=(3, 2), textcoords="offset points")
    axes[0].set_xlabel("time per item / greedy")
    axes[0].set_title("hallucination vs overhead (red: Pareto front)")
    axes[1].set_xlabel("object recall")
    axes[1].set_title("hallucination vs recall")
    greedy = next((r for r in rows if r["method"] == "greedy"), None)
    if greedy is not None:
        axes[1].axvline(greedy["recall"] - 0.02, color="grey", ls=":", lw=1)
        axes[1].annotate("greedy recall − 2 pts", (greedy["recall"] - 0.02, axes[1].get_ylim()[1]), fontsize=7,
                         ha="right", va="top", color="grey")
    for ax in axes:
        ax.set_ylabel("CHAIR_i (validation)")
        ax.grid(alpha=0.3)
    fig.suptitle("ASI settings on the world's validation split")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
