"""``python -m adapt score {pope, chair, amber}``: score answer files written by any tool with this
project's metric code (so results from other harnesses can be checked against ours)."""

from __future__ import annotations

from pathlib import Path

from .argtypes import out_file
from .eval import amber, coco, pope
from .eval.formats import DataError, iter_jsonl, write_json


def score_pope(questions: str, answers: str, parser: str = "original") -> dict:
    """POPE metrics of an answer file (``{"question_id", "text"}`` lines) against a question file."""
    return pope.score_answers(pope.load_questions(questions), pope.load_answers(answers), parser)


def read_captions(path: str | Path) -> dict[int, str]:
    """``image_id -> caption`` of a captions JSONL (``{"image_id", "caption"}`` lines; the id may be a COCO
    file name)."""
    out = {}
    for lineno, obj in iter_jsonl(path, ("image_id", "caption"), "caption file"):
        try:
            image_id = coco.image_id_of(obj["image_id"])
        except ValueError:
            raise DataError(f"{path}, line {lineno}: image_id {obj['image_id']!r} is not an id or a COCO file name") from None
        if image_id in out:
            raise DataError(f"{path}, line {lineno}: a second caption for image {image_id}")
        out[image_id] = str(obj["caption"])
    return out


def score_chair(captions: str, annotations: str) -> dict:
    """CHAIR of a captions file against a COCO annotation folder (``instances_*.json``, ``captions_*.json``).
    Captions of images the annotations do not know are left out and counted (``skipped``)."""
    caps = read_captions(captions)
    truth = coco.load_coco(annotations)
    known = set(truth.image_ids())
    ids = [i for i in caps if i in known]
    res = coco.chair_scores([caps[i] for i in ids], [truth.truth(i) for i in ids], ids=ids)
    res["skipped"] = len(caps) - len(ids)
    res["annotation_files"] = truth.files
    return res


def score_amber(responses: str, annotations: str, association: str, safe_words: str | None,
                parser: str = "strict") -> dict:
    """AMBER's metrics of a response file (JSON list or JSONL of ``{id, response}``)."""
    vocab = amber.Vocabulary(amber.load_association(association), amber.load_safe_words(safe_words))
    res = amber.score_all(amber.load_responses(responses), amber.load_annotations(annotations), vocab, parser)
    if not res:
        raise DataError(f"{responses}: no response has an annotation in {annotations}")
    return res


def _line(name: str, scores: dict, keys) -> str:
    return f"{name:16s}" + "  ".join(f"{k} {scores[k]:.4f}" for k in keys if scores.get(k) is not None)


def run_score(args) -> int:
    """Run one ``score`` subcommand: print the figures, write them to ``--out``."""
    if args.benchmark == "pope":
        res = score_pope(args.questions, args.answers, args.parser)
        print(_line("all" if "per_split" not in res else "mean of splits", res, pope.METRICS))
        for split, s in res.get("per_split", {}).items():
            print(_line(split, s, pope.METRICS))
        print(f"{res['n']} answers scored ({args.parser} parser, {res['unknown']} unknown); "
              f"{res['missing']} questions without an answer, {res['extra']} answers to unknown questions")
    elif args.benchmark == "chair":
        res = score_chair(args.captions, args.annotations)
        print(_line("CHAIR", res, ("chair_s", "chair_i", "recall", "mean_words")))
        print(f"{res['n']} captions scored, {res['hallucinated_mentions']} of {res['mentions']} mentions "
              f"hallucinated; {res['skipped']} captions of images the annotations do not have were skipped")
    else:
        res = score_amber(args.responses, args.annotations, args.association, args.safe_words, args.parser)
        if "generative" in res:
            print(_line("generative", res["generative"], ("chair", "cover", "hal", "cog")))
        if "discriminative" in res:
            d = res["discriminative"]
            print(_line("yes/no (no +)", d, ("accuracy", "precision", "recall", "f1")))
            for dim, s in d["per_dimension"].items():
                print(_line(dim, s, ("accuracy", "precision", "recall", "f1")))
        if "amber_score" in res:
            print(f"AMBER score {res['amber_score']:.4f}")
        print("nouns: vocabulary words, no POS tagger or word-vector matching (see adapt/eval/amber.py)")
    if args.out:
        write_json(args.out, res)
        print(f"wrote {args.out}")
    return 0


def add_parser(sub, fn) -> None:
    """Register ``score`` and its benchmarks on the CLI's subparsers; ``fn`` runs them."""
    s = sub.add_parser("score", help="score existing answer files (POPE, CHAIR on COCO, AMBER)")
    b = s.add_subparsers(dest="benchmark", required=True, parser_class=type(s))
    p = b.add_parser("pope", help="POPE answers ({question_id, text} lines) against a question file")
    p.add_argument("--questions", required=True, help="POPE question JSONL (question_id, image, text, label)")
    p.add_argument("--answers", required=True, help="answer JSONL ({question_id, text} lines)")
    p.add_argument("--parser", default="original", choices=list(pope.PARSERS),
                   help="original: POPE's (no/not -> no, else yes); strict: first word yes/no, else unknown; "
                        "exclusive: yes xor negation, else unknown")
    p.add_argument("--out", type=out_file, help="write the metrics here (JSON)")
    c = b.add_parser("chair", help="CHAIR of captions ({image_id, caption} lines) on COCO")
    c.add_argument("--captions", required=True, help="caption JSONL ({image_id, caption} lines)")
    c.add_argument("--annotations", required=True, help="folder with COCO instances_*.json and captions_*.json")
    c.add_argument("--out", type=out_file, help="write the metrics and per-image results here (JSON)")
    a = b.add_parser("amber", help="AMBER responses ({id, response}) against its annotations")
    a.add_argument("--responses", required=True, help="JSON list (or JSONL) of {id, response}")
    a.add_argument("--annotations", required=True, help="AMBER annotations.json")
    a.add_argument("--association", required=True, help="AMBER relation.json (word associations)")
    a.add_argument("--safe-words", default=None, help="AMBER safe_words.txt")
    a.add_argument("--parser", default="strict", choices=list(pope.PARSERS), help="yes/no parser")
    a.add_argument("--out", type=out_file, help="write the metrics here (JSON)")
    for q in (p, c, a):
        q.set_defaults(fn=fn)


__all__ = ["score_pope", "score_chair", "score_amber", "read_captions", "run_score", "add_parser"]
