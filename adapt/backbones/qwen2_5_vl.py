"""Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``): one dynamic grid per image (see :mod:`.qwen_vl`)."""

from __future__ import annotations

from transformers import Qwen2_5_VLProcessor

from .qwen_vl import ImageOnly, QwenVLBackbone


class ImageOnlyQwen2_5_VLProcessor(ImageOnly, Qwen2_5_VLProcessor):
    """Qwen2.5-VL's processor without its video processor, which needs torchvision."""


class Qwen2_5_VLBackbone(QwenVLBackbone):
    family = "qwen2_5_vl"
    image_only_processor = ImageOnlyQwen2_5_VLProcessor

    @classmethod
    def model_class(cls):
        from transformers import Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLForConditionalGeneration
