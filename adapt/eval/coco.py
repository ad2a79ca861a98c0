"""CHAIR on COCO (Rohrbach et al. 2018): object mentions read from captions through the 80 COCO
categories and their synonyms, against the image's instances and reference captions.

The synonym table is ours, written from the public category list; the reading rules are the ones the
benchmark describes: lowercase words, plurals singularised with ``inflect``, two-word names merged
before single words ("hot dog" is not a dog, "teddy bear" not a bear), "toilet seat" and a "seat" next to
a "toilet" are not chairs, "baby/adult <animal>" is the animal and not a person, "passenger jet/train"
is the vehicle and not a person, "bow tie" is a tie.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

from .formats import DataError, read_json

# canonical COCO category name: synonyms (singular forms; plurals are found by singularising)
SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": ("person", "people", "man", "woman", "boy", "girl", "child", "kid", "baby", "toddler", "adult",
               "lady", "gentleman", "guy", "teenager", "player", "skier", "snowboarder", "surfer", "skateboarder",
               "skater", "rider", "biker", "cyclist", "bicyclist", "pedestrian", "passenger", "driver", "chef",
               "cook", "worker", "officer", "policeman", "soldier", "student", "tourist", "spectator", "pitcher",
               "batter", "catcher", "umpire", "mother", "father", "bride", "groom", "customer", "vendor"),
    "bicycle": ("bicycle", "bike", "tricycle", "unicycle"),
    "car": ("car", "automobile", "sedan", "suv", "van", "minivan", "taxi", "cab", "jeep", "hatchback", "coupe",
            "limousine", "limo"),
    "motorcycle": ("motorcycle", "motorbike", "motor bike", "motor cycle", "scooter", "moped", "dirt bike"),
    "airplane": ("airplane", "aeroplane", "plane", "air plane", "jet", "jetliner", "airliner", "aircraft",
                 "biplane", "seaplane"),
    "bus": ("bus", "minibus", "double decker", "trolleybus"),
    "train": ("train", "locomotive", "tram", "streetcar", "railcar", "subway"),
    "truck": ("truck", "lorry", "pickup", "pickup truck", "fire truck", "firetruck"),
    "boat": ("boat", "ship", "sailboat", "yacht", "canoe", "kayak", "ferry", "vessel", "rowboat", "speedboat",
             "tugboat", "barge", "raft"),
    "traffic light": ("traffic light", "traffic signal", "stop light", "stoplight"),
    "fire hydrant": ("fire hydrant", "hydrant"),
    "stop sign": ("stop sign",),
    "parking meter": ("parking meter",),
    "bench": ("bench", "pew"),
    "bird": ("bird", "pigeon", "seagull", "gull", "duck", "goose", "swan", "parrot", "owl", "eagle", "hawk",
             "sparrow", "crow", "chicken", "rooster", "hen", "flamingo", "pelican", "heron", "penguin", "turkey"),
    "cat": ("cat", "kitten", "kitty", "feline"),
    "dog": ("dog", "puppy", "pup", "canine", "doggy", "hound", "terrier", "poodle", "retriever", "labrador",
            "bulldog", "husky", "beagle", "collie", "dachshund"),
    "horse": ("horse", "pony", "foal", "stallion", "mare", "colt"),
    "sheep": ("sheep", "lamb", "ram", "ewe"),
    "cow": ("cow", "cattle", "calf", "bull", "ox", "heifer", "buffalo"),
    "elephant": ("elephant",),
    "bear": ("bear", "grizzly"),
    "zebra": ("zebra",),
    "giraffe": ("giraffe",),
    "backpack": ("backpack", "knapsack", "rucksack"),
    "umbrella": ("umbrella", "parasol"),
    "handbag": ("handbag", "purse"),
    "tie": ("tie", "necktie", "bow tie"),
    "suitcase": ("suitcase", "luggage", "suit case"),
    "frisbee": ("frisbee",),
    "skis": ("skis", "ski"),
    "snowboard": ("snowboard",),
    # "baseball", "football" ... name games as often as balls ("a baseball player"), so they are left out
    "sports ball": ("sports ball", "ball", "soccer ball", "tennis ball"),
    "kite": ("kite",),
    "baseball bat": ("baseball bat",),  # a lone "bat" may be the animal
    "baseball glove": ("baseball glove", "mitt"),
    "skateboard": ("skateboard",),
    "surfboard": ("surfboard", "surf board", "longboard", "paddleboard"),
    "tennis racket": ("tennis racket", "racket", "racquet"),
    "bottle": ("bottle",),
    "wine glass": ("wine glass",),
    "cup": ("cup", "mug", "coffee cup"),
    "fork": ("fork",),
    "knife": ("knife",),
    "spoon": ("spoon",),
    "bowl": ("bowl",),
    "banana": ("banana",),
    "apple": ("apple",),
    "sandwich": ("sandwich", "burger", "hamburger", "cheeseburger"),
    "orange": ("orange",),
    "broccoli": ("broccoli",),
    "carrot": ("carrot",),
    "hot dog": ("hot dog", "hotdog"),
    "pizza": ("pizza",),
    "donut": ("donut", "doughnut"),
    "cake": ("cake", "cupcake", "cheesecake"),
    "chair": ("chair", "seat", "stool", "armchair"),
    "couch": ("couch", "sofa", "loveseat", "futon"),
    "potted plant": ("potted plant", "houseplant", "house plant"),
    "bed": ("bed",),
    "dining table": ("dining table", "table", "desk", "kitchen table", "coffee table"),
    "toilet": ("toilet", "toilet seat", "urinal", "commode"),
    "tv": ("tv", "television", "monitor", "tv screen"),
    "laptop": ("laptop", "computer", "notebook computer", "macbook"),
    "mouse": ("mouse", "computer mouse"),
    "remote": ("remote", "remote control"),
    "keyboard": ("keyboard",),
    "cell phone": ("cell phone", "cellphone", "phone", "mobile phone", "smartphone", "telephone"),
    "microwave": ("microwave",),
    "oven": ("oven", "stove"),
    "toaster": ("toaster",),
    "sink": ("sink",),
    "refrigerator": ("refrigerator", "fridge", "freezer"),
    "book": ("book",),
    "clock": ("clock",),
    "vase": ("vase",),
    "scissors": ("scissors",),
    "teddy bear": ("teddy bear", "teddy", "stuffed bear"),
    "hair drier": ("hair drier", "hair dryer", "hairdryer", "blow dryer"),
    "toothbrush": ("toothbrush",),
}

COCO_CATEGORIES = tuple(SYNONYMS)
ANIMALS = frozenset({"bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe"})
# "passenger <vehicle>" names the vehicle; the passenger is not in the picture as a person
PASSENGER_VEHICLES = frozenset({"airplane", "train", "bus", "boat", "car"})
TOILET_SEAT_WINDOW = 3  # a "seat" within this many words of a "toilet" is the toilet's


@lru_cache(maxsize=1)
def _word_map() -> tuple[dict[str, str], dict[tuple[str, str], str]]:
    single, double = {}, {}
    for cat, names in SYNONYMS.items():
        for name in names:
            parts = tuple(name.split())
            if len(parts) == 1:
                single[parts[0]] = cat
            elif len(parts) == 2:
                double[parts] = cat
            else:  # the reader merges pairs only; a longer synonym would silently never match
                raise AssertionError(f"synonym {name!r} has more than two words")
    return single, double


@lru_cache(maxsize=1)
def _inflect():
    import inflect

    return inflect.engine()


@lru_cache(maxsize=65536)
def singular(word: str) -> str:
    """``word`` in the singular where it is a plural of a vocabulary word (``inflect``), else unchanged.

    Vocabulary words are kept as they are: inflect would turn "bus" into "bu"."""
    single, double = _word_map()
    known = set(single) | {w for pair in double for w in pair}
    if word in known:
        return word
    s = _inflect().singular_noun(word)
    return s if s and s in known else word


_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class Mention:
    """One object mention: the COCO category, the words that named it, the index of its first word."""

    category: str
    words: str
    index: int


def read_mentions(text: str) -> list[Mention]:
    """Every COCO object mention of ``text`` in order, repeats kept (CHAIR_i counts each one)."""
    single, double = _word_map()
    words = [singular(w) for w in _WORD.findall(text.lower())]
    out: list[Mention] = []
    i = 0
    while i < len(words):
        w, nxt = words[i], (words[i + 1] if i + 1 < len(words) else None)
        pair = double.get((w, nxt)) if nxt is not None else None
        if pair is not None:
            out.append(Mention(pair, f"{w} {nxt}", i))
            i += 2
            continue
        cat = single.get(w)
        nxt_cat = _category_at(words, i + 1)
        if w in ("baby", "adult") and nxt_cat in ANIMALS:
            i += 1  # the animal is read next
            continue
        if w == "passenger" and nxt_cat in PASSENGER_VEHICLES:
            i += 1
            continue
        if w == "seat" and "toilet" in words[max(0, i - TOILET_SEAT_WINDOW):i + TOILET_SEAT_WINDOW + 1]:
            i += 1
            continue
        if cat is not None:
            out.append(Mention(cat, w, i))
        i += 1
    return out


def _category_at(words: list[str], i: int) -> str | None:
    single, double = _word_map()
    if i >= len(words):
        return None
    if i + 1 < len(words) and (words[i], words[i + 1]) in double:
        return double[(words[i], words[i + 1])]
    return single.get(words[i])


def read_objects(text: str) -> set[str]:
    """The COCO categories ``text`` mentions."""
    return {m.category for m in read_mentions(text)}


def chair_scores(captions: Sequence[str], truths: Sequence[Iterable[str]], ids: Sequence | None = None) -> dict:
    """CHAIR_s, CHAIR_i, recall and mean length of ``captions`` against ``truths`` (COCO categories per image).

    CHAIR_i = hallucinated mentions / mentions, pooled over the set with repeats counted (as the original
    code counts them); CHAIR_s = captions with at least one hallucinated mention / captions; recall =
    distinct true categories mentioned / true categories, pooled; ``mean_words`` = words per caption.
    ``per_image`` lists each caption's mentions and hallucinations."""
    if len(captions) != len(truths):
        raise ValueError("captions and truths differ in length")
    ids = list(ids) if ids is not None else list(range(len(captions)))
    per_image = []
    n_hall = n_ment = n_hall_caps = covered = total = words = 0
    for image_id, cap, truth in zip(ids, captions, truths):
        truth = set(truth)
        mentions = read_mentions(cap)
        hall = [m.category for m in mentions if m.category not in truth]
        n_hall += len(hall)
        n_ment += len(mentions)
        n_hall_caps += bool(hall)
        got = {m.category for m in mentions} & truth
        covered += len(got)
        total += len(truth)
        words += len(cap.split())
        per_image.append({"image_id": image_id, "mentioned": [m.category for m in mentions],
                          "words": [m.words for m in mentions], "hallucinated": hall, "truth": sorted(truth),
                          "chair_s": int(bool(hall)), "recall": len(got) / len(truth) if truth else None})
    n = len(captions)
    return {"chair_s": n_hall_caps / n if n else 0.0, "chair_i": n_hall / n_ment if n_ment else 0.0,
            "recall": covered / total if total else 0.0, "mean_words": words / n if n else 0.0,
            "hallucinated_mentions": n_hall, "mentions": n_ment, "n": n, "per_image": per_image}


