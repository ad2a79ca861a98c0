"""Qwen3.5 (``Qwen3_5ForConditionalGeneration``): Qwen3-VL's processor and image layout in a hybrid decoder.

* **Layout**: as Qwen3-VL (one dynamic grid per image, patch 16 × merge 2, ``Qwen3VLProcessor``, loaded
  image-only without torchvision); no DeepStack.
* **Hybrid decoder** (``text_config.layer_types``): three linear-attention layers (a gated delta-net,
  recurrent state, no softmax over keys) per full-attention layer. Linear layers never call the
  attention interface, so they are **not captured** and not steered; the maps' layer axis holds the
  full-attention layers alone (:attr:`~adapt.backbones.base.Backbone.num_layers` counts them; row i is
  decoder layer ``key_map.captured[i]``), so the anchor fuses and ASI steers those layers only, and every
  generation's ``keys`` names the layers that were not captured (:mod:`adapt.hooks.keymap`).
* The full-attention layers gate their output (``o · sigmoid(gate)``) after the attention function: the
  attention probabilities we read and write are the model's; the gate acts on the result, as it does
  without us.
"""

from __future__ import annotations

from ..hooks.keymap import FULL, LINEAR
from .base import Backbone, BackboneError
from .qwen3_vl import ImageOnlyQwen3VLProcessor
from .qwen_vl import QwenVLBackbone


class Qwen3_5Backbone(QwenVLBackbone):
    family = "qwen3_5"
    image_only_processor = ImageOnlyQwen3VLProcessor

    def __init__(self, model, processor, name: str):
        kinds = set(getattr(model.config.get_text_config(), "layer_types", None) or [FULL])
        if not kinds <= {FULL, LINEAR} or FULL not in kinds:
            raise BackboneError(f"{name}: Qwen3.5 with {', '.join(sorted(kinds - {FULL, LINEAR})) or 'no full-attention'} "
                                "layers is not supported (full and linear attention layers are)")
        # the Qwen-VL check refuses any layer kind but full attention: the key map handles linear layers
        Backbone.__init__(self, model, processor, name)

    @classmethod
    def model_class(cls):
        from transformers import Qwen3_5ForConditionalGeneration

        return Qwen3_5ForConditionalGeneration
