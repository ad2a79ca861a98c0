"""What every decoding method gives the benchmarks, the CLI and the app: answers for a batch."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable

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

    @classmethod
    def create(cls, variant: str | None, cfg, cache, name: str) -> "Method":
        """The method registered as ``name`` (``variant``: the part after ``:``, or None); ``cfg`` (an
        :class:`~adapt.config.AdaptConfig` or None) and ``cache`` (a bias-map cache or None) are for the
        methods that read them."""
        return cls()


# ------------------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class Registered:
    """One registered name: its one-line description and how to make it."""

    name: str
    description: str
    variant: str | None
    make: Callable  # (variant, cfg, cache, name) -> Method

    def build(self, cfg=None, cache=None) -> Method:
        return self.make(self.variant, cfg, cache, self.name)


REGISTRY: dict[str, Registered] = {}  # in registration order (the CLI's, the app's and the tables' order)


def register(name: str, description: str, variants: dict[str, str] | None = None):
    """Decorator registering a method under ``name`` and ``name:<variant>`` for each of ``variants``
    (variant -> one-line description). It decorates a :class:`Method` subclass (made by its
    :meth:`Method.create`) or a factory ``(variant, cfg, cache, name) -> Method``. Registering a new
    method is this one decorator (and importing its module in :mod:`adapt.methods`)."""

    def deco(target):
        make = target.create if isinstance(target, type) else target
        for variant, about in [(None, description), *(variants or {}).items()]:
            full = name if variant is None else f"{name}:{variant}"
            if full in REGISTRY:
                raise ValueError(f"method {full!r} is registered twice")
            REGISTRY[full] = Registered(full, " ".join(about.split()), variant, make)
        return target

    return deco
