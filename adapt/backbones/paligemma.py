"""PaliGemma (``PaliGemmaForConditionalGeneration`` with a Gemma 1 decoder): one square grid per image.

* **Layout**: ``<image>×(image_size / patch)²`` at the start of the prompt, then ``<bos>``, the prompt
  and a newline (the processor writes all of it); one contiguous run, row-major over the SigLIP patch
  grid. The image processor stretches every image to ``size`` (no crop, no pad): the CLIP-style
  geometry with no crop is exactly that.
* **No chat template**: the question is the prefix as given (the ``mix`` checkpoints expect their task
  prefixes, e.g. ``caption en`` or ``answer en <question>``).
* **Prefix-LM**: the image and the prompt attend to each other bidirectionally (``token_type_ids`` 0),
  the answer causally. The query that predicts the first token is the prompt's last row, which sees the
  whole prefix either way, and every later step is causal; the mask the model builds reaches our
  attention function unchanged, so capture and steering read the rows they read in a causal decoder (the
  image *keys* of a layer already mix in later prompt tokens: that is the model, not the capture).
* **PaliGemma 2** (Gemma 2 decoder) is refused: its attention passes a logit ``softcap`` (and alternates
  sliding-window layers), which the capture does not apply.
"""

from __future__ import annotations

from .base import BackboneError
from .llava import LlavaBackbone


class PaliGemmaBackbone(LlavaBackbone):
    family = "paligemma"

    def __init__(self, model, processor, name: str):
        self.refuse_unsupported(model.config, name)
        super().__init__(model, processor, name)

    @classmethod
    def load(cls, path: str, *args, trust_remote_code: bool = False, **kwargs):
        from transformers import AutoConfig

        # before the weights are read
        cls.refuse_unsupported(AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code), path)
        return super().load(path, *args, trust_remote_code=trust_remote_code, **kwargs)

    @staticmethod
    def refuse_unsupported(config, name: str) -> None:
        """One line for a PaliGemma whose decoder is not Gemma 1 (PaliGemma 2's Gemma 2 softcaps the logits)."""
        text = config.get_text_config()
        if text.model_type != "gemma" or getattr(text, "attn_logit_softcapping", None) is not None:
            raise BackboneError(f"{name}: PaliGemma with a {text.model_type} decoder (PaliGemma 2) is not supported: "
                                "its attention logit softcap is not applied by the capture")

    @classmethod
    def model_class(cls):
        from transformers import PaliGemmaForConditionalGeneration

        return PaliGemmaForConditionalGeneration

    def prompt(self, question: str) -> str:
        """The image token, then the question as the prefix (the processor adds ``<bos>`` and ``\\n``)."""
        return self.processor.image_token + question

    def _build_inputs(self, images, questions) -> dict:
        inputs = super()._build_inputs(images, questions)
        inputs.pop("labels", None)  # the processor's training labels (all -100 without a suffix)
        return inputs
