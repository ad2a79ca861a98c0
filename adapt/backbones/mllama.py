"""Mllama (Llama 3.2 Vision, ``MllamaForConditionalGeneration``): the image enters through cross-attention.

* **Where the image keys are**: not in the sequence. The prompt holds one ``<|image|>`` token; the
  cross-attention layers (``text_config.cross_attention_layers``) call the attention interface with the
  text as query and the projected vision states as keys and values: ``max_num_tiles`` tiles of
  ``(image_size / patch)² + 1`` columns each (the tile's class token first, then its patches row-major),
  computed in the prefill and read from the cache at every step. Tiles the image does not fill are
  masked by ``cross_attention_mask`` (additive, ``finfo.min``).
* **Key map**: the cross-attention layers are the captured ones (their image keys: every real tile's patch
  columns); the self-attention layers are not captured (one ``<|image|>`` key, no grid), reported in each
  generation's ``keys``. A cross layer counts its own calls for its step (its key count never grows).
* **Layout**: one view ``tile r,c`` (patches_per_side²) per real tile (row r, column c of the canvas);
  positions = those key columns. The class-token columns and the padded tiles are outside the layout
  (like text keys: captured maps do not show them and a write does not move mass onto them). ``text_positions`` is the ``<|image|>`` token's
  sequence position: the prompt rows after it are the ones ``prefill_text`` averages.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..hooks import ImageSpan
from ..hooks.keymap import CROSS, TEXT_SELF, KeyMap
from ..hooks.layout import Views
from .base import Backbone, BackboneError
from .geometry import InputGeometry


@dataclass(frozen=True)
class CrossLayout(ImageSpan):
    """An :class:`~adapt.hooks.layout.ImageLayout` whose positions are cross-attention key columns, with
    the sequence position of each row's image token (``[B, 1]``)."""

    text_positions: torch.Tensor = None


class MllamaBackbone(Backbone):
    family = "mllama"

    @classmethod
    def model_class(cls):
        from transformers import MllamaForConditionalGeneration

        return MllamaForConditionalGeneration

    @property
    def key_map(self) -> KeyMap:
        km = getattr(self, "_key_map", None)
        if km is None:
            cross = set(self.text_config.cross_attention_layers)
            km = self._key_map = KeyMap(tuple(CROSS if i in cross else TEXT_SELF
                                              for i in range(self.text_config.num_hidden_layers)))
        return km

    def _build_inputs(self, images, questions) -> dict:
        inputs = self.processor(images=[[im] for im in images], text=[self.prompt(q) for q in questions],
                                return_tensors="pt", padding=True)
        return dict(inputs)

    def _canvas(self, image_size: tuple[int, int]) -> tuple[int, int, int, int, int]:
        """The processor's rule: ``(tiles_h, tiles_w, resized_h, resized_w, tile)``: the image resized to fit
        the best canvas of ``tiles_h × tiles_w`` tiles (aspect kept), padded at the bottom and right."""
        from transformers.models.mllama.image_processing_pil_mllama import (get_image_size_fit_to_canvas,
                                                                            get_optimal_tiled_canvas)

        ip = self.processor.image_processor
        tile = ip.size["height"]
        w, h = image_size
        ch, cw = get_optimal_tiled_canvas(image_height=h, image_width=w, max_image_tiles=ip.max_image_tiles,
                                          tile_size=tile)
        nh, nw = get_image_size_fit_to_canvas(image_height=h, image_width=w, canvas_height=ch, canvas_width=cw,
                                              tile_size=tile)
        return int(ch) // tile, int(cw) // tile, int(nh), int(nw), tile

    def grid_key(self, image) -> tuple:
        """The tile arrangement decides the layout."""
        return self._canvas(image.size)[:2]

    def input_geometry(self, image_size: tuple[int, int]) -> InputGeometry:
        """The first tile's (what a one-tile image's plain grid is drawn through)."""
        return self.view_geometries(image_size)["tile 0,0"]

    def view_geometries(self, image_size: tuple[int, int]) -> dict[str, InputGeometry]:
        """Tile r,c is the canvas window at row r, column c (tiles are cut row-major)."""
        th, tw, nh, nw, tile = self._canvas(image_size)
        scale = (nw / image_size[0], nh / image_size[1])
        return {f"tile {r},{c}": InputGeometry(tuple(image_size), (tile, tile), scale, (-c * tile, -r * tile))
                for r in range(th) for c in range(tw)}

    def _image_span(self, inputs: dict) -> ImageSpan:
        vc = self.model.config.vision_config
        side = vc.image_size // vc.patch_size
        per_tile = side * side + 1
        tiles = inputs["aspect_ratio_mask"].sum(-1)  # [B, images]
        if tiles.shape[1] != 1:
            raise BackboneError("Mllama: one image per prompt expected")
        ratios = inputs["aspect_ratio_ids"]
        if bool((ratios != ratios[0]).any()):
            raise BackboneError("every row of an Mllama batch needs the same tile arrangement")
        from transformers.models.mllama.image_processing_pil_mllama import get_all_supported_aspect_ratios

        t = int(tiles[0, 0])
        # the arrangement names the views (1 × 2 and 2 × 1 tiles are different layouts): the processor's
        # aspect-ratio id is 1 + the index of (tiles_h, tiles_w) in its list of supported arrangements
        th, tw = get_all_supported_aspect_ratios(self.processor.image_processor.max_image_tiles)[int(ratios[0, 0]) - 1]
        if th * tw != t:
            raise BackboneError(f"Mllama: aspect-ratio id {int(ratios[0, 0])} does not match {t} tiles")
        cols = torch.cat([torch.arange(i * per_tile + 1, (i + 1) * per_tile) for i in range(t)])
        b = inputs["input_ids"].shape[0]
        return CrossLayout(positions=cols[None].expand(b, -1).clone(),
                           views=Views.from_shapes([(f"tile {i // tw},{i % tw}", side, side, False)
                                                    for i in range(t)]),
                           text_positions=self.image_positions(inputs["input_ids"]))
