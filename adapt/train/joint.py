"""ADAPT as a whole (paper Sec. 4: VAG-DPO's tuned model decoded with ADAPT-TF), chosen as a whole: every
(training recipe, decoding) combination of a validation sweep against the base model's greedy decoding
on the same scenes, and the picks of the rule in ``assets/results/whole/selection_rule.md``.

A sweep folder holds one folder per recipe (``R0`` the untuned model, without ``train_config.json``;
the others with the ``train_config.json`` of ``python -m adapt train``), each with one world-benchmark
run per decoding (``val-greedy``, ``val-tf``, …, any ``items-<method>.jsonl`` inside).

    python -m adapt.train.joint --sweep runs/whole --out assets/results/whole/joint
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..eval.metrics import chair_i_change, paired_mean_diff
from ..eval.world_bench import load_items, summarise_items

BASE_RECIPE = "R0"
RECALL_BUDGET = 0.02  # points of object recall below the base model's greedy recall
TIE = 0.001  # CHAIR_i within this of the lowest is a tie, broken by recall


@dataclass
class Combination:
    """One recipe decoded one way, scored against the base model's greedy decoding."""

    recipe: str
    decoding: str  # "greedy", "adapt-tf", "adapt-tf γ0.75", "adapt-tf:enhanced-blur", …
    objective: str  # "base", "dpo" or "vag-dpo"
    recipe_text: str
    chair_i: float
    chair_s: float
    hallucinated: int
    mentions: int
    recall: float
    change: float  # CHAIR_i change vs base greedy, paired bootstrap
    ci: tuple[float, float]
    recall_diff: float  # points (×100) vs base greedy, paired
    recall_ci: tuple[float, float]
    pope: dict = field(default_factory=dict)  # kind → accuracy, and the adversarial paired diff
    passes: bool = False

    @property
    def label(self) -> str:
        return f"{self.recipe} {self.decoding}"

    @property
    def steered(self) -> bool:
        return self.decoding.startswith("adapt-tf")


# the rows of the test table and the candidates the rule picks each from
SETS = {
    "ADAPT as a whole": lambda c: c.objective == "vag-dpo" and c.steered,
    "tuned model alone": lambda c: c.objective == "vag-dpo" and not c.steered,
    "DPO": lambda c: c.objective == "dpo" and not c.steered,
    "ADAPT-TF": lambda c: c.objective == "base" and c.steered,
}


def _decoding(run: Path, method: str) -> str:
    cfg = json.loads((run / "run.json").read_text()).get("config", {}).get("methods", {}).get(method) or {}
    gamma = cfg.get("asi", {}).get("gamma")
    if method == "adapt-tf" and gamma is not None and gamma != 1.5:
        return f"adapt-tf γ{gamma:g}"
    return method


def _recipe(folder: Path) -> tuple[str, str]:
    f = folder / "train_config.json"
    if not f.exists():
        return "base", "untuned"
    c = json.loads(f.read_text())
    obj = c["objective"]
    sides = (c.get("chosen_image") or ("enhanced" if obj == "vag-dpo" else "original"),
             c.get("rejected_image") or ("noise" if obj == "vag-dpo" else "original"))
    text = f"{'VAG-DPO' if obj == 'vag-dpo' else 'DPO'} {sides[0]}/{sides[1]}"
    if "enhanced" in sides and c.get("enhance_mode", "paper") != "paper":
        text += f" ({c['enhance_mode']} fade)"
    text += f", lr {c['lr']:g}, sft {c['sft_weight']:g}"
    shares = [p for p in str(c.get("data", "")).split(":") if "=" in p]
    if shares:
        text += ", " + ", ".join(shares)
    return obj, text


def _recall_units(it: dict) -> list[bool]:
    seen = set(it["mentioned"])
    return [t in seen for t in sorted(set(it["truth"]))]


def _pope_units(it: dict, kind: str) -> list[bool]:
    return [p["pred"] == p["label"] for p in it.get("pope", []) if p["kind"] == kind]


