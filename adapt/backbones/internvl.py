"""InternVL (HF-native ``InternVLForConditionalGeneration``, model type ``internvl``): an image is cut into
tiles of the tower's size plus a thumbnail, each tile one square grid of image tokens.

How the processor and the model lay an image out (transformers' ``GotOcr2ImageProcessor`` with
``crop_to_patches``, which ``InternVLProcessor`` turns on, and ``InternVLModel.get_image_features``), and
what this module reads of it:

* **tiles**: ``get_optimal_tiled_canvas`` picks ``cols × rows`` tiles (between ``min_patches`` and
  ``max_patches``) whose aspect is closest to the image's; the image is stretched to ``(cols·T) × (rows·T)``
  and cut row-major into T × T tiles (T = the processor's ``size``, 448 px in the released models);
* **thumbnail**: when there is more than one tile, the whole image stretched to T × T comes last;
* **tokens**: per tile ``<IMG_CONTEXT>`` × ``image_seq_length`` = ((T / patch) · downsample_ratio)²; the
  pixel shuffle folds each 2 × 2 block of patches into one token, row-major, so each tile is one
  ``side × side`` grid. The whole block is ``<img> (tile tokens)… </img>``, one contiguous run.

The processor pops the tile count (``num_patches``); the layout recomputes the tiling with the image
processor's own ``get_optimal_tiled_canvas`` and checks it against the token count the processor emitted.
Views: ``tile r,c`` for each tile, then ``thumbnail`` (one tile alone: the plain view ``base``).
The stock processor builds a video processor (torchvision); without it the image-only subclass loads the
same folder.
"""

from __future__ import annotations

from ..hooks import ImageLayout, Views
from .base import Backbone, BackboneError, pixels_per_row
from .geometry import InputGeometry, _get
from .qwen_vl import ImageOnly


def _image_only_processor():
    from transformers import InternVLProcessor

    class ImageOnlyInternVLProcessor(ImageOnly, InternVLProcessor):
        """``InternVLProcessor`` without its video processor (which needs torchvision). Its settings are named
        in the signature: ``from_pretrained`` and ``save_pretrained`` pass only those."""

        def __init__(self, image_processor=None, tokenizer=None, image_seq_length: int = 256, chat_template=None,
                     **kwargs):
            super().__init__(image_processor, tokenizer, chat_template=chat_template,
                             image_seq_length=image_seq_length, **kwargs)

    return ImageOnlyInternVLProcessor


