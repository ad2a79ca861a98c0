"""Grounding from the anchor (paper Table 3a) as registered tasks: ``refcoco`` on RefCOCO / RefCOCOg-style
item files, ``world-grounding`` on the synthetic world's grounding items (exact boxes; the offline fast
path). Both score the same maps of one anchor run (:mod:`adapt.eval.grounding`)."""

from __future__ import annotations

from pathlib import Path

from .. import grounding, refcoco
from .base import Task, load_images, need

REFCOCO_PROMPT = "Where is {expression} in the image?"


class _Grounding(Task):
    description = ""
    table_keys = grounding.TABLE_KEYS
    batch_size = 8

    def __init__(self, config=None, cache=None, threshold: float = 0.5):
        self.config, self.cache, self.threshold = config, cache, threshold

    def _anchor_config(self, method):
        # the anchor run is the same for every decoding method; an ADAPT-TF method brings its own
        # anchor settings (K, fusion, noise images), any other uses the run's configuration
        from ...config import AdaptConfig

        return getattr(method, "cfg", None) or self.config or AdaptConfig()

    def _record(self, backbone, method, item_id, image, question, candidates, gold) -> dict:
        cfg = self._anchor_config(method)
        cache = getattr(method, "cache", None) or self.cache
        rec = grounding.ground(backbone, image, question, candidates, gold, cfg, cache)
        return {"id": item_id, "question": question, **rec}

    def summarise(self, records):
        return grounding.summarise(records, self.threshold)


class RefCoco(_Grounding):
    """RefCOCO / RefCOCO+ / RefCOCOg items (:func:`adapt.eval.refcoco.load_items`: image, expression,
    candidate boxes, gold box): the question is ``prompt`` with the expression filled in."""

    name = "refcoco"
    description = "grounding from the anchor on RefCOCO-style items (accuracy at IoU ≥ 0.5, mIoU; Table 3a)"

    def __init__(self, items: str, images: str, prompt: str = REFCOCO_PROMPT, config=None, cache=None,
                 threshold: float = 0.5):
        super().__init__(config, cache, threshold)
        self.file = need(items, "--items FILE (grounding items JSONL)", self.name)
        self.images = need(images, "--images DIR", self.name)
        if "{expression}" not in prompt:
            raise ValueError("the grounding prompt needs an {expression} placeholder")
        self.prompt = prompt
        self._items = None

    def params(self) -> dict:
        return {"items": str(Path(self.file).resolve()), "images": str(Path(self.images).resolve()),
                "prompt": self.prompt, "threshold": self.threshold}

    def items(self) -> list:
        if self._items is None:
            self._items = [{"id": it.id, "item": it} for it in refcoco.load_items(self.file)]
            ids = [it["id"] for it in self._items]
            if len(set(ids)) != len(ids):
                from ..formats import DataError

                raise DataError(f"{self.file}: item ids repeat; every line needs its own \"id\"")
        return self._items

    def run_batch(self, backbone, method, items):
        images = load_images(self.images, [it["item"].image for it in items])
        return [self._record(backbone, method, it["id"], im, self.prompt.format(expression=it["item"].expression),
                             it["item"].candidates, it["item"].gold) | {"expression": it["item"].expression}
                for it, im in zip(items, images)]


class WorldGrounding(_Grounding):
    """The world's grounding items (:func:`adapt.world.grounding_items`): one per object that its colour
    and category identify, the scene's objects as candidates, exact boxes, the world's own question
    ("where is the red star?")."""

    name = "world-grounding"
    description = "grounding from the anchor on the synthetic world's items (exact boxes; Table 3a offline)"

    def __init__(self, split: str = "test", seed: int | None = None, scenes: int = 200, config=None, cache=None,
                 threshold: float = 0.5):
        super().__init__(config, cache, threshold)
        if split not in ("validation", "test", "train"):
            raise ValueError(f"unknown world split {split!r} (validation, test or train)")
        self.split, self.seed, self.scenes = split, seed, int(scenes)
        self._items = None

    def params(self) -> dict:
        return {"split": self.split, "seed": self.seed, "scenes": self.scenes, "threshold": self.threshold}

    def items(self) -> list:
        if self._items is None:
            from ...world import make_split

            self._items = []
            for i, scene in enumerate(make_split(self.split, self.scenes, seed=self.seed)):
                for g in scene.grounding_items():
                    self._items.append({"id": f"{i}/{g['target']}", "scene": scene, "g": g})
        return self._items

    def run_batch(self, backbone, method, items):
        out = []
        for it in items:
            g = it["g"]
            rec = self._record(backbone, method, it["id"], it["scene"].image(), g["question"], g["candidates"],
                               g["box"])
            out.append(rec | {"expression": g["expression"], "target": g["target"],
                              "n_candidates": len(g["candidates"])})
        return out
