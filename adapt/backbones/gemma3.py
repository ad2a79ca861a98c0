"""Gemma 3 (``Gemma3ForConditionalGeneration``): one square grid per image, or the image and its pan-and-scan
crops as views, in a decoder of sliding-window and global layers.

* **Layout**: the processor writes ``<start_of_image>`` + ``mm_tokens_per_image`` (256 = 16 × 16) image
  soft tokens + ``<end_of_image>``, the SigLIP features average-pooled to that grid; the image processor
  stretches every image to ``size`` (no crop, no pad). One contiguous run, row-major.
* **Pan-and-scan** (the load option ``pan_and_scan``; default: the checkpoint's ``do_pan_and_scan``, null in
  the hub's configs, so off): an image whose aspect ratio reaches ``pan_and_scan_min_ratio_to_activate`` is
  also cut into 2 … ``pan_and_scan_max_num_crops`` crops side by side along its long axis (each at least
  ``pan_and_scan_min_crop_size`` pixels), and the processor writes "Here is the original image <image
  block> and here are some crops to help you see better <image block> <image block> …". The views are
  ``base`` (the whole image stretched to ``size``) then ``crop 0`` … ``crop k−1`` (left to right, or top to
  bottom), each its own mm_tokens_per_image grid, its geometry the crop's box stretched to ``size``; the
  runs are not contiguous (the gather path). The crop settings are the checkpoint's where its config
  gives them, else the stock processor's defaults (256 px, 4 crops, ratio 1.2), and the backbone passes
  them to the processor call itself (the stock processor's own defaults would otherwise win over the
  config), so the processor's crops and the backbone's geometry come from one set of numbers. An image
  that is not cropped is the plain ``base`` grid; rows of a batch need the same number of crops
  (``grid_key``). The model class is the stock one, taking the crops per row (``[images, 1 + k, 3, S,
  S]``, flattened before the stock forward) so VCD and PAI split pixels by row.
* **Bidirectional image block**: during the prefill the image tokens attend to each other both ways
  (``token_type_ids``); the rows we read (the prompt's last row and every decoding step) are text
  queries, causal either way, and the mask the model builds reaches our attention function unchanged.
* **Sliding-window layers** (5 local layers per global one): their cache keeps at most
  ``sliding_window`` keys, so the image keys' columns there are the positions shifted by what the window
  dropped, and once the image has begun to leave a layer's window that layer is not steerable from that
  step on (captured, reported in the generation's ``keys``, never written): :mod:`adapt.hooks.keymap`; a
  layer whose window lost it within the anchor's steps feeds no anchor (:func:`adapt.anchor.build.window_kept`).
* Gemma's pad id is 0 (a real id, kept: see :class:`~adapt.backbones.base.Backbone`). A decoder with a
  logit softcap (Gemma 2 style) is refused: the capture does not apply it.
"""

from __future__ import annotations

import math

import numpy as np

from ..hooks import ImageLayout, ImageSpan, Views
from .base import Backbone, BackboneError, pixels_per_row
from .geometry import InputGeometry

# the stock Gemma3Processor's call defaults (its images_kwargs), used where a config leaves a setting null
PAN_AND_SCAN_DEFAULTS = {"pan_and_scan_min_crop_size": 256, "pan_and_scan_max_num_crops": 4,
                         "pan_and_scan_min_ratio_to_activate": 1.2}