class InternVLBackbone(Backbone):
    family = "internvl"

    def __init__(self, model, processor, name: str):
        strategy = getattr(model.config, "vision_feature_select_strategy", "default")
        if strategy != "default":
            raise BackboneError(f"{name}: internvl with vision_feature_select_strategy={strategy!r} is not supported "
                                "(only 'default' drops the CLS token and leaves a grid of patches)")
        super().__init__(model, processor, name)

    @classmethod
    def model_class(cls):
        """The stock class taking one row of tiles per image (:func:`~adapt.backbones.base.pixels_per_row`)."""
        from transformers import InternVLForConditionalGeneration

        return pixels_per_row(InternVLForConditionalGeneration)

    @classmethod
    def image_only_processor_class(cls):
        return _image_only_processor()

    def image_block_ids(self) -> list[int]:
        """The image tokens and what wraps them: ``<img>`` and ``</img>``."""
        p = self.processor
        return [self.image_token_id, p.start_image_token_id, p.end_image_token_id]

    # the layout ------------------------------------------------------------------------------------
    @property
    def _tile(self) -> tuple[int, int]:
        """(height, width) of one tile in pixels."""
        size = self.processor.image_processor.size
        return int(_get(size, "height")), int(_get(size, "width"))

    @property
    def _side(self) -> int:
        """Image tokens along a tile's side."""
        return int(round(self.processor.image_seq_length ** 0.5))

    def tiling(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """``(rows, cols)`` of tiles the processor cuts an image of ``image_size`` (width, height) into (the
        image processor's own ``get_optimal_tiled_canvas``); ``(1, 1)``: one tile, no thumbnail."""
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

        ip = self.processor.image_processor
        if ip.max_patches <= 1:
            return 1, 1
        width, height = image_size
        cols, rows = get_optimal_tiled_canvas((height, width), self._tile, ip.min_patches, ip.max_patches)
        return rows, cols

    def views_for(self, image_size: tuple[int, int], tiled: bool = True) -> Views:
        """The views an image of ``image_size`` (width, height) gives: ``tile r,c`` row-major then
        ``thumbnail``; a single tile (or ``tiled=False``: the processor called without crop_to_patches) is
        the plain view ``base``."""
        s = self._side
        rows, cols = self.tiling(image_size) if tiled else (1, 1)
        if rows * cols == 1:
            return Views.from_shapes([("base", s, s, False)])
        tiles = [(f"tile {r},{c}", s, s, False) for r in range(rows) for c in range(cols)]
        return Views.from_shapes(tiles + [("thumbnail", s, s, False)])

    def _image_span(self, inputs: dict) -> ImageLayout:
        positions = self.image_positions(inputs["input_ids"])
        n = positions.shape[1]
        per_tile = self.processor.image_seq_length
        if n % per_tile:
            raise BackboneError(f"internvl: {n} image tokens is not a whole number of {per_tile}-token tiles")
        if int((positions[:, -1] - positions[:, 0] + 1 != n).sum()):
            raise BackboneError("internvl: image tokens are expected as one contiguous run")
        sizes = inputs.pop("_image_sizes")  # put there by _build_inputs: the model must not see it
        views = [self.views_for(size, tiled=n > per_tile) for size in sizes]
        if any(v.signature != views[0].signature for v in views):
            raise BackboneError("every row of a batch needs the same InternVL tiling (group_by_grid sorts them)")
        if views[0].n != n:
            raise BackboneError(f"internvl: the processor emitted {n // per_tile} tiles, the tiling of its image "
                                f"processor gives {views[0].n // per_tile}")
        return ImageLayout(positions=positions, views=views[0])

    def _build_inputs(self, images, questions) -> dict:
        inputs = super()._build_inputs(images, questions)
        pv = inputs["pixel_values"]
        if pv.shape[0] % len(images):
            raise BackboneError("every row of a batch needs the same InternVL tiling (group_by_grid sorts them)")
        inputs["pixel_values"] = pv.view(len(images), -1, *pv.shape[1:])  # one row per image: pixels_per_row
        # the processor keeps no image size (it pops num_patches): the layout's tiling needs it
        inputs["_image_sizes"] = [im.size for im in images]
        return inputs

    def grid_key(self, image) -> tuple:
        """Images batch together when they are cut into the same tiles."""
        return self.views_for(image.size).signature

    # pixel geometry --------------------------------------------------------------------------------
    def input_geometry(self, image_size: tuple[int, int]) -> InputGeometry:
        """The thumbnail's (and a single tile's): the whole image stretched to one tile."""
        th, tw = self._tile
        w, h = image_size
        return InputGeometry((w, h), (tw, th), (tw / w, th / h), (0.0, 0.0))

    def view_geometries(self, image_size: tuple[int, int]) -> dict[str, InputGeometry]:
        """Each tile's: the image stretched to ``(cols·T) × (rows·T)``, the tile's T × T box cut out."""
        th, tw = self._tile
        w, h = image_size
        rows, cols = self.tiling(image_size)
        whole = self.input_geometry(image_size)
        out = {"base": whole, "thumbnail": whole}
        scale = (cols * tw / w, rows * th / h)
        for r in range(rows):
            for c in range(cols):
                out[f"tile {r},{c}"] = InputGeometry((w, h), (tw, th), scale, (-float(c * tw), -float(r * th)))
        return out