@dataclass
class CocoTruth:
    """Ground truth of COCO images: categories from the instances, categories read from the reference
    captions, and file names."""

    instances: dict[int, set[str]] = field(default_factory=dict)
    from_captions: dict[int, set[str]] = field(default_factory=dict)
    file_names: dict[int, str] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def truth(self, image_id: int) -> set[str]:
        """The categories of one image: its instances ∪ the objects its reference captions name."""
        return self.instances.get(image_id, set()) | self.from_captions.get(image_id, set())

    def image_ids(self) -> list[int]:
        return sorted(set(self.file_names) | set(self.instances) | set(self.from_captions))


def load_coco(annotations: str | Path, captions: bool = True) -> CocoTruth:
    """Read every ``instances_*.json`` (and ``captions_*.json``) of the COCO annotation folder."""
    folder = Path(annotations)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such annotation folder (expected COCO instances_*.json and captions_*.json)")
    inst_files = sorted(folder.glob("instances_*.json"))
    if not inst_files:
        raise DataError(f"{folder}: no instances_*.json in the annotation folder")
    cap_files = sorted(folder.glob("captions_*.json")) if captions else []
    if captions and not cap_files:
        raise DataError(f"{folder}: no captions_*.json in the annotation folder")
    out = CocoTruth(files=[p.name for p in inst_files + cap_files])
    for path in inst_files:
        doc = _coco_doc(path, ("annotations", "categories"))
        names = {}
        for c in doc["categories"]:
            try:
                names[c["id"]] = c["name"]
            except (KeyError, TypeError):
                raise DataError(f"{path}: a category lacks its id or name") from None
        unknown = sorted(set(names.values()) - set(SYNONYMS))
        if unknown:
            raise DataError(f"{path}: categories that are not COCO's 80: {', '.join(unknown[:5])}")
        _file_names(path, doc, out.file_names)
        for a in doc["annotations"]:
            try:
                out.instances.setdefault(int(a["image_id"]), set()).add(names[a["category_id"]])
            except (KeyError, TypeError, ValueError):
                raise DataError(f"{path}: annotation {a.get('id', '?') if isinstance(a, dict) else '?'} "
                                f"lacks a valid image_id / category_id") from None
    for path in cap_files:
        doc = _coco_doc(path, ("annotations",))
        _file_names(path, doc, out.file_names)
        for a in doc["annotations"]:
            try:
                image_id, text = int(a["image_id"]), str(a["caption"])
            except (KeyError, TypeError, ValueError):
                raise DataError(f"{path}: a caption annotation lacks image_id / caption") from None
            out.from_captions.setdefault(image_id, set()).update(read_objects(text))
    return out