class Gemma3Backbone(Backbone):
    family = "gemma3"
    text_token_type = 0  # token_type_ids of an answer token (1 marks image tokens; PaliGemma's suffix is 1)
    load_options = {"pan_and_scan": "the image and its pan-and-scan crops as views (the checkpoint's "
                                    "do_pan_and_scan by default: null, off, in the hub's configs)"}

    def __init__(self, model, processor, name: str):
        text = model.config.get_text_config()
        if getattr(text, "attn_logit_softcapping", None) is not None or getattr(text, "final_logit_softcapping",
                                                                               None) is not None:
            raise BackboneError(f"{name}: a Gemma 3 decoder with a logit softcap is not supported (the capture "
                                "does not apply it)")
        ip = processor.image_processor
        self.pan_and_scan = bool(getattr(ip, "do_pan_and_scan", False))
        # one set of crop settings for the processor's call and the geometry (module docstring)
        self.crop_settings = {k: getattr(ip, k, None) if getattr(ip, k, None) is not None else v
                              for k, v in PAN_AND_SCAN_DEFAULTS.items()}
        super().__init__(model, processor, name)

    @classmethod
    def configure(cls, processor, pan_and_scan: bool | None = None) -> type[Backbone]:
        """``pan_and_scan`` given: set on the image processor (which the backbone reads and passes on)."""
        if pan_and_scan is not None:
            processor.image_processor.do_pan_and_scan = pan_and_scan
        return cls

    @classmethod
    def model_class(cls):
        """The stock class taking the image and its crops per row (:func:`~adapt.backbones.base.pixels_per_row`)."""
        from transformers import Gemma3ForConditionalGeneration

        return pixels_per_row(Gemma3ForConditionalGeneration)

    @property
    def _per_view(self) -> int:
        return int(self.processor.image_seq_length)

    def _build_inputs(self, images, questions) -> dict:
        # one image per prompt, nested per row (the processor reads a flat list as one row's images)
        inputs = dict(self.processor(images=[[im] for im in images], text=[self.prompt(q) for q in questions],
                                     return_tensors="pt", padding=True, do_pan_and_scan=self.pan_and_scan,
                                     **self.crop_settings))
        if self.pan_and_scan:
            pv = inputs["pixel_values"]
            counts = {len(self.crops(im.size)) for im in images}
            if len(counts) != 1 or pv.shape[0] != len(images) * (1 + counts.pop()):
                raise BackboneError("every row of a batch needs the same number of Gemma 3 pan-and-scan crops "
                                    "(group_by_grid sorts them)")
            inputs["pixel_values"] = pv.view(len(images), -1, *pv.shape[1:])  # one row per image
        return inputs

    def image_block_ids(self) -> list[int]:
        """The soft image tokens and the ``<start_of_image>`` / ``<end_of_image>`` around them (every crop's)."""
        tok = self.tokenizer
        return [self.image_token_id, tok.convert_tokens_to_ids(tok.boi_token), tok.convert_tokens_to_ids(tok.eoi_token)]

    # the layout ------------------------------------------------------------------------------------
    def crops(self, image_size: tuple[int, int]) -> list[tuple[int, int, int, int]]:
        """The pan-and-scan crops of an image of ``image_size`` (width, height) as ``(x0, y0, x1, y1)`` boxes in
        its pixels, in the processor's order; ``[]``: not cropped (or pan-and-scan off). The image processor's
        own ``pan_and_scan`` decides (on a shape-only array); its crops start at multiples of the first
        crop's size along the long axis."""
        if not self.pan_and_scan:
            return []
        w, h = image_size
        s = self.crop_settings
        shape_only = np.broadcast_to(np.zeros((1, 1, 1), dtype=np.uint8), (1, h, w))
        cut = self.processor.image_processor.pan_and_scan(
            shape_only, s["pan_and_scan_min_crop_size"], s["pan_and_scan_max_num_crops"],
            s["pan_and_scan_min_ratio_to_activate"])
        if not cut:
            return []
        ch, cw = cut[0].shape[1:]
        boxes = []
        for i, crop in enumerate(cut):
            x0, y0 = (i * cw, 0) if w >= h else (0, i * ch)
            boxes.append((x0, y0, x0 + crop.shape[2], y0 + crop.shape[1]))
        return boxes

    def views_for(self, image_size: tuple[int, int]) -> Views:
        """``base`` then ``crop i`` (one grid each); an image that is not cropped is the plain ``base``."""
        side = math.isqrt(self._per_view)
        count = len(self.crops(image_size))
        return Views.from_shapes([("base", side, side, False)] + [(f"crop {i}", side, side, False)
                                                                 for i in range(count)])

    def grid_key(self, image) -> tuple:
        """Images batch together when they give the same number of crops."""
        return (len(self.crops(image.size)),) if self.pan_and_scan else ()

    def _image_span(self, inputs: dict) -> ImageSpan | ImageLayout:
        ids = inputs["input_ids"]
        positions = self.image_positions(ids)
        n, per = positions.shape[1], self._per_view
        side = math.isqrt(per)
        if n % per or side * side != per:
            raise BackboneError(f"Gemma 3 gave {n} image tokens: whole views of mm_tokens_per_image (a square, "
                                f"{per}) expected")
        runs = positions.view(ids.shape[0], n // per, per)
        boi = self.tokenizer.convert_tokens_to_ids(self.tokenizer.boi_token)
        if not (bool((runs[..., -1] - runs[..., 0] + 1 == per).all())
                and bool((ids.gather(1, runs[..., 0] - 1) == boi).all())):
            raise BackboneError("Gemma 3 image tokens are expected as runs of mm_tokens_per_image, each after "
                                "<start_of_image>")
        if n == per:
            return ImageSpan(positions=positions, grid=(side, side))
        if not self.pan_and_scan:
            raise BackboneError(f"Gemma 3 gave {n // per} image blocks for one image with pan-and-scan off")
        names = ["base"] + [f"crop {i}" for i in range(n // per - 1)]
        return ImageLayout(positions=positions, views=Views.from_shapes([(v, side, side, False) for v in names]))

    # pixel geometry --------------------------------------------------------------------------------
    def _stretch(self, image_size, box) -> InputGeometry:
        """The ``box`` (x0, y0, x1, y1) of the image stretched to the processor's ``size``."""
        size = self.processor.image_processor.size
        sw, sh = int(size["width"]), int(size["height"])
        x0, y0, x1, y1 = box
        sx, sy = sw / (x1 - x0), sh / (y1 - y0)
        return InputGeometry(tuple(image_size), (sw, sh), (sx, sy), (-x0 * sx, -y0 * sy))

    def input_geometry(self, image_size: tuple[int, int]) -> InputGeometry:
        """The whole image stretched to ``size`` (the base view)."""
        w, h = image_size
        return self._stretch(image_size, (0, 0, w, h))

    def view_geometries(self, image_size: tuple[int, int]) -> dict[str, InputGeometry]:
        """``base``: the whole image stretched; ``crop i``: its box stretched to ``size``."""
        out = {"base": self.input_geometry(image_size)}
        for i, box in enumerate(self.crops(image_size)):
            out[f"crop {i}"] = self._stretch(image_size, box)
        return out
