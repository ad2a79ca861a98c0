"""Example scenes shipped in ``assets/examples/``: trap scenes of the synthetic world where the
embedded model's greedy decoding names the absent partner, picked by :data:`RULE` (not by how
ADAPT-TF does on them), each with a question preset and what each run gets wrong.

``presets.json`` lists them with their ground truth; the app finds the ground truth of an image
by its pixels, so an example downloaded and uploaded again is still recognised.

Regenerate (needs the embedded model)::

    python -m app.examples --count 6
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from adapt.paths import asset

from .scenes import SceneRegistry, image_key, scene_meta, scene_objects

EXAMPLES_DIR = asset("examples")
PRESETS = EXAMPLES_DIR / "presets.json"


def load_presets(path: Path = PRESETS) -> list[dict]:
    """The shipped presets whose image exists ([] when there are none or the file is unreadable)."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return []
    out = []
    for e in doc.get("examples", []):
        img = Path(path).parent / str(e.get("file", ""))
        if img.is_file() and e.get("question"):
            out.append({**e, "path": str(img)})
    return out


def register_presets(registry: SceneRegistry, presets: list[dict]) -> None:
    for e in presets:
        if e.get("sha1") and e.get("objects") is not None:
            registry.add_key(e["sha1"], {k: e[k] for k in ("objects", "scene_objects", "scene_seed", "split", "is_trap")
                                         if k in e}
                             | {"source": "adapt.world", "example": e["file"]})


RULE = ("the first {count} trap scenes of the {split} split (world seed {seed}, in scan order) on which greedy "
        "decoding names the scene's absent partner, whatever ADAPT-TF does on them")


def outcome(greedy: dict, steered: dict) -> dict:
    """What ADAPT-TF does on an example, against the ground truth (``answer_errors`` of each run)."""
    n = lambda e: sum(len(v) for v in e.values())  # noqa: E731
    if n(steered) == 0:
        verdict = "fixed"
    elif n(steered) > n(greedy):
        verdict = "worse"
    elif steered["objects"]:
        verdict = "not fixed"
    else:
        verdict = "both wrong"  # no absent object left, but colours or places wrong
    return {"verdict": verdict, "greedy_errors": greedy, "adapt_tf_errors": steered}


LABEL_CHARS = 60  # Gradio cuts an example's label after this many characters
LABEL_LEGEND = ("Each label: the absent object greedy decoding names and what ADAPT-TF does with it (drops it, "
                "keeps it, or both add it), then the wrong colours and places, greedy → ADAPT-TF.")


def outcome_label(e: dict) -> str:
    """What happens on a shipped example, from its recorded errors, the absent objects apart from the
    wrong colours and places (:data:`LABEL_LEGEND`): ``trap_01: ADAPT-TF drops diamond · places 1→1``."""
    outcome = e.get("outcome") if isinstance(e.get("outcome"), dict) else {}
    name = Path(str(e.get("file") or "example")).stem
    runs = []
    for key in ("greedy_errors", "adapt_tf_errors"):
        errs = outcome.get(key) if isinstance(outcome.get(key), dict) else {}
        runs.append({k: [str(x) for x in errs.get(k) or []] for k in ("objects", "colour", "position")})
    greedy, steered = runs
    dropped = [o for o in greedy["objects"] if o not in steered["objects"]]
    kept = [o for o in greedy["objects"] if o in steered["objects"]]
    new = [o for o in steered["objects"] if o not in greedy["objects"]]
    parts = []
    if dropped:
        parts.append(f"ADAPT-TF drops {', '.join(dropped)}" + (f", keeps {', '.join(kept)}" if kept else ""))
    elif kept:
        parts.append(f"both add {', '.join(kept)}")
    if new:
        parts.append(f"ADAPT-TF adds {', '.join(new)}")
    parts = parts or ["no absent object named"]
    counts = {kind: (len(greedy[kind]), len(steered[kind])) for kind in ("colour", "position")}
    wrong = [f"{word} {g}→{a}" for (kind, word) in (("colour", "colours"), ("position", "places"))
             for g, a in [counts[kind]] if g or a]
    label = f"{name}: " + " · ".join(parts + wrong)
    if len(label) > LABEL_CHARS and len(wrong) > 1:  # one count for both kinds rather than a cut label
        g, a = (sum(c[i] for c in counts.values()) for i in (0, 1))
        label = f"{name}: " + " · ".join(parts + [f"colours+places {g}→{a}"])
    return label


def generate(count: int = 6, split: str = "test", seed: int = 7, scan: int = 200, out: Path = EXAMPLES_DIR,
             question: str | None = None, model: str = "embedded") -> list[dict]:
    """Pick examples by :data:`RULE` (not by how well ADAPT-TF does), record what each run gets
    wrong, write their PNGs and ``presets.json``."""
    from adapt.backbones import load_backbone
    from adapt.world.datasets import make_split
    from adapt.world.language import DEFAULT_DESCRIBE_PROMPT

    from .analysis import analyse
    from .knobs import Knobs

    question = question or DEFAULT_DESCRIBE_PROMPT
    bb = load_backbone(model)
    knobs = Knobs.defaults()
    picked = []
    t0 = time.time()
    for s in (s for s in make_split(split, scan, seed=seed) if s.is_trap):
        img = s.image()
        trace = analyse(bb, img, question, knobs, meta=scene_meta(s))
        errors = trace.meta["errors"]
        if not set(errors["unsteered"]["objects"]) & set(s.absent_partners):
            continue
        picked.append((s, img, trace, outcome(errors["unsteered"], errors["steered"])))
        print(f"scene {s.seed}: {picked[-1][3]['verdict']}", file=sys.stderr)
        if len(picked) >= count:
            break
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("trap_*.png"):
        old.unlink()
    entries = []
    for n, (s, img, trace, result) in enumerate(picked, start=1):
        name = f"trap_{n:02d}.png"
        img.save(out / name)
        hal = trace.meta["hallucinated"]
        entries.append({
            "file": name, "question": question, "objects": list(s.categories), "scene_objects": scene_objects(s),
            "absent_partners": s.absent_partners, "scene_seed": s.seed, "split": s.split, "is_trap": True,
            "sha1": image_key(img), "greedy": trace.unsteered.text,
            "adapt_tf": trace.steered.text if trace.steered else "", "hallucinated": hal, "outcome": result,
        })
    counts = {v: sum(e["outcome"]["verdict"] == v for e in entries) for v in ("fixed", "not fixed", "both wrong", "worse")}
    (out / "presets.json").write_text(json.dumps({
        "about": "Example trap scenes of adapt.world (generated by `python -m app.examples`); chosen by the rule, "
                 "each with what greedy decoding and ADAPT-TF get wrong against the ground truth.",
        "rule": RULE.format(count=count, split=split, seed=seed), "outcomes": counts,
        "model": model, "split": split, "seed": seed, "examples": entries}, indent=1))
    print(f"{len(entries)} examples in {out} ({time.time() - t0:.0f} s): {counts}", file=sys.stderr)
    return entries


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m app.examples", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=6)
    ap.add_argument("--split", default="test", choices=["validation", "test"])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--scan", type=int, default=200, help="scenes to scan (half are traps)")
    ap.add_argument("--question", default=None)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--out", default=str(EXAMPLES_DIR))
    args = ap.parse_args(argv)
    generate(args.count, args.split, args.seed, args.scan, out=Path(args.out), question=args.question,
             model=args.model)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
