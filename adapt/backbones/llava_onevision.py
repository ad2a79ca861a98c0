"""LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``): LLaVA-NeXT's two views (base grid, then the
un-padded anyres grid with an ``image_newline`` key ending each row), with a SigLIP tower (no CLS token:
``vision_feature_select_strategy="full"``; the released models: 27×27 base at 384 px) and ``anyres_max_N``:
when the un-padded grid holds more than N base grids' worth of cells it is down-sampled bilinearly to
``(h // r, w // r)``, r = √(h·w / (N·side²)), where r > 1.1 (``pack_image_features``).

The down-sampled grid covers the same part of the canvas as the grid it came from, with fewer, larger
cells, so the hi-res view's pixel geometry is LLaVA-NeXT's. The stock processor builds a video processor
(torchvision); without it the image-only subclass loads the same folder.
"""

from __future__ import annotations

import math

from .llava_next import LlavaNextBackbone
from .qwen_vl import ImageOnly


def _image_only_processor():
    from transformers import LlavaOnevisionProcessor

    class ImageOnlyLlavaOnevisionProcessor(ImageOnly, LlavaOnevisionProcessor):
        """``LlavaOnevisionProcessor`` without its video processor (which needs torchvision). Its settings
        are named in the signature: ``from_pretrained`` and ``save_pretrained`` pass only those."""

        def __init__(self, image_processor=None, tokenizer=None, num_image_tokens=None,
                     vision_feature_select_strategy=None, chat_template=None, vision_aspect_ratio="anyres_max_9",
                     **kwargs):
            super().__init__(image_processor, tokenizer, chat_template=chat_template, num_image_tokens=num_image_tokens,
                             vision_feature_select_strategy=vision_feature_select_strategy,
                             vision_aspect_ratio=vision_aspect_ratio, **kwargs)

    return ImageOnlyLlavaOnevisionProcessor


class LlavaOnevisionBackbone(LlavaNextBackbone):
    family = "llava_onevision"
    strategy = "full"  # SigLIP has no CLS token: every patch is a base cell

    @classmethod
    def model_class(cls):
        from transformers import LlavaOnevisionForConditionalGeneration

        return LlavaOnevisionForConditionalGeneration

    @classmethod
    def image_only_processor_class(cls):
        return _image_only_processor()

    def _hires_tokens(self, h: int, w: int) -> tuple[int, int]:
        most = int(self.model.config.vision_aspect_ratio.strip("anyres_max_"))
        ratio = math.sqrt(h * w / (most * self._side ** 2))
        if ratio > 1.1:
            return int(h // ratio), int(w // ratio)
        return h, w