def combinations(sweep: Path) -> tuple[list[Combination], dict]:
    """Every (recipe, decoding) of ``sweep`` scored against ``R0``'s greedy run; and the base's figures."""
    base_items = load_items(sweep / BASE_RECIPE / "val-greedy" / "items-greedy.jsonl")
    base = {it["index"]: it for it in base_items}
    bsum = summarise_items(base_items)
    out = []
    for folder in sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "val-greedy").exists()):
        objective, text = _recipe(folder)
        for run in sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("val-")):
            for f in sorted(run.glob("items-*.jsonl")):
                method = f.name[len("items-"):-len(".jsonl")]
                its = [it for it in load_items(f) if it["index"] in base]
                if len(its) != len(base):
                    continue  # still running
                s = summarise_items(its)
                pairs = [(base[it["index"]], it) for it in its]
                c = chair_i_change([b["mentioned"] for b, _ in pairs], [it["mentioned"] for _, it in pairs],
                                   [it["truth"] for _, it in pairs])
                r = paired_mean_diff([_recall_units(b) for b, _ in pairs], [_recall_units(it) for _, it in pairs])
                pope = {}
                if any(it.get("pope") for it in its):
                    for kind in ("random", "popular", "adversarial"):
                        pope[kind] = float(np.mean([u for it in its for u in _pope_units(it, kind)]))
                    d = paired_mean_diff([_pope_units(b, "adversarial") for b, _ in pairs],
                                         [_pope_units(it, "adversarial") for _, it in pairs])
                    pope["adversarial_diff"] = [d["diff"], d["ci_low"], d["ci_high"]]
                out.append(Combination(folder.name, _decoding(run, method), objective, text, s["chair_i"], s["chair_s"],
                                       s["hallucinated_mentions"], s["mentions"], s["recall"], c["change"],
                                       (c["ci_low"], c["ci_high"]), 100 * r["diff"], (100 * r["ci_low"], 100 * r["ci_high"]),
                                       pope))
    for c in out:
        c.passes = c.recall >= bsum["recall"] - RECALL_BUDGET and c.ci[1] < 0
    return out, bsum


def pick(cands: list[Combination]) -> Combination | None:
    """The rule: among those that pass, the lowest CHAIR_i; a tie within 0.001 to the higher recall."""
    ok = [c for c in cands if c.passes]
    if not ok:
        return None
    best = min(c.chair_i for c in ok)
    return max((c for c in ok if c.chair_i <= best + TIE), key=lambda c: c.recall)


def frontier(cands: list[Combination]) -> list[Combination]:
    """The combinations no other beats on both CHAIR_i (lower) and recall (higher), by recall."""
    return sorted((c for c in cands if not any(o.chair_i < c.chair_i and o.recall > c.recall for o in cands)),
                  key=lambda c: -c.recall)


def _pct(x: float) -> str:
    return f"{x:+.0%}"


