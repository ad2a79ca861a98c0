"""What every decoding method gives the benchmarks, the CLI and the app: answers for a batch."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from PIL import Image

from ..backbones import Backbone, Generation
from ..backbones.base import group_by_grid


@dataclass
class Answer:
    """One answer: its text and tokens, and what the method reports about it (``info``: tokens,
    steered / monitored (step, layer) pairs, ...)."""

    text: str
    token_ids: list[int]
    info: dict = field(default_factory=dict)
    generation: Generation | None = None
    # what a method keeps for a full analysis beside ``info`` (arrays, the anchor: never written to the
    # JSON results); ADAPT-TF with ``record=True`` fills it (:class:`adapt.methods.adapt_tf.AdaptRecord`)
    record: object | None = None


class Method(ABC):
    """A decoding method, looked up by name in :mod:`adapt.methods`.

    Subclasses implement :meth:`_answer_group` for pairs that share one image-token grid."""

    name = ""
    description = ""

    def answer_batch(self, backbone: Backbone, images: list[Image.Image], questions: list[str],
                     max_new_tokens: int, **generate_kwargs) -> list[Answer]:
        """Answers for every (image, question), batched per image-token grid, in input order.
        ``generate_kwargs`` go to ``model.generate`` (e.g. ``min_new_tokens`` for timing)."""
        out: list[Answer | None] = [None] * len(images)
        for idx in group_by_grid(backbone, images):
            answers = self._answer_group(backbone, [images[i] for i in idx], [questions[i] for i in idx],
                                         max_new_tokens, **generate_kwargs)
            for i, a in zip(idx, answers):
                out[i] = a
        return out

    def answer(self, backbone: Backbone, image: Image.Image, question: str, max_new_tokens: int,
               **generate_kwargs) -> Answer:
        return self.answer_batch(backbone, [image], [question], max_new_tokens, **generate_kwargs)[0]

    @abstractmethod
    def _answer_group(self, backbone, images, questions, max_new_tokens, **generate_kwargs) -> list[Answer]:
        """Answers for pairs that share one image-token grid, in order."""

    def config_dict(self) -> dict:
        return {}
