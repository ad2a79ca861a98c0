"""Idefics3 / SmolVLM (``Idefics3ForConditionalGeneration``): the tiles and the global view, or the global
view alone, as the checkpoint's processor config says.

The hub's SmolVLM and Idefics3 configs ship ``do_image_splitting: true``: a large image is cut into
``max_image_size`` tiles plus a global view, and the model was trained seeing them. :func:`load_backbone`
follows the checkpoint (:meth:`Idefics3Backbone.configure`): splitting on gives
:class:`Idefics3TiledBackbone`, off gives :class:`Idefics3Backbone`; the load option ``image_splitting``
(``load_backbone(dir, image_splitting=False)``, ``DIR?image_splitting=off``) overrides it.

:class:`Idefics3Backbone`, splitting off (``do_image_splitting=False`` on the image processor it is given):

* **Layout**: ``<fake_token_around_image><global-img><image>×n<fake_token_around_image>``, n =
  ``image_seq_len`` = ((image_size / patch) / scale_factor)²; the connector's pixel shuffle folds each
  scale_factor × scale_factor block of patches into one token, row-major, so the tokens are one
  (side × side) grid over the view.
* **Geometry**: the processor resizes the longest edge to ``size`` and then stretches the result to a
  ``max_image_size`` square; together a stretch of the original to that square (no crop, no pad).
* **What it costs**: the model sees the image at ``max_image_size`` (512 px for SmolVLM, 364 for
  Idefics3), not at the tiled resolution it was trained to use for large images.
* The processor has no video processor, so the stock class loads without torchvision. SmolVLM2
  (``smolvlm``: its processor needs torchvision and num2words for video) is not registered.

:class:`Idefics3TiledBackbone`, splitting on (the hub's setting), reads the tiles as views:

* **Layout**: per tile ``<fake_token_around_image><row_i_col_j><image>×n`` row-major (a newline after each
  row of tiles), then two newlines and ``<fake_token_around_image><global-img><image>×n
  <fake_token_around_image>``: the image tokens are not one run. The views, in token order, are ``tile r,c``
  (0-based) and ``global``, each one side × side grid; rows and columns are read from the ``<row_i_col_j>``
  tokens the processor wrote (:meth:`Idefics3TiledBackbone.tiling` recomputes them from the image size for
  batching and geometry; the tests hold the two equal). An image that fits one tile is the global view
  alone (the plain view ``base``).
* **Geometry**: the processor resizes the longest edge to ``size``, then up to whole multiples of
  ``max_image_size`` (``resize_for_vision_encoder``) and cuts that canvas into ``max_image_size`` squares;
  together each tile is its square of the original stretched to ``(cols·M) × (rows·M)``. The global view is
  the whole image stretched to the M square, as with splitting off.
* **What it costs**: rows·cols + 1 views of n tokens (SmolVLM: up to 4 × 4 tiles of 64 at 2048 px, 1088
  tokens; Idefics3-8B: 169 per tile), against n with splitting off.
"""

from __future__ import annotations

import math
import re

import numpy as np

from ..hooks import ImageLayout, ImageSpan, Views
from .base import Backbone, BackboneError
from .geometry import InputGeometry

_TILE_TOKEN = re.compile(r"<row_(\d+)_col_(\d+)>")


class Idefics3Backbone(Backbone):
    family = "idefics3"
    splitting = False  # off: one global view, one grid (Idefics3TiledBackbone: the tiles as views)
    load_options = {"image_splitting": "tiles + a global view (the checkpoint's do_image_splitting by default); "
                                       "off: the global view alone"}

    @classmethod
    def configure(cls, processor, image_splitting: bool | None = None) -> type[Backbone]:
        """The checkpoint's own ``do_image_splitting`` (the hub's SmolVLM and Idefics3 configs: on, the tiles
        the model was trained on) unless ``image_splitting`` says otherwise."""
        if image_splitting is None:
            image_splitting = bool(getattr(processor.image_processor, "do_image_splitting", False))
        return Idefics3TiledBackbone if image_splitting else Idefics3Backbone

    def __init__(self, model, processor, name: str):
        processor.image_processor.do_image_splitting = self.splitting
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


