"""Qwen3-VL (``Qwen3VLForConditionalGeneration``): one dynamic grid per image (see :mod:`.qwen_vl`).

Patch 16 × merge 2 (a token per 32 × 32 pixels), interleaved 3-D rope, a Qwen3 decoder (q / k norms).

**DeepStack, and what it means for capture and the anchor** (read in transformers 5.23's
``Qwen3VLTextModel.forward``). The vision tower returns, besides its final merged features (the image
tokens' input embeddings), one merged feature map per ``vision_config.deepstack_visual_indexes`` (three in
the released models: vision blocks 8, 16, 24). During the prefill the decoder *adds* map ``i`` to the
hidden states at the image-pad positions (``visual_pos_masks``: exactly our image positions) right after
decoder layer ``i`` — so after layers 0, 1, 2. No token is added or moved, and the attention interface
is still called once per layer with the KV cache indexed by sequence position; so:

* capture is unchanged and exact at every layer (the tests compare it with the model's own eager
  ``output_attentions``); the layout stays one flat grid at the same positions in every layer;
* the image *keys and values* of layers 1 … k (k = number of DeepStack maps) are computed from hidden
  states that just received a fresh, shallower vision feature map, not only from what the decoder made
  of the input embeddings. Attention at those layers therefore answers "which patches' mid-level features
  does the text read", closer to low-level saliency than in a decoder without DeepStack; from layer k + 1
  on the image states evolve as in any decoder;
* for the anchor: a map of layer ≤ k is a map over the same cells as every other layer, so it fuses and
  debiases as usual, but its criteria scores (boundary, frequency, smoothness) measure partly the vision
  tower's mid-level features; the anchor's layer selection / fusion may favour or shun these layers for
  that reason, and on real weights that should be looked at before reading early-layer maps as "where
  the model looks". Steering at layers ≤ k moves attention over those injected features;
* the injection happens only in the prefill (decode steps pass no pixels); the cached keys keep it, so
  every decoding step's capture reads the same injected keys.
"""

from __future__ import annotations

from transformers import Qwen3VLProcessor

from .qwen_vl import ImageOnly, QwenVLBackbone


class ImageOnlyQwen3VLProcessor(ImageOnly, Qwen3VLProcessor):
    """Qwen3-VL's processor without its video processor, which needs torchvision."""


class Qwen3VLBackbone(QwenVLBackbone):
    family = "qwen3_vl"
    image_only_processor = ImageOnlyQwen3VLProcessor

    @classmethod
    def model_class(cls):
        from transformers import Qwen3VLForConditionalGeneration

        return Qwen3VLForConditionalGeneration

    @property
    def deepstack_layers(self) -> tuple[int, ...]:
        """Decoder layers whose image keys carry a DeepStack feature map added after the layer before."""
        k = len(self.model.config.vision_config.deepstack_visual_indexes)
        return tuple(range(1, min(k + 1, self.num_layers)))


class Qwen3VLMoeBackbone(Qwen3VLBackbone):
    """Qwen3-VL with a mixture-of-experts decoder (``Qwen3VLMoeForConditionalGeneration``, e.g. the 30B-A3B
    models): the same processor, layout and DeepStack; the experts change the MLPs, not the attention."""

    family = "qwen3_vl_moe"

    @classmethod
    def model_class(cls):
        from transformers import Qwen3VLMoeForConditionalGeneration

        return Qwen3VLMoeForConditionalGeneration
