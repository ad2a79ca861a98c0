"""Qwen2-VL (``Qwen2VLForConditionalGeneration``): one dynamic grid per image (see :mod:`.qwen_vl`).

Patch 14 × merge 2 (a token per 28 × 28 pixels), 3-D rope, a plain Qwen2 decoder."""

from __future__ import annotations

from transformers import Qwen2VLProcessor

from .qwen_vl import ImageOnly, QwenVLBackbone


class ImageOnlyQwen2VLProcessor(ImageOnly, Qwen2VLProcessor):
    """Qwen2-VL's processor without its video processor, which needs torchvision."""


class Qwen2VLBackbone(QwenVLBackbone):
    family = "qwen2_vl"
    image_only_processor = ImageOnlyQwen2VLProcessor

    @classmethod
    def model_class(cls):
        from transformers import Qwen2VLForConditionalGeneration

        return Qwen2VLForConditionalGeneration
