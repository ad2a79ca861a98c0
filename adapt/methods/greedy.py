"""Greedy decoding, the baseline every table compares against.

``greedy`` runs with the recorder on and no intervention: the same attention numerics as the
steered methods (the newest row's softmax is explicit; the rest is SDPA), so a difference between
it and a steered method is the steering's. ``greedy:sdpa`` is stock transformers SDPA: the two
agree to float rounding (tested on tiny LLaVA and Qwen2.5-VL; the README gives the measured gap on
the embedded model).
"""

from __future__ import annotations

from .base import Answer, Method, register

DESCRIPTION = "plain greedy decoding (capture on, nothing steered: the steered methods' numerics)"
SDPA_DESCRIPTION = "plain greedy decoding with stock SDPA attention"


@register("greedy", DESCRIPTION, {"sdpa": SDPA_DESCRIPTION})
class Greedy(Method):
    description = DESCRIPTION

    def __init__(self, capture: bool = True):
        self.capture = capture
        self.name = "greedy" if capture else "greedy:sdpa"
        if not capture:
            self.description = SDPA_DESCRIPTION

    @classmethod
    def create(cls, variant, cfg, cache, name):
        return cls(capture=variant != "sdpa")

    def _answer_group(self, backbone, images, questions, max_new_tokens, **generate_kwargs):
        prepared = backbone.prepare_batch(images, questions)
        if not self.capture:
            backbone.model.set_attn_implementation({"text_config": "sdpa"})
        try:
            gens = backbone.generate_batch(prepared, max_new_tokens=max_new_tokens, capture=self.capture,
                                          **generate_kwargs)
        finally:
            if not self.capture:
                from ..hooks import ATTN_IMPL

                backbone.model.set_attn_implementation({"text_config": ATTN_IMPL})
        return [Answer(g.text, g.token_ids, {"tokens": len(g.token_ids)}, g) for g in gens]
