"""The plot of a multi-method run (``summary.png``): each headline figure per method, with the
paired-bootstrap interval where the task gives one, and the cost of each method against greedy."""

from __future__ import annotations

from pathlib import Path

from .tables import COST_KEYS, baseline_of

MAX_PANELS = 6
SKIP = {"n", "answers", "mentions", "hallucinated_mentions", "judged", "unknown"}  # counts: in the tables


def _interval(summary: dict, method: str, key: str, base: str) -> tuple[float, float] | None:
    """The figure's 95 % interval in its own units, from the comparison the task computed."""
    s = summary[method]
    if key == "chair_i":  # a relative change → absolute CHAIR_i
        lo, hi = s.get(f"chair_i_change_vs_{base}_ci_low"), s.get(f"chair_i_change_vs_{base}_ci_high")
        b = summary[base].get("chair_i")
        return (b * (1 + lo), b * (1 + hi)) if None not in (lo, hi, b) else None
    if key.endswith("_acc"):
        diff = f"{key.removesuffix('_acc')}_acc_diff_vs_{base}"
        lo, hi, b = s.get(diff + "_ci_low"), s.get(diff + "_ci_high"), summary[base].get(key)
        return (b + lo, b + hi) if None not in (lo, hi, b) else None
    return None


def summary_plot(summary: dict, keys: tuple[str, ...], path: str | Path) -> Path | None:
    """Bars of the first :data:`MAX_PANELS` figures of ``keys`` (counts and cost left out) per method,
    plus seconds per answer relative to greedy when the run was timed. None when nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(summary)
    keys = [k for k in keys if k not in SKIP and k not in COST_KEYS
            and all(isinstance(summary[m].get(k), (int, float)) for m in methods)][:MAX_PANELS]
    timed = [m for m in methods if summary[m].get("seconds_per_answer")]
    panels = keys + (["cost"] if timed else [])
    if not methods or not panels:
        return None
    base = methods[0]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels) + 0.6, 3.2), squeeze=False)
    colors = plt.get_cmap("tab10")
    for ax, key in zip(axes[0], panels):
        if key == "cost":
            ref = baseline_of(timed)
            vals = [summary[m]["seconds_per_answer"] / summary[ref]["seconds_per_answer"] for m in timed]
            ax.bar(range(len(timed)), vals, color=[colors(methods.index(m) % 10) for m in timed])
            ax.axhline(1.0, color="grey", lw=0.8, ls="--")
            ax.set_xticks(range(len(timed)), timed, rotation=45, ha="right", fontsize=8)
            ax.set_title(f"seconds / answer (× {ref})", fontsize=9)
            continue
        vals = [summary[m][key] for m in methods]
        ax.bar(range(len(methods)), vals, color=[colors(i % 10) for i in range(len(methods))])
        for i, m in enumerate(methods[1:], 1):
            iv = _interval(summary, m, key, base)
            if iv is not None:
                ax.errorbar(i, vals[i], yerr=[[vals[i] - iv[0]], [iv[1] - vals[i]]], color="black", capsize=3)
        ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right", fontsize=8)
        ax.set_title(key, fontsize=9)
    fig.suptitle("error bars: paired-bootstrap 95 % interval against " + base, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
