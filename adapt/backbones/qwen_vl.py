"""The Qwen-VL families (Qwen2-VL, Qwen2.5-VL, Qwen3-VL): one still image is one dynamic grid.

What they share, and what this module implements once:

* the prompt holds ``<|vision_start|> <|image_pad|>×(h·w) <|vision_end|>``, the pads row-major over the
  grid after the spatial merge: (h, w) = ``image_grid_thw[1:] / spatial_merge_size``;
* the image processor resizes with ``smart_resize`` (sides multiples of patch × merge, area within the
  processor's pixel budget), no crop, no pad (:func:`~adapt.backbones.geometry.qwen_geometry`);
* the stock processors build a video processor, which needs torchvision: without it they are loaded as an
  image-only subclass (:class:`ImageOnly`), the same tokenizer, image processor and chat template;
* the decoder is full attention at every layer, so every layer is capturable and the image keys sit at the
  image positions of the padded ``input_ids``. A checkpoint whose text config turns on sliding-window
  layers (``use_sliding_window``, off in every released Qwen-VL) is refused rather than captured wrong.

3-D rope (``mm_token_type_ids``, rope deltas) changes where a key is *rotated*, not where it is *stored*:
the KV cache is still indexed by sequence position, which is all capture and steering need.
"""

from __future__ import annotations

import torch

from ..hooks import ImageSpan
from .base import Backbone, BackboneError
from .geometry import InputGeometry, qwen_geometry


class ImageOnly:
    """Mixin for a Qwen-VL processor class: the same processor without its video processor (which needs
    torchvision). Put it first in the bases: ``class X(ImageOnly, Qwen2VLProcessor)``."""

    @classmethod
    def get_attributes(cls):
        return ["image_processor", "tokenizer"]

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        kwargs.pop("video_processor", None)
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class QwenVLBackbone(Backbone):
    """Shared by the Qwen-VL families; a subclass names its model class and its image-only processor."""

    family = ""
    image_only_processor: type = None  # set by each family

    def __init__(self, model, processor, name: str):
        kinds = set(getattr(model.config.get_text_config(), "layer_types", None) or ["full_attention"])
        if kinds != {"full_attention"}:
            raise BackboneError(f"{name}: {self.family} with {', '.join(sorted(kinds - {'full_attention'}))} "
                                "layers is not supported (only full-attention decoders are captured)")
        super().__init__(model, processor, name)

    @classmethod
    def image_only_processor_class(cls):
        return cls.image_only_processor

    @property
    def merge_size(self) -> int:
        return int(self.model.config.vision_config.spatial_merge_size)

    def image_block_ids(self) -> list[int]:
        """The image pad and the two tokens that wrap it: what a text-only branch masks."""
        cfg = self.model.config
        return [cfg.image_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id]

    def grid_key(self, image) -> tuple:
        """The resized canvas: images of different sizes that resize alike share a grid (and a batch)."""
        return self.input_geometry(image.size).canvas_size

    def _image_span(self, inputs: dict) -> ImageSpan:
        positions = self.image_positions(inputs["input_ids"])
        thw = inputs["image_grid_thw"]
        if bool((thw != thw[0]).any()):
            raise BackboneError("every row of a batch needs the same image grid (group images by size)")
        t, gh, gw = (int(x) for x in thw[0])
        m = self.merge_size
        grid = (gh // m, gw // m)
        if t != 1 or grid[0] * grid[1] != positions.shape[1]:
            raise BackboneError(f"{self.family}: image tokens do not match image_grid_thw (one still image expected)")
        ids = inputs["input_ids"]
        rows = torch.arange(ids.shape[0], device=ids.device)
        # one contiguous run framed by its wrappers, or the grid's row-major order would not hold
        if not (bool((positions[:, -1] - positions[:, 0] + 1 == positions.shape[1]).all())
                and bool((ids[rows, positions[:, 0] - 1] == self.model.config.vision_start_token_id).all())):
            raise BackboneError(f"{self.family}: expected one image as <|vision_start|> pads <|vision_end|>")
        return ImageSpan(positions=positions, grid=grid)

    def input_geometry(self, image_size: tuple[int, int]) -> InputGeometry:
        """A plain resize to ``smart_resize``'s size (sides multiples of patch × merge, area within the
        processor's min / max pixels): every cell lies inside the image, scaled per axis."""
        return qwen_geometry(self.processor.image_processor, image_size)
