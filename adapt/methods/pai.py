"""PAI, "Paying More Attention to Image" (Liu et al., ECCV 2024): a baseline through the same hook points.

Two parts, both at every decoding step:

1. **Image attention amplified** (the paper's Eq. 4): in every decoder layer from ``start_layer`` on,
   the newest query row's pre-softmax logits at the image keys become z + α·|z| (per head), then the
   softmax runs over all keys.
2. **Guidance away from the language prior** (the paper's Eq. 6): with log-probabilities
   c = log p(y | v, x) of the steered model and u = log p(y | x) of the same model without the image,
   the next token comes from γ·c − (γ − 1)·u = c + (γ − 1)·(c − u), restricted to the tokens with
   p(y | v, x) ≥ β·max p (the public code's cutoff, β = 0.1). The text-only branch is not amplified.

Public defaults (the authors' CHAIR and POPE scripts): α = 0.2, layers 2…end, γ = 1.1; γ = 1 leaves
the attention part alone (``pai:attn``). The guidance step is VCD's contrast with α = γ − 1, so it
shares VCD's one-forward layout: the text-only branch is the same prompt as extra batch rows whose
image-block tokens are masked out of the attention (:func:`text_only_mask`: the image token and its
wrappers, Qwen-VL's ``<|vision_start|>`` / ``<|vision_end|>``), which equals the prompt without the image
(generation positions follow the mask, and so do Qwen-VL's 3-D rope positions; tested to float rounding
on the embedded model, token for token on tiny Qwen2-VL and Qwen3-VL). The original samples (nucleus); here the step is greedy, as every method of the registry, unless asked otherwise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from transformers import LogitsProcessorList

from ..hooks import AttentionPoint, LogitBias
from .base import Answer, Method, register


@dataclass
class PAIConfig:
    alpha: float = 0.2  # amplification of the image-key logits (Eq. 4)
    start_layer: int = 2  # first decoder layer amplified (0-based, as the public code's 2)
    gamma: float = 1.1  # guidance strength (Eq. 6); 1 = attention part only
    beta: float = 0.1  # plausibility cutoff of the guided step


class PAIPolicy:
    """The attention part on the first ``rows`` rows of the batch (all when None)."""

    def __init__(self, cfg: PAIConfig, rows: int | None = None):
        self.cfg, self.rows = cfg, rows

    def intervene(self, point: AttentionPoint):
        if point.layer < self.cfg.start_layer:
            return None
        bias = self.cfg.alpha * point.logits.abs()
        if self.rows is not None:  # the text-only rows stay as the model has them
            bias[self.rows:] = 0
        return LogitBias(bias)


DESCRIPTION = "PAI: image-key logits amplified by α·|logit| at layers ≥ 2, guided away from the text-only prior (γ)"
ATTN_DESCRIPTION = "PAI's attention part alone: image-key logits amplified by α·|logit| at layers ≥ 2"


@register("pai", DESCRIPTION, {"attn": ATTN_DESCRIPTION})
class PAI(Method):
    name = "pai"
    description = DESCRIPTION

    def __init__(self, cfg: PAIConfig | None = None, name: str = "pai"):
        self.cfg = cfg or PAIConfig()
        self.name = name
        if self.cfg.gamma == 1:
            self.description = ATTN_DESCRIPTION

    @classmethod
    def create(cls, variant, cfg, cache, name):
        return cls(attention_only(), name=name) if variant == "attn" else cls()

    def _answer_group(self, backbone, images, questions, max_new_tokens, **generate_kwargs):
        cfg, n = self.cfg, len(images)
        if cfg.gamma == 1:
            prepared = backbone.prepare_batch(images, questions)
            gens = backbone.generate_batch(prepared, max_new_tokens=max_new_tokens, policy=PAIPolicy(cfg),
                                           **generate_kwargs)
            return [Answer(g.text, g.token_ids, {"tokens": len(g.token_ids)}, g) for g in gens]
        if "cross_attention" in backbone.key_map.kinds:  # the image enters beside the sequence, not in it
            from ..backbones import BackboneError

            raise BackboneError(f"PAI's text-only branch is not supported on {backbone.family} (masking the image "
                                "token does not remove an image its cross-attention layers read); pai:attn runs")
        if "linear_attention" in backbone.key_map.kinds:
            from ..backbones import BackboneError

            # a masked token still enters a linear layer's convolution and recurrent state
            raise BackboneError(f"PAI's text-only branch is not supported on {backbone.family} (its linear-attention "
                                "layers do not drop masked tokens); pai:attn runs")
        from .vcd import VCDLogitsProcessor

        prepared = backbone.prepare_batch(list(images) * 2, list(questions) * 2)
        inputs = prepared.inputs
        inputs["attention_mask"] = text_only_mask(backbone, inputs, n)  # rows n…2n−1: the text alone
        drop_images(backbone, inputs, n)  # …which carry no image: one vision-tower pass, for rows 0…n−1
        procs = LogitsProcessorList([*generate_kwargs.pop("logits_processor", []),
                                     VCDLogitsProcessor(n, cfg.gamma - 1, cfg.beta, None)])
        # VCD's processor contrasts raw logits; on log-probabilities (the paper's form) the two
        # differ by a per-row constant, which changes no token
        gens = backbone.generate_batch(prepared, max_new_tokens=max_new_tokens, policy=PAIPolicy(cfg, rows=n),
                                       logits_processor=procs, **generate_kwargs)
        answers = []
        for g in gens[:n]:
            g.seconds *= 2  # the batch time was shared over 2n rows for n answers
            answers.append(Answer(g.text, g.token_ids, {"tokens": len(g.token_ids)}, g))
        return answers

    def config_dict(self) -> dict:
        return asdict(self.cfg)


def text_only_mask(backbone, inputs: dict, n: int) -> torch.Tensor:
    """The batch's attention mask with rows n… seeing the text alone: every token of the image block
    masked, the image token and the tokens that wrap it (``backbone.image_block_ids()``, e.g. Qwen-VL's
    ``<|vision_start|>`` / ``<|vision_end|>``), so those rows equal the prompt without the image."""
    mask = inputs["attention_mask"].clone()
    ids = inputs["input_ids"][n:]
    block = torch.isin(ids, torch.tensor(backbone.image_block_ids(), device=ids.device))
    mask[n:][block] = 0
    return mask


def drop_images(backbone, inputs: dict, n: int) -> None:
    """Rows n… of ``inputs`` without their images, in place: their image tokens become padding (already
    masked by :func:`text_only_mask`, so nothing attends to them) and the pixel tensors keep the first n
    images only, so the vision tower runs for the rows that see an image. LLaVA-style inputs hold one
    pixel tensor per image (dim 0); Qwen-VL concatenates each image's patches (``image_grid_thw``)."""
    ids = inputs["input_ids"].clone()
    image = ids[n:] == backbone.image_token_id
    ids[n:][image] = backbone.model.generation_config.pad_token_id
    inputs["input_ids"] = ids
    if "mm_token_type_ids" in inputs:  # Qwen-VL's per-token modality (3-D rope): text now
        types = inputs["mm_token_type_ids"].clone()
        types[n:][image] = 0
        inputs["mm_token_type_ids"] = types
    if "image_grid_thw" in inputs:
        keep = int(inputs["image_grid_thw"][:n].prod(-1).sum())
        inputs["pixel_values"] = inputs["pixel_values"][:keep]
        inputs["image_grid_thw"] = inputs["image_grid_thw"][:n]
        return
    for key in ("pixel_values", "pixel_attention_mask", "image_sizes"):
        if key in inputs:
            inputs[key] = inputs[key][:n]


def attention_only(cfg: PAIConfig | None = None) -> PAIConfig:
    """PAI's attention part alone (γ = 1): the ``pai:attn`` method."""
    return PAIConfig(**{**asdict(cfg or PAIConfig()), "gamma": 1.0})


__all__ = ["PAI", "PAIConfig", "PAIPolicy", "attention_only"]