class Idefics3TiledBackbone(Idefics3Backbone):
    """Idefics3 / SmolVLM with image splitting on, as the hub's processor configs ship it: ``tile r,c`` views
    and a ``global`` view (module docstring). What ``load_backbone`` picks for such a checkpoint."""

    splitting = True

    @classmethod
    def configure(cls, processor, image_splitting: bool | None = None) -> type[Backbone]:
        """Asked for by name (``Idefics3TiledBackbone.load``): the tiles unless ``image_splitting=False``."""
        return super().configure(processor, True if image_splitting is None else image_splitting)

    def image_block_ids(self) -> list[int]:
        """The image tokens, ``<fake_token_around_image>``, ``<global-img>`` and every ``<row_i_col_j>``."""
        tiles = [i for t, i in self.tokenizer.get_vocab().items() if _TILE_TOKEN.fullmatch(t)]
        return super().image_block_ids() + sorted(tiles)

    # the layout ------------------------------------------------------------------------------------
    def tiling(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """``(rows, cols)`` of tiles for an image of ``image_size`` (width, height); ``(0, 0)``: no split.
        The image processor's resize (``get_resize_output_image_size``), then its rounding up to whole
        tiles (``resize_for_vision_encoder``)."""
        from transformers.models.idefics3.image_processing_pil_idefics3 import get_resize_output_image_size

        ip = self.processor.image_processor
        width, height = image_size
        if ip.do_resize:
            shape_only = np.broadcast_to(np.zeros((1, 1, 1), dtype=np.uint8), (1, height, width))
            height, width = get_resize_output_image_size(shape_only, resolution_max_side=ip.size["longest_edge"])
        m = self._view_size
        # resize_for_vision_encoder: the longer side up to whole tiles, the other from the aspect, then up too
        if width >= height:
            w = math.ceil(width / m) * m
            h = math.ceil(int(w / (width / height)) / m) * m
        else:
            h = math.ceil(height / m) * m
            w = math.ceil(int(h * (width / height)) / m) * m
        if h <= m and w <= m:
            return 0, 0
        return h // m, w // m

    def views_for(self, image_size: tuple[int, int]) -> Views:
        """``tile r,c`` row-major then ``global``; an image of one tile is the plain view ``base``."""
        side = math.isqrt(self.processor.image_seq_len)
        return self._views(*self.tiling(image_size), side)

    @staticmethod
    def _views(rows: int, cols: int, side: int) -> Views:
        if rows * cols == 0:
            return Views.from_shapes([("base", side, side, False)])
        tiles = [(f"tile {r},{c}", side, side, False) for r in range(rows) for c in range(cols)]
        return Views.from_shapes(tiles + [("global", side, side, False)])

    def _image_span(self, inputs: dict) -> ImageLayout:
        ids = inputs["input_ids"]
        positions = self.image_positions(ids)
        per = self.processor.image_seq_len
        side = math.isqrt(per)
        n = positions.shape[1]
        if n % per or side * side != per:
            raise BackboneError(f"idefics3: {n} image tokens is not a whole number of {per}-token views")
        runs = positions.view(ids.shape[0], n // per, per)
        marks = ids.gather(1, runs[..., 0] - 1)  # the token before each run: <row_i_col_j> or <global-img>
        if not (bool((runs[..., -1] - runs[..., 0] + 1 == per).all()) and bool((marks == marks[:1]).all())
                and int(marks[0, -1]) == self.processor.global_image_token_id):
            raise BackboneError("idefics3: expected each tile as <row_i_col_j> then its image tokens, the global "
                                "image last, the same tiles in every row")
        cells = [_TILE_TOKEN.fullmatch(t) for t in self.tokenizer.convert_ids_to_tokens(marks[0, :-1].tolist())]
        if not all(cells):
            raise BackboneError("idefics3: a tile's image tokens without its <row_i_col_j> token")
        rows = max((int(c[1]) for c in cells), default=0)
        cols = max((int(c[2]) for c in cells), default=0)
        if [(int(c[1]), int(c[2])) for c in cells] != [(r, c) for r in range(1, rows + 1) for c in range(1, cols + 1)]:
            raise BackboneError("idefics3: the tiles are expected row-major, every row and column present")
        return ImageLayout(positions=positions, views=self._views(rows, cols, side))

    def grid_key(self, image) -> tuple:
        """Images batch together when they are cut into the same tiles."""
        return self.tiling(image.size)

    # pixel geometry --------------------------------------------------------------------------------
    def view_geometries(self, image_size: tuple[int, int]) -> dict[str, InputGeometry]:
        """The global view's stretch to the M square, and each tile's M square of the image stretched to
        ``(cols·M) × (rows·M)``."""
        w, h = image_size
        m = self._view_size
        whole = self.input_geometry(image_size)
        out = {"base": whole, "global": whole}
        rows, cols = self.tiling(image_size)
        for r in range(rows):
            for c in range(cols):
                out[f"tile {r},{c}"] = InputGeometry((w, h), (m, m), (cols * m / w, rows * m / h),
                                                     (-float(c * m), -float(r * m)))
        return out
