"""Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``): dynamic grid after the spatial merge."""

from __future__ import annotations

from transformers import Qwen2_5_VLProcessor

from ..attention import ImageSpan
from .base import Backbone, BackboneError
from .geometry import InputGeometry, qwen_geometry


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL's processor without its video processor, which needs torchvision."""

    @classmethod
    def get_attributes(cls):
        return ["image_processor", "tokenizer"]

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        kwargs.pop("video_processor", None)
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class Qwen2_5_VLBackbone(Backbone):
    family = "qwen2_5_vl"

    @classmethod
    def model_class(cls):
        from transformers import Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLForConditionalGeneration

    @classmethod
    def load_processor(cls, path: str, trust_remote_code: bool = False):
        try:
            processor = super().load_processor(path, trust_remote_code=trust_remote_code)
            if hasattr(processor, "image_processor"):
                return processor
        except (ImportError, ValueError, OSError, TypeError, BackboneError):
            pass
        # without torchvision the stock processor cannot build its video processor
        return ImageOnlyQwen2_5_VLProcessor.from_pretrained(path)

    def grid_key(self, image) -> tuple:
        return tuple(image.size)

    def _image_span(self, inputs: dict) -> ImageSpan:
        positions = self.image_positions(inputs["input_ids"])
        m = self.model.config.vision_config.spatial_merge_size
        thw = inputs["image_grid_thw"]
        if bool((thw != thw[0]).any()):
            raise BackboneError("every row of a batch needs the same image grid (group images by size)")
        t, gh, gw = (int(x) for x in thw[0])
        grid = (gh // m, gw // m)
        if t != 1 or grid[0] * grid[1] != positions.shape[1]:
            raise ValueError("Qwen2.5-VL: image tokens do not match image_grid_thw (one still image expected)")
        return ImageSpan(positions=positions, grid=grid)

    def input_geometry(self, image_size: tuple[int, int]) -> InputGeometry:
        """A plain resize to ``smart_resize``'s size (sides multiples of patch × merge, area within the
        processor's min / max pixels): every cell lies inside the image, scaled per axis."""
        return qwen_geometry(self.processor.image_processor, image_size)
