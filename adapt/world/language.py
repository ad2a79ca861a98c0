"""Text of the world: descriptions, questions and answers, vocabulary, and reading objects from text.

All text is lower case.  Wording varies (templates, synonyms, plurals, optional adjectives,
order) so that a model has to read the image, not a template.  ``read_objects`` maps every
noun the world's wording uses (synonyms and plurals included) back to its category, which
makes CHAIR exact.
"""
from __future__ import annotations

import random
import re

from .scenes import CATEGORIES, COLOUR_NAMES, POSITIONS, Scene, WorldObject

SYNONYMS = {
    "circle": ["circle", "disk"],
    "square": ["square", "block"],
    "triangle": ["triangle"],
    "star": ["star"],
    "heart": ["heart"],
    "cross": ["cross", "plus"],
    "diamond": ["diamond", "rhombus"],
    "moon": ["moon", "crescent"],
    "ring": ["ring", "donut"],
    "arrow": ["arrow"],
}
PLURAL = {
    "circle": "circles", "disk": "disks", "square": "squares", "block": "blocks", "triangle": "triangles",
    "star": "stars", "heart": "hearts", "cross": "crosses", "plus": "pluses", "diamond": "diamonds",
    "rhombus": "rhombuses", "moon": "moons", "crescent": "crescents", "ring": "rings", "donut": "donuts",
    "arrow": "arrows",
}
# every surface form -> category
NOUN_TO_CATEGORY = {}
for _c, _forms in SYNONYMS.items():
    for _f in _forms:
        NOUN_TO_CATEGORY[_f] = _c
        NOUN_TO_CATEGORY[PLURAL[_f]] = _c

