"""Splits, POPE-style question sets, grounding items and training examples of the world."""
from __future__ import annotations

import random
from collections import Counter
from functools import lru_cache

from .language import (
    DESCRIBE_PROMPTS,
    pope_question,
    attribute_qa,
    existence_qa,
    read_objects,
)
from .scenes import CATEGORIES, DEFAULT_CONFIG, PARTNER, Scene, WorldConfig, sample_scene

SPLIT_BASE = {"train": 0, "validation": 1_000_000_000, "test": 2_000_000_000}
SEED_STRIDE = 1_000_000  # scenes per (split, seed) stream; streams never overlap
TRAP_FRACTION = {"train": 0.0, "validation": 0.5, "test": 0.5}
POPE_KINDS = ("random", "popular", "adversarial")


def scene_seed(split: str, i: int, seed: int = 0) -> int:
    if split not in SPLIT_BASE:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_BASE)}")
    if not 0 <= i < SEED_STRIDE:
        raise ValueError("index out of range")
    if not 0 <= seed < 1000:
        raise ValueError("seed must be in [0, 1000)")
    return SPLIT_BASE[split] + seed * SEED_STRIDE + i


def make_split(name: str, n: int, seed: int | None = None, cfg: WorldConfig = DEFAULT_CONFIG) -> list[Scene]:
    """``n`` scenes of split ``name`` (train / validation / test), deterministic in (name, seed, i).

    Splits are disjoint by construction (different seed ranges).  validation and test scenes
    alternate ordinary scenes (training distribution) and trap scenes (odd indices: a primary
    without its companion); train has the training distribution only."""
    seed = 0 if seed is None else seed
    frac = TRAP_FRACTION[name]
    out = []
    for i in range(n):
        trap = frac > 0 and (i % 2 == 1)
        out.append(sample_scene(scene_seed(name, i, seed), trap=trap, cfg=cfg, split=name))
    return out


@lru_cache(maxsize=4)
def training_statistics(cfg: WorldConfig = DEFAULT_CONFIG, n: int = 4000) -> dict:
    """Category frequency and co-occurrence counts over ``n`` training scenes (for POPE)."""
    freq: Counter = Counter()
    co: Counter = Counter()
    for s in make_split("train", n, seed=999, cfg=cfg):
        cats = set(s.categories)
        freq.update(cats)
        for a in cats:
            for b in cats:
                if a != b:
                    co[(a, b)] += 1
    return {"n": n, "frequency": dict(freq), "cooccurrence": dict(co)}


def pope_questions(scene: Scene, kind: str = "random", k: int = 3) -> list[dict]:
    """POPE-style questions for one scene, balanced yes/no.

    random: ``k`` present categories (yes) and ``k`` random absent ones (no).
    popular: the absent negatives are the most frequent categories of the training split.
    adversarial: the negatives are the absent partners of present objects (the prior traps);
    a scene without an absent partner uses the absent category that co-occurs most with the
    present ones; as many positives as negatives."""
    if kind not in POPE_KINDS:
        raise ValueError(f"kind must be one of {POPE_KINDS}")
    rng = random.Random(scene.seed * 101 + POPE_KINDS.index(kind))
    present = scene.categories
    absent = [c for c in CATEGORIES if c not in present]
    stats = training_statistics(scene.config)
    if kind == "random":
        neg = rng.sample(absent, min(k, len(absent)))
    elif kind == "popular":
        neg = sorted(absent, key=lambda c: (-stats["frequency"].get(c, 0), c))[:k]
    else:
        neg = list(dict.fromkeys(scene.absent_partners))[:k]
        if not neg:
            co = stats["cooccurrence"]
            neg = sorted(absent, key=lambda c: (-sum(co.get((p, c), 0) for p in present), c))[:1]
    pos = rng.sample(present, min(len(neg), len(present)))
    neg = neg[: len(pos)]
    items = [(c, "yes") for c in pos] + [(c, "no") for c in neg]
    rng.shuffle(items)
    return [
        {
            "question": pope_question(c),
            "category": c,
            "label": lab,
            "kind": kind,
            "is_partner": lab == "no" and c in scene.absent_partners,
        }
        for c, lab in items
    ]


def grounding_items(scene: Scene) -> list[dict]:
    """Referring expressions with their box; one per object that (colour, category) identifies."""
    boxes = [list(o.box) for o in scene.objects]
    items = []
    for i, o in enumerate(scene.objects):
        same = [p for p in scene.objects if p.category == o.category and p.colour == o.colour]
        if len(same) != 1:
            continue
        only = scene.count(o.category) == 1
        expr = f"the {o.category}" if only else f"the {o.colour} {o.category}"
        items.append(
            {
                "expression": expr,
                "question": f"where is {expr}?",
                "box": list(o.box),
                "target": i,
                "candidates": boxes,
                "category": o.category,
                "colour": o.colour,
                "position": o.position,
            }
        )
    return items


def training_example(scene: Scene, rng: random.Random, mix: tuple[float, float] = (0.4, 0.35)) -> tuple[str, str, str]:
    """One (prompt, answer, kind) for ``scene``: a description, an existence question
    (balanced yes/no) or an attribute question."""
    r = rng.random()
    if r < mix[0]:
        from .language import describe

        return rng.choice(DESCRIBE_PROMPTS), describe(scene, rng), "describe"
    if r < mix[0] + mix[1]:
        present = scene.categories
        if rng.random() < 0.5:
            c = rng.choice(present)
        else:
            c = rng.choice([c for c in CATEGORIES if c not in present])
        q, a = existence_qa(scene, c, rng, pope=rng.random() < 0.5)
        return q, a, "exist"
    q, a = attribute_qa(scene, rng)
    return q, a, "attribute"


def training_conversation(scene: Scene, rng: random.Random, turns: int = 5,
                          exist_share: float = 0.6) -> list[tuple[str, str]]:
    """A multi-turn conversation of short questions about one scene: existence questions
    (balanced yes/no) with share ``exist_share``, attribute questions otherwise.

    One image then serves several answers (as in LLaVA's multi-turn instruction data), so the
    64 image tokens are paid once per conversation instead of once per question. Each category
    is asked about at most once, so no answer can be read off an earlier one."""
    present = scene.categories
    absent = [c for c in CATEGORIES if c not in present]
    asked: set[str] = set()
    out = []
    for _ in range(turns):
        if rng.random() < exist_share:
            pool_yes = [c for c in present if c not in asked]
            pool_no = [c for c in absent if c not in asked]
            pool = pool_yes if (rng.random() < 0.5 and pool_yes) or not pool_no else pool_no
            if not pool:
                break
            c = rng.choice(pool)
            asked.add(c)
            out.append(existence_qa(scene, c, rng, pope=rng.random() < 0.5))
        else:
            q, a = attribute_qa(scene, rng)
            asked.update(read_objects(q))  # its answer tells whether they exist
            out.append((q, a))
    return out


__all__ = [
    "training_conversation",
    "make_split",
    "pope_questions",
    "grounding_items",
    "training_example",
    "training_statistics",
    "scene_seed",
    "PARTNER",
]
