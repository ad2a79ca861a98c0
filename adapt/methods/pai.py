"""PAI, "Paying More Attention to Image" (Liu et al., ECCV 2024): a baseline through the same hook points.

At every decoding step, in every decoder layer from ``start_layer`` on, the newest query row's
pre-softmax logits at the image keys are amplified: z ← z + α·|z| (per head), then the softmax
runs over all keys. Public defaults for LLaVA-1.5: α = 0.5, layers 2…end. PAI's second part, a
classifier-free-guidance-style logit contrast with a text-only branch (γ = 1.1), needs a second KV
cache per row and is not implemented here: this is PAI's attention intervention alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..attention import AttentionPoint, LogitBias
from .base import Answer, Method


@dataclass
class PAIConfig:
    alpha: float = 0.5  # amplification of the image-key logits
    start_layer: int = 2  # first decoder layer amplified (0-based, as the public code's 2)


class PAIPolicy:
    def __init__(self, cfg: PAIConfig):
        self.cfg = cfg

    def intervene(self, point: AttentionPoint):
        if point.layer < self.cfg.start_layer:
            return None
        return LogitBias(self.cfg.alpha * point.logits.abs())


class PAI(Method):
    name = "pai"
    description = "PAI: image-key logits amplified by α·|logit| at layers ≥ 2 (attention part only)"

    def __init__(self, cfg: PAIConfig | None = None):
        self.cfg = cfg or PAIConfig()

    def _answer_group(self, backbone, images, questions, max_new_tokens, **generate_kwargs):
        prepared = backbone.prepare_batch(images, questions)
        gens = backbone.generate_batch(prepared, max_new_tokens=max_new_tokens, policy=PAIPolicy(self.cfg),
                                       **generate_kwargs)
        return [Answer(g.text, g.token_ids, {"tokens": len(g.token_ids)}, g) for g in gens]

    def config_dict(self) -> dict:
        return asdict(self.cfg)
