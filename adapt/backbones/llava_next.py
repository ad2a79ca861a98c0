"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``): a base grid, then the un-padded hi-res grid of the
anyres tiles with an ``image_newline`` key ending each of its rows; every one of those tokens carries the
image token id, in one contiguous run.

How the processor and the model lay an image out (transformers' ``LlavaNextImageProcessor`` and
``pack_image_features``), and what this module reads of it:

* **base**: the whole image stretched to the processor's ``size`` (then its resize / centre crop), one
  vision-tower pass, ``(image_size / patch)²`` tokens (``vision_feature_select_strategy="default"`` drops the
  CLS token; ``"full"`` would leave one key that is no cell, and is refused);
* **hires**: the image resized into the best of ``image_grid_pinpoints`` keeping its aspect, padded to it
  centred, cut into tiles of the tower's size; their features form one ``(rows·side) × (cols·side)`` grid,
  from which ``unpad_image`` removes the rows or columns that were padding. Each remaining row is followed
  by the ``image_newline`` key: the view is ``h × w`` with stride ``w + 1``.

The layout is computed from the processor's ``image_sizes`` with transformers' own
``get_anyres_image_grid_shape`` and ``unpad_image`` (the model's functions), so it is the model's layout by
construction; the tests check it against the token count the processor emitted.
"""

from __future__ import annotations

import numpy as np
import torch

from ..hooks import ImageLayout, Views
from .base import Backbone, BackboneError
from .geometry import InputGeometry, resized_hw, _get


class LlavaNextBackbone(Backbone):
    family = "llava_next"
    # the feature strategy that leaves the base view (image_size / patch)² keys: CLIP drops its CLS token
    strategy = "default"

    def __init__(self, model, processor, name: str):
        strategy = getattr(model.config, "vision_feature_select_strategy", "default")
        if strategy != self.strategy:
            raise BackboneError(f"{name}: {self.family} with vision_feature_select_strategy={strategy!r} is not "
                                f"supported (only {self.strategy!r} makes the base view a grid of patches)")
        super().__init__(model, processor, name)

    @classmethod
    def model_class(cls):
        from transformers import LlavaNextForConditionalGeneration

        return LlavaNextForConditionalGeneration

    # the layout ------------------------------------------------------------------------------------
    @property
    def _side(self) -> int:
        vc = self.model.config.vision_config
        return vc.image_size // vc.patch_size

    def _hires_grid(self, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """((tile rows, tile cols), (h, w) of the un-padded hi-res feature grid) for an original
        ``height × width``."""
        from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image

        cfg = self.model.config
        rows, cols = get_anyres_image_grid_shape((height, width), cfg.image_grid_pinpoints,
                                                 cfg.vision_config.image_size)
        side = self._side
        # unpad_image reads only the shape: a zero-stride view stands for the feature map
        feat = torch.zeros(1, 1, 1).expand(1, rows * side, cols * side)
        h, w = unpad_image(feat, (height, width)).shape[1:]
        return (rows, cols), (int(h), int(w))

    def views_for(self, image_size: tuple[int, int]) -> Views:
        """The views an image of ``image_size`` (width, height) gives: ``base`` then ``hires``."""
        width, height = image_size
        side = self._side
        h, w = self._hires_tokens(*self._hires_grid(height, width)[1])
        return Views.from_shapes([("base", side, side, False), ("hires", h, w, True)])

    def _hires_tokens(self, h: int, w: int) -> tuple[int, int]:
        """The hi-res view's token grid from the un-padded feature grid (LLaVA-NeXT: the same)."""
        return h, w

    def _image_span(self, inputs: dict) -> ImageLayout:
        positions = self.image_positions(inputs["input_ids"])
        sizes = inputs["image_sizes"].tolist()  # (height, width) per row, as the processor stored them
        views = [self.views_for((int(w), int(h))) for h, w in sizes]
        if any(v.signature != views[0].signature for v in views):
            raise BackboneError("every row of a batch needs the same LLaVA-NeXT layout (group_by_grid sorts them)")
        p = positions[0]
        if int(p[-1] - p[0]) + 1 != positions.shape[1]:
            raise BackboneError("LLaVA-NeXT image tokens are expected as one contiguous run")
        return ImageLayout(positions=positions, views=views[0])

    def grid_key(self, image) -> tuple:
        """Images batch together when they give the same views (the hi-res grid follows the aspect)."""
        return self.views_for(image.size).signature

    # pixel geometry --------------------------------------------------------------------------------
    def input_geometry(self, image_size: tuple[int, int]) -> InputGeometry:
        """The base view's: the whole image stretched to ``size``, then the processor's resize and centre
        crop (an identity with the released configs)."""
        return self.view_geometries(image_size)["base"]

    def view_geometries(self, image_size: tuple[int, int]) -> dict[str, InputGeometry]:
        ip = self.processor.image_processor
        width, height = image_size
        size = ip.size
        sh = _get(size, "height") or _get(size, "shortest_edge")
        sw = _get(size, "width") or _get(size, "shortest_edge")
        # every crop of the base image then goes through resize(size) and centre crop(crop_size)
        rh, rw = resized_hw(sh, sw, size) if ip.do_resize else (sh, sw)
        crop = ip.crop_size if ip.do_center_crop and ip.crop_size is not None else None
        ch, cw = (int(_get(crop, "height")), int(_get(crop, "width"))) if crop else (rh, rw)
        base = InputGeometry((width, height), (cw, ch), (rw / width, rh / height),
                             (-float((rw - cw) // 2), -float((rh - ch) // 2)))
        return {"base": base, "hires": self._hires_geometry(width, height)}

    def _hires_geometry(self, width: int, height: int) -> InputGeometry:
        """The anyres canvas: resized keeping the aspect into the best pinpoint, pasted centred, then the
        feature rows / columns ``unpad_image`` removed cut off again (a down-sampled grid covers the same
        region with fewer cells)."""
        from transformers.image_processing_utils import get_patch_output_size, select_best_resolution
        from transformers.image_utils import ChannelDimension

        ip = self.processor.image_processor
        bh, bw = select_best_resolution((height, width), ip.image_grid_pinpoints)
        shape_only = np.broadcast_to(np.zeros((1, 1, 1), dtype=np.uint8), (1, height, width))
        nh, nw = get_patch_output_size(shape_only, (bh, bw), input_data_format=ChannelDimension.FIRST)
        paste_y, paste_x = (bh - nh) // 2, (bw - nw) // 2
        (rows, cols), (h, w) = self._hires_grid(height, width)
        full_h, full_w = rows * self._side, cols * self._side
        cell_y, cell_x = bh / full_h, bw / full_w  # canvas pixels per feature cell
        top, left = (full_h - h) // 2, (full_w - w) // 2
        return InputGeometry((width, height), (w * cell_x, h * cell_y), (nw / width, nh / height),
                             (paste_x - left * cell_x, paste_y - top * cell_y))
