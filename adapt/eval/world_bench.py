"""The world benchmark: exact CHAIR and POPE on the synthetic scene world, per method, resumable.

Each method describes every scene and answers its POPE questions (random, popular,
adversarial). One JSONL line per scene per method is written as soon as it is done
(``items-<method>.jsonl``), so a run that stops can be resumed; ``summary.json`` is computed
from those lines alone.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..anchor import BiasCache
from ..backbones import Backbone
from ..config import AdaptConfig
from ..methods import Method, get_methods
from .metrics import chair, chair_i_change, paired_mean_diff, parse_yes_no, pope_metrics
from .rundir import backbone_identity, end_torn_line, open_run, record
from .tables import write_tables

POPE_KINDS = ("random", "popular", "adversarial")
# the results table's columns (paper Table 1's figures, then the world's own)
TABLE_KEYS = ("chair_s", "chair_i", "hallucinated_mentions", "mentions", "recall", "pope_random_acc",
              "pope_adversarial_acc", "pope_adversarial_precision", "fire_rate", "partner_rate", "n")
POPE_MAX_TOKENS = 8
SPLIT_SIZES = {"validation": 100, "test": 200}


class Cancelled(RuntimeError):
    """The run was asked to stop; everything finished so far is on disk."""


def make_methods(names: list[str], cfg: AdaptConfig, cache: BiasCache | None) -> list[Method]:
    """The registered methods (:mod:`adapt.methods`) named in ``names``."""
    return get_methods(names, cfg, cache)


@dataclass
class WorldRun:
    """Which scenes: ``limit`` scenes (default: the split's size) of each world seed in ``seeds``
    (``seed`` alone: one seed; neither: the standard split, seed 0)."""

    split: str = "test"
    seed: int | None = None
    limit: int | None = None
    pope: bool = True
    describe_tokens: int = 128
    out: Path = field(default_factory=lambda: Path("runs/world"))
    seeds: list[int] | None = None
    batch_size: int = 32

    def seed_list(self) -> list[int]:
        if self.seeds:
            return list(self.seeds)
        return [0 if self.seed is None else self.seed]

    def per_seed(self) -> int:
        return self.limit if self.limit is not None else SPLIT_SIZES.get(self.split, 100)


def scenes_of(run: WorldRun) -> list:
    from ..world import make_split

    return [s for seed in run.seed_list() for s in make_split(run.split, run.per_seed(), seed=seed)]


def _done_indices(path: Path) -> set[int]:
    done = set()
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                done.add(json.loads(line)["index"])
            except (json.JSONDecodeError, KeyError):
                continue  # a line torn by an interrupted write is redone
    return done


def evaluate_scenes(backbone: Backbone, method: Method, scenes: list, indices: list[int], describe_tokens: int,
                    pope: bool) -> list[dict]:
    """One item per scene: the description's mentions against the truth, and the POPE answers.
    The scenes are answered as one batch (descriptions, then every POPE question of every scene)."""
    from ..world import DEFAULT_DESCRIBE_PROMPT, read_object_spans

    images = [s.image() for s in scenes]
    t0 = time.perf_counter()
    answers = method.answer_batch(backbone, images, [DEFAULT_DESCRIBE_PROMPT] * len(scenes), describe_tokens)
    seconds = (time.perf_counter() - t0) / len(scenes)
    items = []
    for scene, index, ans in zip(scenes, indices, answers):
        text = ans.text
        spans = read_object_spans(text)
        truth = scene.categories
        items.append({
            "index": index, "seed": scene.seed, "is_trap": scene.is_trap, "truth": truth,
            "absent_partners": scene.absent_partners, "description": text, "mentioned": [c for c, _ in spans],
            "hallucinated": [c for c, _ in spans if c not in truth],
            # where in the text each mention sits (0 = start, 1 = end): do hallucinations come late?
            "mention_positions": [round(pos / max(len(text), 1), 4) for _, pos in spans],
            "info": ans.info, "pope": [], "seconds": round(seconds, 5),
        })
    if pope:
        asked = [(j, kind, q) for j, scene in enumerate(scenes) for kind in POPE_KINDS
                 for q in scene.pope_questions(kind)]
        t0 = time.perf_counter()
        replies = method.answer_batch(backbone, [images[j] for j, _, _ in asked], [q["question"] for _, _, q in asked],
                                      POPE_MAX_TOKENS)
        per_scene = (time.perf_counter() - t0) / len(scenes)
        for (j, kind, q), reply in zip(asked, replies):
            items[j]["pope"].append({"kind": kind, "category": q["category"], "label": q["label"],
                                     "answer": reply.text, "pred": parse_yes_no(reply.text),
                                     "is_partner": q.get("is_partner", False), "info": reply.info})
        for it in items:
            it["seconds_pope"] = round(per_scene, 5)
    return items


def world_config(backbone: Backbone, methods: list[Method], run: WorldRun) -> dict:
    """What decides a world run's answers (compared on a resume: :mod:`adapt.eval.rundir`)."""
    return {"benchmark": "world", "split": run.split, "seeds": run.seed_list(), "per_seed": run.per_seed(),
            "pope": run.pope, "describe_tokens": run.describe_tokens, "pope_tokens": POPE_MAX_TOKENS,
            "methods": {m.name: m.config_dict() for m in methods}, "backbone": backbone_identity(backbone)}


def run_world(backbone: Backbone, methods: list[Method], run: WorldRun,
              progress: Callable[[int, int, str], None] | None = None,
              should_stop: Callable[[], bool] | None = None, overwrite: bool = False,
              redo_changed: bool = False) -> dict:
    """Evaluate ``methods`` on the world scenes of ``run``, writing JSONL as it goes (a batch at a
    time: an interrupted run loses at most one batch and resumes); returns the summary.

    A folder holding a run of another configuration is refused (:class:`adapt.eval.rundir.RunDirError`),
    or started over with ``overwrite`` (always) / ``redo_changed`` (only when it differs)."""
    scenes = scenes_of(run)
    n = len(scenes)
    out = Path(run.out)
    config = world_config(backbone, methods, run)
    open_run(out, config, overwrite=overwrite, redo_changed=redo_changed)
    record(out, config, n=n, methods=[m.name for m in methods])
    total = n * len(methods)
    done_count = 0
    for method in methods:
        path = out / f"items-{method.name}.jsonl"
        done = _done_indices(path)
        todo = [i for i in range(n) if i not in done]
        done_count += n - len(todo)
        end_torn_line(path)
        with path.open("a") as f:
            for start in range(0, len(todo), max(1, run.batch_size)):
                if should_stop is not None and should_stop():
                    _write_progress(out, done_count, total, "cancelled")
                    raise Cancelled(f"stopped after {done_count}/{total} items; rerun to resume")
                batch = todo[start:start + run.batch_size]
                items = evaluate_scenes(backbone, method, [scenes[i] for i in batch], batch, run.describe_tokens,
                                        run.pope)
                for item in items:
                    f.write(json.dumps(item) + "\n")
                f.flush()
                done_count += len(batch)
                _write_progress(out, done_count, total, method.name)
                if progress is not None:
                    progress(done_count, total, method.name)
    summary = summarise(out, [m.name for m in methods], n)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    write_tables(out, summary, TABLE_KEYS)
    _write_progress(out, total, total, "done")
    return summary


def _write_progress(out: Path, done: int, total: int, stage: str) -> None:
    tmp = out / ".progress.json"
    tmp.write_text(json.dumps({"done": done, "total": total, "stage": stage}))
    tmp.replace(out / "progress.json")


def load_items(path: Path, n: int | None = None) -> list[dict]:
    items = {}
    for line in Path(path).read_text().splitlines():
        try:
            it = json.loads(line)
        except json.JSONDecodeError:
            continue
        if n is None or it["index"] < n:
            items[it["index"]] = it
    return [items[k] for k in sorted(items)]


def summarise_items(items: list[dict]) -> dict:
    """The benchmark's figures for one method from its per-scene items."""
    if not items:
        return {"n": 0}
    c = chair([it["mentioned"] for it in items], [it["truth"] for it in items])
    trap = [it for it in items if it["is_trap"]]
    clean = [it for it in items if not it["is_trap"]]
    s = {"chair_s": c["chair_s"], "chair_i": c["chair_i"], "recall": c["recall"],
         "hallucinated_mentions": int(sum(len(set(it["mentioned"]) - set(it["truth"])) for it in items)),
         "mentions": int(sum(len(set(it["mentioned"])) for it in items))}
    monitored = sum(it["info"].get("monitored", 0) for it in items)
    if monitored:
        s["fire_rate"] = sum(it["info"].get("fired", 0) for it in items) / monitored
    pope = [p for it in items for p in it["pope"]]
    for kind in POPE_KINDS:
        ps = [p for p in pope if p["kind"] == kind]
        if ps:
            m = pope_metrics([p["pred"] for p in ps], [p["label"] for p in ps])
            s[f"pope_{kind}_acc"] = m["acc"]
            if kind == "adversarial":
                s["pope_adversarial_precision"] = m["precision"]
                s["pope_adversarial_f1"] = m["f1"]
    if pope:
        s["yes_ratio"] = pope_metrics([p["pred"] for p in pope], [p["label"] for p in pope])["yes_ratio"]
    s["trap_chair_i"] = chair([it["mentioned"] for it in trap], [it["truth"] for it in trap])["chair_i"] if trap else None
    s["nontrap_chair_i"] = (chair([it["mentioned"] for it in clean], [it["truth"] for it in clean])["chair_i"]
                            if clean else None)
    # the prior trap itself: how often the absent partner is named, vs any other absent category
    if trap:
        s["partner_rate"] = float(np.mean([any(c in it["mentioned"] for c in it["absent_partners"]) for it in trap]))
    s["mean_words"] = float(np.mean([len(it["description"].split()) for it in items]))
    s["seconds_per_item"] = float(np.mean([it["seconds"] for it in items]))
    s["tokens_per_item"] = float(np.mean([it["info"].get("tokens", 0) for it in items]))
    # the tables' cost columns time the descriptions (paper Table 2b times answers of this kind)
    s.update(seconds_per_answer=s["seconds_per_item"], tokens_per_answer=s["tokens_per_item"], answers=len(items))
    s["n"] = len(items)
    return s


def summarise(out: Path, methods: list[str], n: int | None = None) -> dict:
    """Per method, the benchmark's figures; every method after the first also gets its CHAIR_i
    change against the first (``chair_i_change_vs_<first>`` with a paired-bootstrap 95 % interval,
    ``..._ci_low`` / ``..._ci_high``), computed on the scenes both runs have."""
    items = {m: load_items(Path(out) / f"items-{m}.jsonl", n) for m in methods
             if (Path(out) / f"items-{m}.jsonl").exists()}
    summary = {m: summarise_items(its) for m, its in items.items()}
    names = list(items)
    base = {it["index"]: it for it in items[names[0]]} if names else {}
    for m in names[1:]:
        pairs = [(base[it["index"]], it) for it in items[m] if it["index"] in base]
        if pairs:
            c = chair_i_change([b["mentioned"] for b, _ in pairs], [it["mentioned"] for _, it in pairs],
                               [it["truth"] for _, it in pairs])
            key = f"chair_i_change_vs_{names[0]}"
            summary[m].update({key: c["change"], key + "_ci_low": c["ci_low"], key + "_ci_high": c["ci_high"]})
            for kind in POPE_KINDS:  # accuracy difference, scenes resampled
                correct = [([p["pred"] == p["label"] for p in b["pope"] if p["kind"] == kind],
                            [p["pred"] == p["label"] for p in it["pope"] if p["kind"] == kind]) for b, it in pairs]
                if any(x for x, _ in correct):
                    d = paired_mean_diff([x for x, _ in correct], [y for _, y in correct])
                    key = f"pope_{kind}_acc_diff_vs_{names[0]}"
                    summary[m].update({key: d["diff"], key + "_ci_low": d["ci_low"], key + "_ci_high": d["ci_high"]})
    return summary
