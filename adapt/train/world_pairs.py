"""The world's own preference set, from training-distribution scenes only (the ``train`` split at its
own seed; no validation or test seed).

Four kinds of pair, each aimed at one way the embedded model goes wrong (README, "The embedded model"):

- ``own``: the model's own greedy description of the scene, where it hallucinated, is the rejected
  answer and the exact description the chosen one — the hallucinations are the model's, in its own
  words (the DESIGN §8 trial's pairs).
- ``inserted``: the exact description, and the same description with one absent object phrase slipped
  into the list, late, where the model's own hallucinations sit: the category the model named wrongly on
  this scene, else the absent partner of a present object (the prior trap), else another absent one.
  Same words otherwise, so the only thing that separates the two is the object that is not there.
- ``omitted``: the exact description, and the same with one present object left out (the least
  prominent one). Without these, every rejected answer names *more* objects than its chosen one and
  DPO can lower the loss by teaching the model to stop early: the recall loss of the §8 trial.
- ``yesno``: an existence question; about an absent object (its partner where there is one) chosen
  "no", rejected "yes"; and, as many, about a present one, chosen "yes", rejected "no" (POPE is
  balanced, and only-"no" pairs would teach "no").
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..world import CATEGORIES, COLOUR_NAMES, DEFAULT_DESCRIBE_PROMPT, POSITIONS, Scene, WorldConfig, WorldObject, \
    make_split, read_objects
from ..world.language import INTROS, NUMBER_WORDS, _join, describe_objects, object_phrase, ordered_objects, \
    pope_question
from ..world.scenes import CELL, GRID
from .data import PreferenceRecord

WORLD_SPLIT = "train"
WORLD_DATA_SEED = 500  # a stream of the train split the shipped model never saw (it trained on seed 0)
FORBIDDEN_SEEDS = {("validation", s) for s in range(1, 5)} | {("test", s) for s in range(11, 16)}


@dataclass
class WorldPairSpec:
    """How many scenes, and the share of them given each kind of pair (``own`` wherever the model
    hallucinated)."""

    scenes: int = 1500
    seed: int = WORLD_DATA_SEED
    inserted: float = 0.5
    omitted: float = 0.35
    yesno: float = 0.5
    own: bool = True
    describe_tokens: int = 128
    batch: int = 32


def _same_words(objs: list[WorldObject], seed: int) -> str:
    """A description whose wording depends on ``seed`` and the objects only, so that two object lists
    that differ by one object are described with the same words for the others (one rng per object)."""
    style = random.Random(seed)
    prefix_on, intro, sentence_style = style.random() < 0.3, style.choice(INTROS), style.random() < 0.45
    phrases = [object_phrase(o, random.Random(seed * 7919 + o.cell)) for o in objs]
    prefix = f"there are {NUMBER_WORDS[len(objs)]} shapes in this image. " if prefix_on else ""
    if not sentence_style or len(phrases) == 1:
        return prefix + intro + " " + _join(phrases) + "."
    joiners = [random.Random(seed * 31 + k).choice(["there is also {}.", "i can also see {}.", "there is {}."])
               for k in range(len(phrases))]
    return prefix + " ".join([f"there is {phrases[0]}."] + [j.format(p) for j, p in zip(joiners[1:], phrases[1:])])


def _fake_object(scene: Scene, category: str, rng: random.Random) -> WorldObject | None:
    free = [c for c in range(GRID * GRID) if all(o.cell != c for o in scene.objects)]
    if not free:
        return None
    cell = rng.choice(free)
    size = "tiny" if rng.random() < 0.5 else rng.choice(["small", "medium"])
    r, col = divmod(cell, GRID)
    x0, y0 = col * CELL + 2, r * CELL + 2
    return WorldObject(category, rng.choice(COLOUR_NAMES), POSITIONS[cell], (x0, y0, x0 + 9, y0 + 9), size, 1.0)


def _hallucination_target(scene: Scene, model_halluc: list[str], rng: random.Random) -> str:
    if model_halluc:
        return model_halluc[0]
    if scene.absent_partners:
        return rng.choice(scene.absent_partners)
    return rng.choice([c for c in CATEGORIES if c not in scene.categories])


def world_scenes(spec: WorldPairSpec) -> list[Scene]:
    """The training-distribution scenes of ``spec`` (never a validation or test stream)."""
    if (WORLD_SPLIT, spec.seed) in FORBIDDEN_SEEDS:
        raise ValueError("the world's preference set must not use validation or test scenes")
    return make_split(WORLD_SPLIT, spec.scenes, seed=spec.seed, cfg=WorldConfig())


def greedy_descriptions(backbone, scenes: list[Scene], spec: WorldPairSpec, progress=None) -> list[str]:
    """The model's own greedy descriptions (batched)."""
    from ..methods import get_method

    greedy = get_method("greedy")
    texts: list[str] = []
    for start in range(0, len(scenes), spec.batch):
        chunk = scenes[start:start + spec.batch]
        answers = greedy.answer_batch(backbone, [s.image() for s in chunk], [DEFAULT_DESCRIBE_PROMPT] * len(chunk),
                                      spec.describe_tokens)
        texts += [a.text for a in answers]
        if progress is not None:
            progress(len(texts), len(scenes))
    return texts


def world_records(scenes: list[Scene], descriptions: list[str], spec: WorldPairSpec) -> list[PreferenceRecord]:
    """The preference records of ``scenes`` given the model's greedy ``descriptions`` of them."""
    out: list[PreferenceRecord] = []
    for k, (scene, text) in enumerate(zip(scenes, descriptions)):
        rng = random.Random(scene.seed * 17 + 3)
        image = scene.image()
        truth = set(scene.categories)
        halluc = [c for c in dict.fromkeys(read_objects(text)) if c not in truth]
        ordered = ordered_objects(scene, rng)
        base = dict(image=image, meta={"scene_seed": scene.seed})
        prompt = rng.choice([DEFAULT_DESCRIBE_PROMPT] * 3 + ["describe this picture."])
        if spec.own and halluc:
            out.append(PreferenceRecord(f"world-{k}-own", question=DEFAULT_DESCRIBE_PROMPT,
                                        chosen=describe_objects(ordered, random.Random(scene.seed)), rejected=text,
                                        kind="own", **base))
        if rng.random() < spec.inserted:
            fake = _fake_object(scene, _hallucination_target(scene, halluc, rng), rng)
            if fake is not None:
                # late in the list, where the model's own hallucinations come (README: position 0.69–0.80)
                at = len(ordered) - rng.randint(0, min(1, len(ordered) - 1))
                seed = scene.seed * 3 + 1
                out.append(PreferenceRecord(f"world-{k}-inserted", question=prompt,
                                            chosen=_same_words(ordered, seed),
                                            rejected=_same_words(ordered[:at] + [fake] + ordered[at:], seed),
                                            kind="inserted", **base))
        if rng.random() < spec.omitted and len(ordered) > 1:
            seed = scene.seed * 3 + 2
            out.append(PreferenceRecord(f"world-{k}-omitted", question=prompt, chosen=_same_words(ordered, seed),
                                        rejected=_same_words(ordered[:-1], seed), kind="omitted", **base))
        if rng.random() < spec.yesno:
            absent = _hallucination_target(scene, halluc, rng)
            present = rng.choice(scene.categories)
            out.append(PreferenceRecord(f"world-{k}-no", question=pope_question(absent), chosen="no.",
                                        rejected="yes.", kind="yesno", **base))
            out.append(PreferenceRecord(f"world-{k}-yes", question=pope_question(present), chosen="yes.",
                                        rejected="no.", kind="yesno", **base))
    return out
