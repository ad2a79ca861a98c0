"""Gemma 3 (``Gemma3ForConditionalGeneration``): one square grid per image, in a decoder of sliding-window
and global layers.

* **Layout**: the processor writes ``<start_of_image>`` + ``mm_tokens_per_image`` (256 = 16 × 16) image
  soft tokens + ``<end_of_image>``, the SigLIP features average-pooled to that grid; the image processor
  stretches every image to ``size`` (no crop, no pad). One contiguous run, row-major.
* **Pan-and-scan** (several crops of one image, each its own 256-token view) is turned off: the key map
  and the capture handle several views, but this family's crops are not yet a multi-view layout; a
  processor config that turns it on is overridden with one warning line.
* **Bidirectional image block**: during the prefill the image tokens attend to each other both ways
  (``token_type_ids``); the rows we read (the prompt's last row and every decoding step) are text
  queries, causal either way, and the mask the model builds reaches our attention function unchanged.
* **Sliding-window layers** (5 local layers per global one): their cache keeps at most
  ``sliding_window`` keys, so the image keys' columns there are the positions shifted by what the window
  dropped, and once the image has begun to leave a layer's window that layer is not steerable from that
  step on (captured, reported in the generation's ``keys``, never written): :mod:`adapt.hooks.keymap`.
* Gemma's pad id is 0 (a real id, kept: see :class:`~adapt.backbones.base.Backbone`). A decoder with a
  logit softcap (Gemma 2 style) is refused: the capture does not apply it.
"""

from __future__ import annotations

import math
import warnings

from ..hooks import ImageSpan
from .base import Backbone, BackboneError

PAN_AND_SCAN_OFF = ("Gemma 3: pan-and-scan crops turned off (several views per image are not supported for this "
                    "family yet); each image is one 16 × 16 view")


class Gemma3Backbone(Backbone):
    family = "gemma3"
    text_token_type = 0  # token_type_ids of an answer token (1 marks image tokens; PaliGemma's suffix is 1)

    def __init__(self, model, processor, name: str):
        text = model.config.get_text_config()
        if getattr(text, "attn_logit_softcapping", None) is not None or getattr(text, "final_logit_softcapping",
                                                                               None) is not None:
            raise BackboneError(f"{name}: a Gemma 3 decoder with a logit softcap is not supported (the capture "
                                "does not apply it)")
        ip = processor.image_processor
        if getattr(ip, "do_pan_and_scan", False):
            warnings.warn(PAN_AND_SCAN_OFF, stacklevel=2)
            ip.do_pan_and_scan = False
        super().__init__(model, processor, name)

    @classmethod
    def model_class(cls):
        from transformers import Gemma3ForConditionalGeneration

        return Gemma3ForConditionalGeneration

    def _build_inputs(self, images, questions) -> dict:
        # one image per prompt, nested per row (the processor reads a flat list as one row's images)
        return dict(self.processor(images=[[im] for im in images], text=[self.prompt(q) for q in questions],
                                   return_tensors="pt", padding=True, do_pan_and_scan=False))

    def image_block_ids(self) -> list[int]:
        """The soft image tokens and the ``<start_of_image>`` / ``<end_of_image>`` around them."""
        tok = self.tokenizer
        return [self.image_token_id, tok.convert_tokens_to_ids(tok.boi_token), tok.convert_tokens_to_ids(tok.eoi_token)]

    def _image_span(self, inputs: dict) -> ImageSpan:
        positions = self.image_positions(inputs["input_ids"])
        n = positions.shape[1]
        side = math.isqrt(n)
        if side * side != n:
            raise BackboneError(f"Gemma 3 gave {n} image tokens: one image of mm_tokens_per_image (a square) expected "
                                "(pan-and-scan crops are not supported)")
        p = positions[0]
        if int(p[-1] - p[0]) + 1 != n:
            raise BackboneError("Gemma 3 image tokens are expected as one contiguous run")
        return ImageSpan(positions=positions, grid=(side, side))
