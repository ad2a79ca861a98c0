"""Idefics3 / SmolVLM (``Idefics3ForConditionalGeneration``) with image splitting off: one square grid.

The stock processor splits a large image into ``max_image_size`` tiles plus a global view, each tile
written as ``<fake_token_around_image><row_i_col_j><image>×n``: several grids, which the one-grid layout
cannot hold honestly. This backbone turns splitting off (``do_image_splitting=False`` on the image
processor it is given), so every image is the global view alone:

* **Layout**: ``<fake_token_around_image><global-img><image>×n<fake_token_around_image>``, n =
  ``image_seq_len`` = ((image_size / patch) / scale_factor)²; the connector's pixel shuffle folds each
  scale_factor × scale_factor block of patches into one token, row-major, so the tokens are one
  (side × side) grid over the view.
* **Geometry**: the processor resizes the longest edge to ``size`` and then stretches the result to a
  ``max_image_size`` square; together a stretch of the original to that square (no crop, no pad).
* **What it costs**: the model sees the image at ``max_image_size`` (512 px for SmolVLM, 364 for
  Idefics3), not at the tiled resolution it was trained to use for large images; answers may differ from
  the stock processor's. Tiled layouts wait for issue 21's multi-view layout.
* The processor has no video processor, so the stock class loads without torchvision. SmolVLM2
  (``smolvlm``: its processor needs torchvision and num2words for video) is not registered.
"""

from __future__ import annotations

import math

from ..hooks import ImageSpan
from .base import Backbone, BackboneError
from .geometry import InputGeometry


class Idefics3Backbone(Backbone):
    family = "idefics3"

    def __init__(self, model, processor, name: str):
        processor.image_processor.do_image_splitting = False  # one global view: one grid
        super().__init__(model, processor, name)

    @classmethod
    def model_class(cls):
        from transformers import Idefics3ForConditionalGeneration

        return Idefics3ForConditionalGeneration

    @property
    def _view_size(self) -> int:
        return int(self.processor.image_processor.max_image_size["longest_edge"])

    def image_block_ids(self) -> list[int]:
        """The image tokens and what wraps them: ``<fake_token_around_image>`` and ``<global-img>``."""
        p = self.processor
        return [self.image_token_id, p.fake_image_token_id, p.global_image_token_id]

    def _image_span(self, inputs: dict) -> ImageSpan:
        positions = self.image_positions(inputs["input_ids"])
        n = positions.shape[1]
        side = math.isqrt(n)
        if side * side != n or n != self.processor.image_seq_len:
            raise BackboneError(f"idefics3: {n} image tokens, expected one view of {self.processor.image_seq_len}")
        ids = inputs["input_ids"]
        start = positions[:, 0]
        rows = range(ids.shape[0])
        if not (bool((positions[:, -1] - start + 1 == n).all())
                and all(int(ids[b, start[b] - 1]) == self.processor.global_image_token_id for b in rows)):
            raise BackboneError("idefics3: expected one image as <fake_token_around_image><global-img> tokens "
                                "<fake_token_around_image>")
        return ImageSpan(positions=positions, grid=(side, side))

    def input_geometry(self, image_size: tuple[int, int]) -> InputGeometry:
        """The whole image stretched to the ``max_image_size`` square (the two resizes compose to this)."""
        w, h = image_size
        m = self._view_size
        return InputGeometry((w, h), (m, m), (m / w, m / h), (0.0, 0.0))