def markdown(combos: list[Combination], bsum: dict, picks: dict[str, Combination | None]) -> str:
    bar = bsum["recall"] - RECALL_BUDGET
    lines = [f"Base greedy (R0): CHAIR_i {bsum['chair_i']:.4f} ({bsum['hallucinated_mentions']} / {bsum['mentions']}), "
             f"recall {bsum['recall']:.3f}; the rule's recall bar {bar:.4f}.", "",
             "| recipe | decoding | CHAIR_i (hallucinated / mentions) | vs base greedy (95 % CI) | CHAIR_s | recall "
             "(points vs base, CI) | POPE r / p / a acc. | POPE adv. vs base (points, CI) | passes |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in combos:
        pope = (f"{c.pope['random']:.3f} / {c.pope['popular']:.3f} / {c.pope['adversarial']:.3f}" if c.pope else "–")
        d = c.pope.get("adversarial_diff")
        pd = f"{100 * d[0]:+.1f} ({100 * d[1]:+.1f} … {100 * d[2]:+.1f})" if d else "–"
        lines.append(f"| {c.recipe}: {c.recipe_text} | {c.decoding} | {c.chair_i:.4f} ({c.hallucinated} / {c.mentions}) | "
                     f"{_pct(c.change)} ({_pct(c.ci[0])} … {_pct(c.ci[1])}) | {c.chair_s:.3f} | {c.recall:.3f} "
                     f"({c.recall_diff:+.1f}, {c.recall_ci[0]:+.1f} … {c.recall_ci[1]:+.1f}) | {pope} | {pd} | "
                     f"{'**yes**' if c.passes else 'no'} |")
    unsteered = sorted({c.recipe for c in combos} - {c.recipe for c in combos if c.steered})
    if unsteered:
        lines += ["", f"Not decoded with ADAPT-TF (greedy recall more than 1 point under the bar: the rule's amendment): "
                      f"{', '.join(unsteered)}."]
    lines += ["", "**Picks of the rule** (lowest CHAIR_i among the combinations that pass):", ""]
    for row, c in picks.items():
        lines.append(f"- {row}: " + (f"**{c.label}** ({c.recipe_text}): CHAIR_i {c.chair_i:.4f} ({c.hallucinated} / "
                                      f"{c.mentions}), {_pct(c.change)} ({_pct(c.ci[0])} … {_pct(c.ci[1])}), recall "
                                      f"{c.recall:.3f}" if c else "none passes"))
    lines += ["", "**Frontier** (no other combination has both lower CHAIR_i and higher recall):", ""]
    lines += [f"- {c.label}: CHAIR_i {c.chair_i:.4f} ({_pct(c.change)}), recall {c.recall:.3f}" for c in frontier(combos)]
    return "\n".join(lines) + "\n"


def plot(combos: list[Combination], bsum: dict, picks: dict[str, Combination | None], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"base": "k", "dpo": "tab:red", "vag-dpo": "tab:blue"}
    fig, ax = plt.subplots(figsize=(7.2, 4.8))
    for c in combos:
        ax.scatter(c.recall, c.chair_i, c=colours[c.objective], marker="D" if c.steered else "o", s=26,
                   edgecolors="gold" if c in picks.values() else "none", linewidths=1.5)
        ax.annotate(f"{c.recipe}{'' if not c.steered else ' ' + c.decoding.replace('adapt-tf', 'tf')}",
                    (c.recall, c.chair_i), fontsize=6, xytext=(3, 2), textcoords="offset points")
    ax.axvline(bsum["recall"] - RECALL_BUDGET, ls="--", c="grey", lw=0.8, label="recall bar (base greedy − 2 points)")
    ax.axhline(0.6 * bsum["chair_i"], ls=":", c="tab:green", lw=0.8, label="−40 % CHAIR_i (the issue's goal)")
    for obj, col in colours.items():
        ax.scatter([], [], c=col, label={"base": "untuned", "dpo": "plain DPO", "vag-dpo": "VAG-DPO"}[obj])
    ax.scatter([], [], c="w", edgecolors="k", marker="o", label="greedy")
    ax.scatter([], [], c="w", edgecolors="k", marker="D", label="ADAPT-TF")
    ax.set_xlabel("object recall")
    ax.set_ylabel("CHAIR_i")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("recipe × decoding, validation seeds 1–4 (1 000 scenes); gold edge: the rule's picks", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", required=True, help="folder of recipe folders (R0 = the untuned model)")
    ap.add_argument("--out", required=True, help="path stem: writes .json, .md, .png")
    args = ap.parse_args(argv)
    sweep = Path(args.sweep)
    if not (sweep / BASE_RECIPE / "val-greedy" / "items-greedy.jsonl").exists():
        print(f"error: {sweep / BASE_RECIPE / 'val-greedy'} holds no greedy run of the base model", file=sys.stderr)
        return 2
    combos, bsum = combinations(sweep)
    picks = {row: pick([c for c in combos if keep(c)]) for row, keep in SETS.items()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(
        {"base_greedy": bsum, "recall_bar": bsum["recall"] - RECALL_BUDGET, "combinations": [asdict(c) for c in combos],
         "picks": {row: (c.label if c else None) for row, c in picks.items()}}, indent=1))
    out.with_suffix(".md").write_text(markdown(combos, bsum, picks))
    plot(combos, bsum, picks, out.with_suffix(".png"))
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
