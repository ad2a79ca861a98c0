"""Ground truth of world scenes: found by an image's pixels, and compared with what an answer says."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

from PIL import Image

def image_key(image: Image.Image) -> str:
    img = image.convert("RGB")
    h = hashlib.sha1(f"{img.size}".encode())
    h.update(img.tobytes())
    return h.hexdigest()


class SceneRegistry:
    """Ground truth (object categories) of world scenes, found by the image's pixels."""

    def __init__(self, capacity: int = 512):
        self._known: OrderedDict[str, dict] = OrderedDict()
        self.capacity = capacity
        self._lock = threading.Lock()

    def add(self, image: Image.Image, meta: dict) -> str:
        key = image_key(image)
        with self._lock:
            self._known[key] = dict(meta)
            while len(self._known) > self.capacity:
                self._known.popitem(last=False)
        return key

    def add_key(self, key: str, meta: dict) -> None:
        with self._lock:
            self._known[key] = dict(meta)

    def lookup(self, image: Image.Image) -> dict | None:
        meta = self._known.get(image_key(image))
        return dict(meta) if meta is not None else None


def scene_meta(scene) -> dict:
    return {"objects": list(scene.categories), "scene_objects": scene_objects(scene), "scene_seed": scene.seed,
            "split": scene.split, "is_trap": bool(scene.is_trap), "source": "adapt.world"}


def scene_objects(scene) -> list[dict]:
    """Each object's category, colour and position: what an answer's attributes are checked against."""
    return [{"category": o.category, "colour": o.colour, "position": o.position} for o in scene.objects]


def random_trap_scene(rng_seed: int | None = None):
    """A fresh trap scene of the test split (a primary shape without its usual companion)."""
    import random

    from adapt.world.datasets import make_split

    i = random.Random(rng_seed).randrange(0, 5000)
    scenes = make_split("test", 2 * (i // 2) + 2)  # odd indices are traps
    return scenes[-1]


def add_hallucinations(trace) -> None:
    """Fill ``meta["hallucinated"]`` (absent objects named) and ``meta["errors"]`` (objects, colours
    and positions the answer gets wrong) from the answers when ground truth is known."""
    meta = trace.meta
    if not isinstance(meta, dict) or meta.get("objects") is None:
        return
    from adapt.world.language import read_objects

    truth = set(meta["objects"])
    hal, errors = {}, {}
    for run in ("unsteered", "steered"):
        a = getattr(trace, run, None)
        if a is not None:
            hal[run] = list(dict.fromkeys(c for c in read_objects(a.text) if c not in truth))
            errors[run] = answer_errors(a.text, meta)
    if not meta.get("hallucinated"):
        meta["hallucinated"] = hal
    meta["errors"] = errors


@dataclass
class Claim:
    """One object mention with the colour and position the text gives it (None: not said)."""

    category: str
    colour: str | None
    position: str | None


def read_claims(text: str) -> list[Claim]:
    """Object mentions of a world-style description with their colour (the adjective just before
    the noun) and position (a position phrase before the next mention)."""
    from adapt.world.language import NOUN_TO_CATEGORY, POSITION_PHRASES, words
    from adapt.world.scenes import COLOUR_NAMES

    ws = words(text)
    phrases = sorted(((tuple(ph.split()), pos) for pos, forms in POSITION_PHRASES.items() for ph in forms),
                     key=lambda t: -len(t[0]))
    nouns = [i for i, w in enumerate(ws) if w in NOUN_TO_CATEGORY]
    claims = []
    for n, i in enumerate(nouns):
        colour = None
        for j in range(i - 1, max(-1, i - 4), -1):  # "a small faint blue star": up to three words back
            if ws[j] in COLOUR_NAMES:
                colour = ws[j]
                break
            if ws[j] in NOUN_TO_CATEGORY or ws[j] == "and":
                break
        end = nouns[n + 1] if n + 1 < len(nouns) else len(ws)
        position = None
        for j in range(i + 1, min(end, i + 8)):
            hit = next((pos for ph, pos in phrases if tuple(ws[j:j + len(ph)]) == ph and j + len(ph) <= end), None)
            if hit:
                position = hit
                break
        claims.append(Claim(NOUN_TO_CATEGORY[ws[i]], colour, position))
    return claims


def answer_errors(text: str, meta: dict) -> dict[str, list[str]]:
    """What ``text`` gets wrong against the scene: absent objects, wrong colours, wrong positions.

    Colours and positions are checked only where the ground truth has them (``scene_objects``)."""
    truth = set(meta.get("objects") or [])
    objs = meta.get("scene_objects") or []
    out = {"objects": [], "colour": [], "position": []}
    for c in read_claims(text):
        if c.category not in truth:
            if c.category not in out["objects"]:
                out["objects"].append(c.category)
            continue
        same = [o for o in objs if o.get("category") == c.category]
        if not same:
            continue
        if c.colour is not None:
            coloured = [o for o in same if o.get("colour") == c.colour]
            if not coloured:
                actual = "/".join(dict.fromkeys(o["colour"] for o in same))
                out["colour"].append(f"{c.category}: said {c.colour}, is {actual}")
            else:
                same = coloured
        if c.position is not None and not any(o.get("position") == c.position for o in same):
            actual = "/".join(dict.fromkeys(o["position"] for o in same))
            out["position"].append(f"{c.category}: said {c.position}, is {actual}")
    return out
