"""PAI's two parts: the attention amplification and the guidance away from the text-only prior."""

from __future__ import annotations

import torch

from adapt.backbones import load_backbone
from adapt.methods import get_method
from adapt.methods.pai import PAI, PAIConfig
from adapt.world import DEFAULT_DESCRIBE_PROMPT, make_split


def _by_hand(bb, image, question, gamma, beta, steps):
    """Greedy over c + (γ−1)(c − u) with c from the prompt with the image and u from the prompt with its
    image tokens removed, each recomputed from scratch every step (no cache, no masking trick)."""
    p = bb.prepare(image, question)
    ids = p.inputs["input_ids"]
    text_ids = ids[:, ids[0] != bb.image_token_id]
    toks: list[int] = []
    eos = bb.model.generation_config.eos_token_id
    with torch.no_grad():
        for _ in range(steps):
            new = torch.tensor([toks], dtype=ids.dtype).reshape(1, -1)
            full, text = torch.cat([ids, new], 1), torch.cat([text_ids, new], 1)
            c = bb.model(**{**p.inputs, "input_ids": full, "attention_mask": torch.ones_like(full)}).logits[0, -1]
            u = bb.model(input_ids=text, attention_mask=torch.ones_like(text)).logits[0, -1]
            c, u = c.log_softmax(-1), u.log_softmax(-1)
            s = (c + (gamma - 1) * (c - u)).masked_fill(c < c.max() + torch.log(torch.tensor(beta)), -float("inf"))
            t = int(s.argmax())
            if t == eos:
                break
            toks.append(t)
    return toks


def test_guidance_equals_the_text_only_formula_by_hand():
    bb = load_backbone("embedded")
    image = make_split("validation", 1, seed=7)[0].image()
    got = PAI(PAIConfig(alpha=0.0, gamma=1.5)).answer(bb, image, DEFAULT_DESCRIBE_PROMPT, 16).token_ids
    greedy = get_method("greedy").answer(bb, image, DEFAULT_DESCRIBE_PROMPT, 16).token_ids
    assert got == _by_hand(bb, image, DEFAULT_DESCRIBE_PROMPT, 1.5, 0.1, 16) and got != greedy


def test_without_either_part_pai_is_greedy():
    bb = load_backbone("embedded")
    images = [s.image() for s in make_split("validation", 2, seed=3)]
    qs = [DEFAULT_DESCRIBE_PROMPT] * 2
    none = PAI(PAIConfig(alpha=0.0, gamma=1.0)).answer_batch(bb, images, qs, 24)
    assert [a.token_ids for a in none] == [a.token_ids for a in get_method("greedy").answer_batch(bb, images, qs, 24)]
    # the guidance with γ = 1 + ε and the amplification off changes nothing either, now through the pair rows
    near = PAI(PAIConfig(alpha=0.0, gamma=1.0 + 1e-7)).answer_batch(bb, images, qs, 24)
    assert [a.token_ids for a in near] == [a.token_ids for a in none]


def test_text_only_rows_carry_no_image():
    """The guidance's text-only rows send no pixels: the vision tower sees the n answered images once."""
    import numpy as np
    from PIL import Image

    from adapt.backbones import LlavaBackbone
    from adapt.testing import tiny_llava

    bb = LlavaBackbone(*tiny_llava(layers=2), "tiny")
    images = [Image.fromarray((np.random.default_rng(s).random((32, 32, 3)) * 255).astype("uint8")) for s in (1, 2)]
    seen = []
    hook = bb.model.model.vision_tower.register_forward_pre_hook(lambda m, args, kw: seen.append(
        (args[0] if args else kw["pixel_values"]).shape[0]), with_kwargs=True)
    try:
        PAI(PAIConfig(gamma=1.5)).answer_batch(bb, images, ["describe the image"] * 2, 4)
    finally:
        hook.remove()
    assert seen == [2]  # one pass, two images (the four-row batch's text rows carry none)