def _coco_doc(path: Path, keys: tuple[str, ...]) -> dict:
    doc = read_json(path, "COCO annotation file")
    if not isinstance(doc, dict) or any(not isinstance(doc.get(k), list) for k in keys):
        raise DataError(f"{path}: not a COCO annotation file (needs the lists {', '.join(keys)})")
    return doc


def _file_names(path: Path, doc: dict, into: dict[int, str]) -> None:
    for im in doc.get("images", []) or []:
        try:
            into[int(im["id"])] = str(im["file_name"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{path}: an image entry lacks id / file_name") from None


def sample_ids(ids: Iterable[int], n: int, seed: int = 0) -> list[int]:
    """``n`` image ids drawn by ``seed``, the same on any machine and Python version: the ids with the
    smallest SHA-256 of ``"<seed>:<id>"``, returned sorted. (The widely copied scripts sample in
    filesystem order, which is why their baselines disagree.)"""
    ranked = sorted(set(int(i) for i in ids), key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    return sorted(ranked[:n])


def read_id_list(path: str | Path) -> list[int]:
    """Image ids of a published run: one per line, or a JSON list (ids or COCO file names)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: no such id list") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be read ({type(exc).__name__})") from None
    if text.lstrip().startswith("["):
        items = read_json(path, "id list")
        entries = [(i + 1, x) for i, x in enumerate(items)]
    else:
        entries = [(i + 1, x.strip()) for i, x in enumerate(text.splitlines()) if x.strip()]
    out = []
    for lineno, x in entries:
        try:
            out.append(image_id_of(x))
        except ValueError:
            raise DataError(f"{path}, line {lineno}: {x!r} is not an image id or COCO file name") from None
    return out


def image_id_of(x) -> int:
    """An image id from an int, a digit string or a COCO file name (``COCO_val2014_000000310196.jpg``)."""
    if isinstance(x, int):
        return x
    m = re.search(r"(\d+)(?:\.\w+)?$", str(x).strip())
    if not m:
        raise ValueError(x)
    return int(m.group(1))
