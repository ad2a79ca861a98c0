"""AMBER (Wang et al. 2023): its query, annotation, association and safe-word files, the generative
metrics (CHAIR, Cover, Hal, Cog) and the discriminative ones with "no" as the positive class.

AMBER's reference scorer finds nouns with NLTK's POS tagger and, optionally, matches them to the truth by
spaCy word-vector similarity > 0.8. Neither is used here (no large NLP model is needed): a word counts
as a noun when it (singularised with ``inflect``) is in the benchmark's object vocabulary, and a noun
matches a truth object when it is that object or one of its associated words. The figures can therefore
differ a little from the reference scorer's, most where a vocabulary word is used as a verb or an
adjective, or where only the similarity test would have matched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .formats import DataError, iter_jsonl, read_json
from .pope import binary_scores, get_parser

DIMENSIONS = ("existence", "attribute", "relation")


@dataclass
class AmberQuery:
    """One AMBER query."""

    id: int
    image: str
    query: str


def load_queries(path: str | Path) -> list[AmberQuery]:
    """AMBER's query file: a JSON list of ``{id, image, query}``."""
    doc = read_json(path, "AMBER query file")
    if not isinstance(doc, list):
        raise DataError(f"{path}: an AMBER query file is a JSON list of {{id, image, query}}")
    out = []
    for i, q in enumerate(doc):
        try:
            out.append(AmberQuery(int(q["id"]), str(q["image"]), str(q["query"])))
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{path}: entry {i} lacks a valid id / image / query") from None
    return out


def load_annotations(path: str | Path) -> dict[int, dict]:
    """AMBER's annotation file: ``id -> {type, truth, hallu}``; generative entries have object lists,
    discriminative ones ``truth`` "yes" / "no"."""
    doc = read_json(path, "AMBER annotation file")
    if not isinstance(doc, list):
        raise DataError(f"{path}: an AMBER annotation file is a JSON list of {{id, type, truth}}")
    out = {}
    for i, a in enumerate(doc):
        try:
            aid, kind, truth = int(a["id"]), str(a["type"]), a["truth"]
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{path}: entry {i} lacks a valid id / type / truth") from None
        if kind == "generative":
            if not isinstance(truth, list) or not isinstance(a.get("hallu", []), list):
                raise DataError(f"{path}: entry {i} (id {aid}) is generative but truth / hallu are not lists")
            out[aid] = {"type": kind, "truth": [str(t).lower() for t in truth],
                        "hallu": [str(h).lower() for h in a.get("hallu", [])]}
        elif kind.startswith("discriminative"):
            if str(truth).lower() not in ("yes", "no"):
                raise DataError(f"{path}: entry {i} (id {aid}) has truth {truth!r}, not yes/no")
            out[aid] = {"type": kind, "truth": str(truth).lower()}
        else:
            raise DataError(f"{path}: entry {i} (id {aid}) has an unknown type {kind!r}")
    return out


def load_association(path: str | Path) -> dict[str, list[str]]:
    """AMBER's ``relation.json``: object word -> the words that also name it."""
    doc = read_json(path, "AMBER association file")
    if not isinstance(doc, dict) or not all(isinstance(v, list) for v in doc.values()):
        raise DataError(f"{path}: the association file is a JSON object of word -> list of words")
    return {str(k).lower(): [str(w).lower() for w in v] for k, v in doc.items()}


def load_safe_words(path: str | Path | None) -> set[str]:
    """AMBER's ``safe_words.txt``: one word a line (words never counted as hallucinations)."""
    if path is None:
        return set()
    try:
        return {w.strip().lower() for w in Path(path).read_text(encoding="utf-8").splitlines() if w.strip()}
    except FileNotFoundError:
        raise DataError(f"{path}: no such safe-word file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be read ({type(exc).__name__})") from None


