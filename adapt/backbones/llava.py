"""LLaVA-1.5 (``LlavaForConditionalGeneration``): one contiguous run of h·w image tokens."""

from __future__ import annotations

import math

from ..hooks import ImageSpan
from .base import Backbone, BackboneError
from .geometry import InputGeometry, clip_style_geometry


class LlavaBackbone(Backbone):
    family = "llava"

    @classmethod
    def model_class(cls):
        from transformers import LlavaForConditionalGeneration

        return LlavaForConditionalGeneration

    def _image_span(self, inputs: dict) -> ImageSpan:
        positions = self.image_positions(inputs["input_ids"])
        n = positions.shape[1]
        vc = self.model.config.vision_config
        side = vc.image_size // vc.patch_size
        if side * side == n:
            grid = (side, side)
        else:  # a processor resizing to a non-square input: fall back to the squarest factorisation
            h = int(math.isqrt(n))
            while n % h:
                h -= 1
            grid = (h, n // h)
        p = positions[0]
        if int(p[-1] - p[0]) + 1 != n:
            raise BackboneError("LLaVA image tokens are expected as one contiguous run")
        return ImageSpan(positions=positions, grid=grid)

    def input_geometry(self, image_size: tuple[int, int]) -> InputGeometry:
        """The image processor's own pad-to-square (if ``do_pad``), resize (``size``) and centre crop
        (``crop_size``): llava-1.5-hf crops a 336-pixel square from the middle of the resized image."""
        return clip_style_geometry(self.processor.image_processor, image_size)