POSITION_PHRASES = {
    "top left": ["at the top left", "in the top left corner", "in the upper left"],
    "top": ["at the top", "at the top center", "in the upper middle"],
    "top right": ["at the top right", "in the top right corner", "in the upper right"],
    "left": ["on the left", "at the middle left", "on the left side"],
    "center": ["in the center", "in the middle"],
    "right": ["on the right", "at the middle right", "on the right side"],
    "bottom left": ["at the bottom left", "in the bottom left corner", "in the lower left"],
    "bottom": ["at the bottom", "at the bottom center", "in the lower middle"],
    "bottom right": ["at the bottom right", "in the bottom right corner", "in the lower right"],
}
SIZE_WORDS = {"large": ["large", "big"], "medium": [], "small": ["small"], "tiny": ["tiny", "small", "faint"]}
NUMBER_WORDS = ["no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

DESCRIBE_PROMPTS = [
    "describe the image in detail.",
    "describe this picture.",
    "what do you see in this image?",
    "give a detailed description of the image.",
]
DEFAULT_DESCRIBE_PROMPT = DESCRIBE_PROMPTS[0]
INTROS = ["the image shows", "in this image there is", "this picture contains", "i can see", "the scene has", "there is"]
EXIST_TEMPLATES = [
    "is there {a} {n} in the image?",
    "is there {a} {n}?",
    "does the image contain {a} {n}?",
    "can you see {a} {n} in this picture?",
]
POPE_TEMPLATE = "is there {a} {n} in the image?"


def pope_question(category: str) -> str:
    """The POPE question for ``category`` (the original POPE wording)."""
    return POPE_TEMPLATE.format(a=article(category), n=category)


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def noun(category: str, rng: random.Random, plural: bool = False, synonym_p: float = 0.25) -> str:
    forms = SYNONYMS[category]
    w = forms[0] if len(forms) == 1 or rng.random() >= synonym_p else rng.choice(forms[1:])
    return PLURAL[w] if plural else w


def position_phrase(position: str, rng: random.Random) -> str:
    return rng.choice(POSITION_PHRASES[position])


def object_phrase(obj: WorldObject, rng: random.Random, with_position: bool = True) -> str:
    words = []
    if SIZE_WORDS[obj.size] and rng.random() < 0.5:
        words.append(rng.choice(SIZE_WORDS[obj.size]))
    words += [obj.colour, noun(obj.category, rng)]
    text = article(words[0]) + " " + " ".join(words)
    if with_position:
        text += " " + position_phrase(obj.position, rng)
    return text


def _join(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def ordered_objects(scene: Scene, rng: random.Random) -> list[WorldObject]:
    """Mention order: by prominence (area x opacity, most prominent first) most of the time,
    reading order (top left to bottom right) otherwise."""
    objs = list(scene.objects)
    if rng.random() < 0.8:
        def prom(o: WorldObject) -> float:
            x0, y0, x1, y1 = o.box
            return (x1 - x0) * (y1 - y0) * o.opacity * rng.uniform(0.85, 1.15)

        objs.sort(key=prom, reverse=True)
    else:
        objs.sort(key=lambda o: o.cell)
    return objs


def describe(scene: Scene, rng: random.Random | None = None) -> str:
    """A long description naming every object once, with colour and position."""
    rng = rng or random.Random(scene.seed * 13 + 1)
    return describe_objects(ordered_objects(scene, rng), rng)


def describe_objects(objs: list, rng: random.Random) -> str:
    """:func:`describe`'s wording for these objects in this order (the preference set writes its
    rejected descriptions with it)."""
    phrases = [object_phrase(o, rng) for o in objs]
    style = rng.random()
    prefix = ""
    if rng.random() < 0.3:
        prefix = f"there are {NUMBER_WORDS[len(objs)]} shapes in this image. "
    if style < 0.55 or len(phrases) == 1:
        return prefix + rng.choice(INTROS) + " " + _join(phrases) + "."
    sents = [f"there is {phrases[0]}."]
    for k, p in enumerate(phrases[1:], start=1):
        if k == len(phrases) - 1 and rng.random() < 0.6:
            sents.append(f"finally, there is {p}.")
        else:
            sents.append(rng.choice([f"there is also {p}.", f"i can also see {p}.", f"next to it, there is {p}.", f"there is {p}."]))
    return prefix + " ".join(sents)


# ---------------------------------------------------------------------------------------
# questions
# ---------------------------------------------------------------------------------------
def existence_qa(scene: Scene, category: str, rng: random.Random, pope: bool = False) -> tuple[str, str]:
    n = noun(category, rng, synonym_p=0.0 if pope else 0.25)
    q = (POPE_TEMPLATE if pope else rng.choice(EXIST_TEMPLATES)).format(a=article(n), n=n)
    inst = [o for o in scene.objects if o.category == category]
    if inst:
        if rng.random() < 0.5:
            return q, "yes."
        return q, f"yes, there is {object_phrase(inst[0], rng)}."
    if rng.random() < 0.5:
        return q, "no."
    return q, f"no, there is no {n}."


def colour_qa(scene: Scene, obj: WorldObject, rng: random.Random) -> tuple[str, str]:
    n = noun(obj.category, rng)
    q = rng.choice([f"what color is the {n}?", f"which color does the {n} have?"])
    return q, rng.choice([f"the {n} is {obj.colour}.", f"it is {obj.colour}."])


def position_qa(scene: Scene, obj: WorldObject, rng: random.Random) -> tuple[str, str]:
    n = noun(obj.category, rng)
    q = rng.choice([f"where is the {obj.colour} {n}?", f"where is the {obj.colour} {n} in the image?"])
    p = position_phrase(obj.position, rng)
    return q, rng.choice([f"it is {p}.", f"the {obj.colour} {n} is {p}."])


def count_qa(scene: Scene, category: str, rng: random.Random) -> tuple[str, str]:
    k = scene.count(category)
    n1 = noun(category, rng)
    npl = PLURAL[n1]
    q = f"how many {npl} are there?"
    if k == 0:
        return q, f"there are no {npl}."
    if k == 1:
        return q, f"there is one {n1}."
    return q, f"there are {NUMBER_WORDS[k]} {npl}."


def total_count_qa(scene: Scene, rng: random.Random) -> tuple[str, str]:
    q = rng.choice(["how many shapes are there?", "how many objects are in the image?"])
    return q, f"there are {NUMBER_WORDS[len(scene.objects)]} shapes."


def what_at_qa(scene: Scene, position: str, rng: random.Random) -> tuple[str, str]:
    q = f"what is {POSITION_PHRASES[position][0]}?"
    inst = [o for o in scene.objects if o.position == position]
    if inst:
        return q, f"there is {object_phrase(inst[0], rng, with_position=False)} {POSITION_PHRASES[position][0]}."
    return q, f"there is nothing {POSITION_PHRASES[position][0]}."


def attribute_qa(scene: Scene, rng: random.Random) -> tuple[str, str]:
    """One random attribute question (colour, position, count, what-is-at) with its answer."""
    kind = rng.random()
    singles = [o for o in scene.objects if scene.count(o.category) == 1]
    unique_cc = [o for o in scene.objects if sum(p.category == o.category and p.colour == o.colour for p in scene.objects) == 1]
    if kind < 0.3 and singles:
        return colour_qa(scene, rng.choice(singles), rng)
    if kind < 0.6 and unique_cc:
        return position_qa(scene, rng.choice(unique_cc), rng)
    if kind < 0.8:
        if rng.random() < 0.15:
            return total_count_qa(scene, rng)
        pool = scene.categories if rng.random() < 0.75 else CATEGORIES
        return count_qa(scene, rng.choice(pool), rng)
    return what_at_qa(scene, rng.choice(POSITIONS), rng)


# ---------------------------------------------------------------------------------------
# reading text
# ---------------------------------------------------------------------------------------
_WORD = re.compile(r"[a-z]+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def read_objects(text: str) -> list[str]:
    """Categories mentioned in ``text``, in order, repeats kept (synonyms and plurals mapped)."""
    return [NOUN_TO_CATEGORY[w] for w in words(text) if w in NOUN_TO_CATEGORY]


def read_object_spans(text: str) -> list[tuple[str, int]]:
    """(category, character offset) of each mention, in order."""
    return [(NOUN_TO_CATEGORY[m.group()], m.start()) for m in _WORD.finditer(text.lower()) if m.group() in NOUN_TO_CATEGORY]


def vocabulary() -> list[str]:
    """Every word and punctuation mark the world's text uses (sorted)."""
    texts = DESCRIBE_PROMPTS + INTROS + EXIST_TEMPLATES + [
        "there are shapes in this image. there is also i can also see next to it, finally, there is",
        "yes, there is no what color is the which color does the have? it is where is the in the image?",
        "how many are there? there are there is one how many shapes are there? how many objects are in the image?",
        "what is there is nothing user: assistant: and",
    ]
    texts += [p for ps in POSITION_PHRASES.values() for p in ps]
    texts += [w for ws in SIZE_WORDS.values() for w in ws] + NUMBER_WORDS + COLOUR_NAMES + ["a", "an"]
    texts += list(NOUN_TO_CATEGORY)
    vocab: set[str] = set()
    for t in texts:
        vocab.update(re.findall(r"[a-z]+|[^\sa-z]", t.lower().replace("{n}", "").replace("{a}", "")))
    return sorted(vocab)
