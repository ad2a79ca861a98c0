"""Real-image tasks on local copies of the public data: CHAIR on COCO, POPE, AMBER."""

from __future__ import annotations

import hashlib
from pathlib import Path

from .. import amber, coco, pope
from ..formats import DataError
from .base import Task, load_images, need

CHAIR_PROMPT = "Please describe this image in detail."


class ChairCoco(Task):
    """CHAIR_s / CHAIR_i / recall / length of detailed descriptions of a fixed sample of COCO images.

    The sample is ``sample`` ids drawn by ``sample_seed`` from the sorted image ids of the annotations
    (:func:`adapt.eval.coco.sample_ids`), or the ids of ``ids_file`` (a published run's list); it is
    written to ``sample_ids.txt`` in the run folder."""

    name = "chair-coco"
    description = "CHAIR on COCO: detailed descriptions of a fixed image sample (Obj-Hal)"
    table_keys = ("chair_s", "chair_i", "recall", "mean_words", "hallucinated_mentions", "mentions", "n")
    batch_size = 8

    def __init__(self, annotations: str, images: str, sample: int = 500, sample_seed: int = 0,
                 ids_file: str | None = None, prompt: str = CHAIR_PROMPT, max_new_tokens: int = 512):
        self.annotations, self.images = need(annotations, "--annotations DIR (COCO instances/captions)", self.name), \
            need(images, "--images DIR (the COCO images)", self.name)
        self.sample, self.sample_seed, self.ids_file = sample, sample_seed, ids_file
        self.prompt, self.max_new_tokens = prompt, max_new_tokens
        self._truth = self._ids = None

    def params(self) -> dict:
        return {"annotations": str(Path(self.annotations).resolve()), "images": str(Path(self.images).resolve()),
                "sample": self.sample, "sample_seed": self.sample_seed, "n_images": len(self._sample()),
                # the ids themselves are in sample_ids.txt; their hash keeps a resumed run on the same images
                "ids_sha256": hashlib.sha256(",".join(map(str, self._sample())).encode()).hexdigest(),
                "prompt": self.prompt, "max_new_tokens": self.max_new_tokens}

    def truth(self) -> coco.CocoTruth:
        if self._truth is None:
            self._truth = coco.load_coco(self.annotations)
        return self._truth

    def _sample(self) -> list[int]:
        if self._ids is None:
            t = self.truth()
            if self.ids_file:
                ids = coco.read_id_list(self.ids_file)
                unknown = [i for i in ids if i not in t.file_names]
                if unknown:
                    raise DataError(f"{self.ids_file}: {len(unknown)} image id(s) not in the annotations, "
                                    f"e.g. {unknown[0]}")
                self._ids = ids
            else:
                self._ids = coco.sample_ids(t.file_names, self.sample, self.sample_seed)
        return self._ids

    def items(self) -> list:
        return [{"id": str(i), "image_id": i} for i in self._sample()]

    def prepare(self, run_dir: Path) -> None:
        (Path(run_dir) / "sample_ids.txt").write_text("".join(f"{i}\n" for i in self._sample()))

    def run_batch(self, backbone, method, items):
        t = self.truth()
        images = load_images(self.images, [t.file_names[it["image_id"]] for it in items])
        answers = method.answer_batch(backbone, images, [self.prompt] * len(items), self.max_new_tokens)
        return [{"id": it["id"], "image_id": it["image_id"], "caption": a.text,
                 "truth": sorted(t.truth(it["image_id"])), "info": a.info} for it, a in zip(items, answers)]

    def summarise(self, records):
        res = coco.chair_scores([r["caption"] for r in records], [r["truth"] for r in records])
        res.pop("per_image")
        return res