def load_responses(path: str | Path) -> dict[int, str]:
    """Responses as AMBER takes them (a JSON list of ``{id, response}``) or as JSONL lines of the same."""
    path = Path(path)
    if path.suffix == ".jsonl":
        rows = [(f"line {n}", o) for n, o in iter_jsonl(path, ("id", "response"), "AMBER response file")]
    else:
        doc = read_json(path, "AMBER response file")
        if not isinstance(doc, list):
            raise DataError(f"{path}: an AMBER response file is a JSON list of {{id, response}}")
        rows = [(f"entry {i}", o) for i, o in enumerate(doc)]
    out = {}
    for where, o in rows:
        try:
            out[int(o["id"])] = str(o["response"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{path}, {where}: lacks a valid id / response") from None
    return out


class Vocabulary:
    """The generative metrics' object words: every association key and value, minus the safe words."""

    def __init__(self, association: dict[str, list[str]], safe_words: set[str] = frozenset()):
        self.association = association
        self.safe = set(safe_words)
        words = set(association) | {w for v in association.values() for w in v}
        self.words = words - self.safe
        self.pairs = {tuple(w.split()) for w in self.words if len(w.split()) == 2}
        self._singles = {w for w in words if " " not in w}

    def names(self, obj: str) -> set[str]:
        """The words that name ``obj``: itself and its associated words."""
        return {obj, *self.association.get(obj, [])}

    def nouns(self, text: str) -> list[str]:
        """The vocabulary words of ``text`` in order, repeats kept; two-word entries first."""
        words = [self._singular(w) for w in re.findall(r"[a-z]+", text.lower())]
        out, i = [], 0
        while i < len(words):
            if i + 1 < len(words) and (words[i], words[i + 1]) in self.pairs:
                out.append(f"{words[i]} {words[i + 1]}")
                i += 2
                continue
            if words[i] in self.words:
                out.append(words[i])
            i += 1
        return out

    def _singular(self, word: str) -> str:
        if word in self._singles or word in self.safe:
            return word
        s = _singular_noun(word)
        return s if s and (s in self._singles or s in self.safe) else word


@lru_cache(maxsize=65536)
def _singular_noun(word: str):
    from .coco import _inflect

    return _inflect().singular_noun(word)


def generative_scores(responses: dict[int, str], annotations: dict[int, dict], vocab: Vocabulary) -> dict:
    """AMBER's generative metrics over the responses that have a generative annotation, pooled:
    chair = nouns matching no truth object / nouns; cover = truth objects some noun names / truth
    objects; hal = share of responses with at least one such noun; cog = annotated ``hallu`` objects
    some noun names / ``hallu`` objects. (Fractions; AMBER prints them ×100.)"""
    hall = nouns_n = covered = truth_n = hal_resp = cog = hallu_n = n = 0
    per_item = []
    for rid in sorted(responses):
        ann = annotations.get(rid)
        if ann is None or ann["type"] != "generative":
            continue
        nouns = vocab.nouns(responses[rid])
        truth_names = set().union(*(vocab.names(t) for t in ann["truth"])) if ann["truth"] else set()
        bad = [w for w in nouns if w not in truth_names]
        said = set(nouns)
        cov = [t for t in ann["truth"] if vocab.names(t) & said]
        cg = [h for h in ann["hallu"] if vocab.names(h) & said]
        hall += len(bad)
        nouns_n += len(nouns)
        covered += len(cov)
        truth_n += len(ann["truth"])
        hal_resp += bool(bad)
        cog += len(cg)
        hallu_n += len(ann["hallu"])
        n += 1
        per_item.append({"id": rid, "nouns": nouns, "hallucinated": bad, "covered": cov, "cog": cg})
    return {"chair": hall / nouns_n if nouns_n else 0.0, "cover": covered / truth_n if truth_n else 0.0,
            "hal": hal_resp / n if n else 0.0, "cog": cog / hallu_n if hallu_n else 0.0, "n": n,
            "per_item": per_item}


def dimension_of(kind: str) -> str:
    """``discriminative-attribute-state`` -> ``attribute``."""
    parts = kind.split("-")
    return parts[1] if len(parts) > 1 else kind


def discriminative_scores(responses: dict[int, str], annotations: dict[int, dict], parser: str = "strict") -> dict:
    """Accuracy, precision, recall and F1 with "no" the positive class (AMBER's definition), over all
    yes/no items and per dimension (existence, attribute, relation). AMBER expects answers "Yes" / "No";
    ``parser`` reads longer answers (``strict``: the first word; see :mod:`adapt.eval.pope`)."""
    parse = get_parser(parser)
    rows = [(dimension_of(annotations[r]["type"]), parse(responses[r]), annotations[r]["truth"])
            for r in sorted(responses) if r in annotations and annotations[r]["type"].startswith("discriminative")]
    out = binary_scores([p for _, p, _ in rows], [t for _, _, t in rows], positive="no")
    dims = sorted({d for d, _, _ in rows}, key=lambda d: (DIMENSIONS.index(d) if d in DIMENSIONS else len(DIMENSIONS), d))
    out["per_dimension"] = {d: binary_scores([p for dd, p, _ in rows if dd == d], [t for dd, _, t in rows if dd == d],
                                             positive="no") for d in dims}
    out["parser"] = parser
    return out


def amber_score(chair: float, f1: float) -> float:
    """AMBER's single figure, (1 − CHAIR + F1) / 2 (fractions)."""
    return (1 - chair + f1) / 2


def score_all(responses: dict[int, str], annotations: dict[int, dict], vocab: Vocabulary,
              parser: str = "strict") -> dict:
    """Both halves and, when there are both, the AMBER score."""
    out = {}
    gen = generative_scores(responses, annotations, vocab)
    if gen["n"]:
        out["generative"] = gen
    dis = discriminative_scores(responses, annotations, parser)
    if dis["n"]:
        out["discriminative"] = dis
    if gen["n"] and dis["n"]:
        out["amber_score"] = amber_score(gen["chair"], dis["f1"])
    return out


