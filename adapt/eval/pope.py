"""POPE (Li et al. 2023): yes/no object-existence questions, their answer parsers and metrics.

Question files are the public JSONL (``question_id, image, text, label``); answer files are
``{"question_id", "text"}`` lines, the format LLaVA's evaluation scripts write. "yes" is the positive
class and the yes-ratio is that of the *predictions* (lmms-eval computes it from the labels).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .formats import DataError, iter_jsonl

SPLITS = ("random", "popular", "adversarial")
UNKNOWN = "unknown"


def parse_original(text: str) -> str:
    """The original POPE parser: the text before the first ".", commas dropped, split on spaces; "No",
    "no" or "not" among the words -> "no", anything else (an empty answer too) -> "yes"."""
    t = text.strip()
    if "." in t:
        t = t.split(".")[0]
    words = t.replace(",", "").split(" ")
    return "no" if ("No" in words or "no" in words or "not" in words) else "yes"


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def parse_strict(text: str) -> str:
    """The answer's first word, case and punctuation ignored: "yes" or "no"; anything else is
    "unknown" (counted wrong)."""
    words = _words(text)
    return words[0] if words and words[0] in ("yes", "no") else UNKNOWN


def parse_exclusive(text: str) -> str:
    """Yes/no-exclusive: "yes" when the answer has "yes" and no negation ("no", "not", "n't"), "no"
    for the reverse, "unknown" when it has both or neither ("I cannot tell" is unknown)."""
    words = _words(text)
    has_yes = "yes" in words
    has_no = any(w in ("no", "not") or w.endswith("n't") for w in words)
    if has_yes == has_no:
        return UNKNOWN
    return "yes" if has_yes else "no"


PARSERS: dict[str, Callable[[str], str]] = {"original": parse_original, "strict": parse_strict,
                                            "exclusive": parse_exclusive}


def get_parser(name: str) -> Callable[[str], str]:
    """The parser registered under ``name`` (original | strict | exclusive)."""
    try:
        return PARSERS[name]
    except KeyError:
        raise ValueError(f"unknown POPE parser {name!r} (available: {', '.join(PARSERS)})") from None


def binary_scores(preds: Sequence[str], labels: Sequence[str], positive: str = "yes") -> dict:
    """Accuracy, precision, recall, F1 and the positive-prediction ratio of yes/no predictions.

    ``positive`` is the positive class ("yes" for POPE, "no" for AMBER). A prediction that is neither
    yes nor no ("unknown") is wrong: it counts in accuracy's denominator and, on a positive label, as a
    false negative; ``unknown`` is how many there were."""
    if len(preds) != len(labels):
        raise ValueError("preds and labels differ in length")
    tp = fp = tn = fn = unknown = 0
    for p, l in zip(preds, labels):
        p, l = p.strip().lower(), l.strip().lower()
        if l not in ("yes", "no"):
            raise ValueError(f"a label is {l!r}, not yes/no")
        if p not in ("yes", "no"):
            unknown += 1
            fn += l == positive
            continue
        if p == positive:
            tp += l == positive
            fp += l != positive
        else:
            tn += l != positive
            fn += l == positive
    n = len(preds)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / n if n else 0.0, "precision": precision, "recall": recall, "f1": f1,
            f"{positive}_ratio": (tp + fp) / n if n else 0.0, "unknown": unknown, "n": n}


METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio")


def pope_scores(preds: Sequence[str], labels: Sequence[str], splits: Sequence[str | None] | None = None) -> dict:
    """POPE's metrics of parsed predictions. With ``splits`` (each question's split, or None) the result
    also holds ``per_split`` and, as the top-level figures, the mean over the splits (the number papers
    report); ``pooled`` is always the figures over all questions together."""
    pooled = binary_scores(preds, labels, "yes")
    out = {"pooled": pooled}
    names = sorted({s for s in splits if s is not None}, key=_split_order) if splits is not None else []
    if names:
        per = {}
        for name in names:
            idx = [i for i, s in enumerate(splits) if s == name]
            per[name] = binary_scores([preds[i] for i in idx], [labels[i] for i in idx], "yes")
        out["per_split"] = per
        out.update({k: sum(per[s][k] for s in names) / len(names) for k in METRICS})
        out["n"] = pooled["n"]
        out["unknown"] = pooled["unknown"]
    else:
        out.update({k: pooled[k] for k in (*METRICS, "unknown", "n")})
    return out


def _split_order(name: str) -> tuple:
    return (SPLITS.index(name) if name in SPLITS else len(SPLITS), name)


@dataclass
class PopeQuestion:
    """One POPE question."""

    question_id: str
    image: str
    text: str
    label: str
    split: str | None = None


def split_of_file(path: Path) -> str | None:
    """The split a POPE file's name says (``coco_pope_adversarial.json[l]`` -> adversarial)."""
    for s in SPLITS:
        if s in path.name.lower():
            return s
    return None


def load_questions(path: str | Path) -> list[PopeQuestion]:
    """POPE questions of one JSONL file. The split is the line's ``split`` or ``category`` field
    (lmms-eval's copy names it so), else the one the file name says, else None."""
    path = Path(path)
    file_split = split_of_file(path)
    out, seen = [], set()
    for lineno, obj in iter_jsonl(path, ("question_id", "image", "text", "label"), "POPE question file"):
        label = str(obj["label"]).strip().lower()
        if label not in ("yes", "no"):
            raise DataError(f"{path}, line {lineno}: label is {obj['label']!r}, not yes/no")
        qid = str(obj["question_id"])
        if qid in seen:
            raise DataError(f"{path}, line {lineno}: question_id {obj['question_id']!r} appears twice")
        seen.add(qid)
        out.append(PopeQuestion(qid, str(obj["image"]), str(obj["text"]), label,
                                obj.get("split") or obj.get("category") or file_split))
    return out


def load_answers(path: str | Path, text_keys: tuple[str, ...] = ("text", "answer", "response")) -> dict[str, str]:
    """``question_id -> answer text`` of an answer JSONL (``{"question_id", "text"}`` lines)."""
    out = {}
    for lineno, obj in iter_jsonl(path, ("question_id",), "answer file"):
        key = next((k for k in text_keys if k in obj), None)
        if key is None:
            raise DataError(f"{path}, line {lineno}: no answer text (field 'text')")
        if obj[key] is None:
            raise DataError(f"{path}, line {lineno}: the answer text is null")
        qid = str(obj["question_id"])
        if qid in out:
            raise DataError(f"{path}, line {lineno}: a second answer to question_id {obj['question_id']!r}")
        out[qid] = str(obj[key])
    return out


def score_answers(questions: list[PopeQuestion], answers: dict[str, str], parser: str = "original") -> dict:
    """Score an answer file against its questions. Questions without an answer are left out and counted
    (``missing``), as are answers to no known question (``extra``)."""
    parse = get_parser(parser)
    asked = [q for q in questions if q.question_id in answers]
    res = pope_scores([parse(answers[q.question_id]) for q in asked], [q.label for q in asked],
                      [q.split for q in asked] if any(q.split for q in asked) else None)
    known = {q.question_id for q in questions}
    res.update({"parser": parser, "missing": len(questions) - len(asked),
                "extra": sum(1 for k in answers if k not in known)})
    return res