class Pope(Task):
    """POPE: yes/no object questions from one or more question files (random / popular / adversarial),
    scored with the chosen parser; the summary's figures are the mean over the splits."""

    name = "pope"
    description = "POPE yes/no object existence (accuracy, precision, recall, F1, yes-ratio; mean over splits)"
    table_keys = ("accuracy", "precision", "recall", "f1", "yes_ratio", "unknown", "n")
    batch_size = 32

    def __init__(self, questions: list[str], images: str, parser: str = "original", prompt_suffix: str = "",
                 max_new_tokens: int = 32):
        self.files = need(questions, "--questions FILE[,FILE...] (POPE question JSONL)", self.name)
        self.images = need(images, "--images DIR", self.name)
        pope.get_parser(parser)
        self.parser, self.prompt_suffix, self.max_new_tokens = parser, prompt_suffix, max_new_tokens
        self._items = None

    def params(self) -> dict:
        return {"questions": [str(Path(f).resolve()) for f in self.files], "images": str(Path(self.images).resolve()),
                "parser": self.parser, "prompt_suffix": self.prompt_suffix, "max_new_tokens": self.max_new_tokens}

    def items(self) -> list:
        if self._items is None:
            self._items = []
            for f in self.files:
                for q in pope.load_questions(f):
                    # every public split numbers its questions from 1: the file keeps them apart
                    self._items.append({"id": f"{q.split or Path(f).stem}/{q.question_id}", "q": q})
            ids = [it["id"] for it in self._items]
            if len(set(ids)) != len(ids):
                raise DataError("two question files share a split and question ids; give each split once")
        return self._items

    def run_batch(self, backbone, method, items):
        qs = [it["q"] for it in items]
        images = load_images(self.images, [q.image for q in qs])
        answers = method.answer_batch(backbone, images, [q.text + self.prompt_suffix for q in qs], self.max_new_tokens)
        parse = pope.get_parser(self.parser)
        return [{"id": it["id"], "question_id": q.question_id, "split": q.split, "label": q.label, "answer": a.text,
                 "pred": parse(a.text), "info": a.info} for it, q, a in zip(items, qs, answers)]

    def summarise(self, records):
        # re-parsed from the stored answers, so a record written under another parser scores right
        parse = pope.get_parser(self.parser)
        splits = [r["split"] for r in records]
        return pope.pope_scores([parse(r["answer"]) for r in records], [r["label"] for r in records],
                                splits if any(splits) else None)


class Amber(Task):
    """AMBER: its generative (“Describe this image.”) and yes/no queries; CHAIR / Cover / Hal / Cog and
    accuracy / precision / recall / F1 with "no" positive (see :mod:`adapt.eval.amber` for the matching)."""

    name = "amber"
    description = "AMBER generative (CHAIR, Cover, Hal, Cog) and discriminative ('no' positive)"
    table_keys = ("chair", "cover", "hal", "cog", "accuracy", "precision", "recall", "f1", "amber_score", "n")
    batch_size = 16

    def __init__(self, queries: str, annotations: str, association: str, images: str, safe_words: str | None = None,
                 parser: str = "strict", max_new_tokens: int = 512, yes_no_tokens: int = 32):
        self.queries = need(queries, "--queries FILE (AMBER query JSON)", self.name)
        self.annotations = need(annotations, "--annotations FILE (AMBER annotations.json)", self.name)
        self.association = need(association, "--association FILE (AMBER relation.json)", self.name)
        self.images = need(images, "--images DIR", self.name)
        self.safe_words, self.parser = safe_words, parser
        self.max_new_tokens, self.yes_no_tokens = max_new_tokens, yes_no_tokens
        self._ann = self._vocab = None

    def params(self) -> dict:
        return {k: (str(Path(v).resolve()) if v else None) for k, v in (
            ("queries", self.queries), ("annotations", self.annotations), ("association", self.association),
            ("safe_words", self.safe_words), ("images", self.images))} | {
            "parser": self.parser, "max_new_tokens": self.max_new_tokens, "yes_no_tokens": self.yes_no_tokens}

    def _load(self):
        if self._ann is None:
            self._ann = amber.load_annotations(self.annotations)
            self._vocab = amber.Vocabulary(amber.load_association(self.association),
                                           amber.load_safe_words(self.safe_words))
        return self._ann, self._vocab

    def items(self) -> list:
        ann, _ = self._load()
        return [{"id": str(q.id), "q": q, "kind": ann[q.id]["type"]} for q in amber.load_queries(self.queries)
                if q.id in ann]

    def run_batch(self, backbone, method, items):
        out = {}
        for gen in (True, False):  # descriptions and yes/no answers have very different lengths
            group = [it for it in items if (it["kind"] == "generative") == gen]
            if not group:
                continue
            images = load_images(self.images, [it["q"].image for it in group])
            answers = method.answer_batch(backbone, images, [it["q"].query for it in group],
                                          self.max_new_tokens if gen else self.yes_no_tokens)
            for it, a in zip(group, answers):
                out[it["id"]] = {"id": it["id"], "kind": it["kind"], "response": a.text, "info": a.info}
        return [out[it["id"]] for it in items]

    def summarise(self, records):
        ann, vocab = self._load()
        res = amber.score_all({int(r["id"]): r["response"] for r in records}, ann, vocab, self.parser)
        flat = {"n": len(records)}
        if "generative" in res:
            g = res["generative"]
            flat.update({k: g[k] for k in ("chair", "cover", "hal", "cog")}, generative_n=g["n"])
        if "discriminative" in res:
            d = res["discriminative"]
            flat.update({k: d[k] for k in ("accuracy", "precision", "recall", "f1")}, yes_no_n=d["n"],
                        per_dimension={k: {m: v[m] for m in ("accuracy", "precision", "recall", "f1", "n")}
                                       for k, v in d["per_dimension"].items()})
        if "amber_score" in res:
            flat["amber_score"] = res["amber_score"]
        return flat
