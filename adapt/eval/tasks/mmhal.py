"""MMHal-Bench as a registered task: the method answers each question, the configured judge rates the
answer, both go into the item's record (so a rerun resumes past every judged item)."""

from __future__ import annotations

from pathlib import Path

from .. import mmhal
from .base import Task, load_images, need


class MMHal(Task):
    """MMHal-Bench questions answered by a method and rated 0–6 by an OpenAI-compatible judge.

    Without a judge (``judge=None``, the default) the answers are written and nothing leaves the
    machine; the summary then has no ratings."""

    name = "mmhal"
    description = "MMHal-Bench: answers rated 0-6 by an LLM judge you configure (score, hallucination rate)"
    table_keys = ("score", "hallucination_rate", "judged", "n")
    batch_size = 8

    def __init__(self, questions: str, images: str, judge: mmhal.Judge | None = None, max_new_tokens: int = 512):
        self.file = need(questions, "--questions FILE (MMHal-Bench response_template.json)", self.name)
        self.images = need(images, "--images DIR", self.name)
        self.judge, self.max_new_tokens = judge, max_new_tokens
        self._items = None

    def params(self) -> dict:
        return {"questions": str(Path(self.file).resolve()), "images": str(Path(self.images).resolve()),
                "judge": self.judge.describe() if self.judge else None, "judge_prompt": mmhal.JUDGE_PROMPT,
                "max_new_tokens": self.max_new_tokens}

    def items(self) -> list:
        if self._items is None:
            self._items = [{"id": str(q.index), "q": q} for q in mmhal.load_questions(self.file)]
        return self._items

    def run_batch(self, backbone, method, items):
        qs = [it["q"] for it in items]
        images = load_images(self.images, [mmhal.resolve_image(self.images, q) for q in qs])
        answers = method.answer_batch(backbone, images, [q.question for q in qs], self.max_new_tokens)
        out = []
        for it, q, a in zip(items, qs, answers):
            rec = {"id": it["id"], "question_type": q.question_type, "question": q.question, "answer": a.text,
                   "info": a.info, "judge_response": None, "rating": None}
            if self.judge is not None:
                # a judge failure raises here: this batch is not written, the earlier ones are kept
                rec["judge_response"] = self.judge.rate(mmhal.judge_prompt(q, a.text))
                rec["rating"] = mmhal.parse_rating(rec["judge_response"])
            out.append(rec)
        return out

    def summarise(self, records):
        judged = [r for r in records if r.get("rating") is not None]
        res = mmhal.mmhal_scores([r["rating"] for r in judged], [r["question_type"] for r in judged])
        res.update(judged=len(judged), n=len(records))
        if not judged:
            res.update(score=None, hallucination_rate=None, note="no judge configured (--judge-url): answers only")
        return res
