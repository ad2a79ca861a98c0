"""The decoding baselines VCD and OPERA: their defining equations on hand-made numbers, their
reductions to greedy / beam search, and a run on every backbone family."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from adapt.backbones import LlavaBackbone, Qwen2_5_VLBackbone, load_backbone
from adapt.methods import get_method
from adapt.methods.vcd import VCD, VCDConfig, VCDLogitsProcessor, contrast, noise_pixels, plausible
from adapt.testing import tiny_llava, tiny_qwen2_5_vl


@pytest.fixture(scope="module")
def llava():
    return LlavaBackbone(*tiny_llava(layers=3), "tiny-llava")


@pytest.fixture(scope="module")
def qwen():
    return Qwen2_5_VLBackbone(*tiny_qwen2_5_vl(layers=2), "tiny-qwen")


@pytest.fixture(scope="module")
def embedded():
    return load_backbone("embedded")


def _images(n, size=(32, 32), seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype("uint8")) for _ in range(n)]


# VCD -------------------------------------------------------------------------------------------

def test_vcd_cutoff_removes_exactly_the_tokens_below_beta_max():
    p = torch.tensor([0.40, 0.30, 0.15, 0.041, 0.039, 0.07])  # β·max = 0.04 with β = 0.1
    logits = torch.log(p)[None] + 3.0  # a shift changes nothing: the rule is on probabilities
    assert plausible(logits, 0.1)[0].tolist() == [True, True, True, True, False, True]
    noised = torch.tensor([[0.0, 2.0, -1.0, -5.0, -9.0, 1.0]])
    out = contrast(logits, noised, 1.0, 0.1)[0]
    expected = 2 * logits[0] - noised[0]
    assert out[4] == float("-inf") and torch.isfinite(out[[0, 1, 2, 3, 5]]).all()
    torch.testing.assert_close(out[[0, 1, 2, 3, 5]], expected[[0, 1, 2, 3, 5]])
    # the removed token would have won the contrast: the cutoff is what stops it
    assert int(expected.argmax()) == 4 and int(out.argmax()) == 3
    # a token another processor masked (−inf) stays masked, with no NaN from −inf − (−inf)
    masked = logits.clone()
    masked[0, 0] = float("-inf")
    out = contrast(masked, torch.full_like(masked, float("-inf")), 1.0, 0.0)
    assert out[0, 0] == float("-inf") and not torch.isnan(out).any()


def test_vcd_processor_ties_each_pair_and_samples_one_token():
    scores = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
    out = VCDLogitsProcessor(2, 1.0, 0.1)(None, scores.clone())
    torch.testing.assert_close(out[:2], out[2:])
    torch.testing.assert_close(out[:2], contrast(scores[:2], scores[2:], 1.0, 0.1))
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    drawn = VCDLogitsProcessor(2, 1.0, 0.1, gens)(None, scores.clone())
    assert (torch.isfinite(drawn).sum(-1) == 1).all() and torch.equal(drawn[:2], drawn[2:])
    assert plausible(scores[:2], 0.1)[torch.isfinite(drawn[:2])].all()  # drawn inside the plausible set


@pytest.mark.parametrize("family", ["llava", "qwen"])
def test_vcd_alpha_zero_equals_greedy(family, llava, qwen):
    bb = llava if family == "llava" else qwen
    images = _images(2, size=(32, 32) if family == "llava" else (56, 28), seed=4)
    qs = ["describe the image", "is there a star ?"]
    greedy = get_method("greedy:sdpa").answer_batch(bb, images, qs, 10)
    vcd0 = VCD(VCDConfig(alpha=0.0)).answer_batch(bb, images, qs, 10)
    assert [a.token_ids for a in vcd0] == [a.token_ids for a in greedy]
    vcd = VCD().answer_batch(bb, images, qs, 10, min_new_tokens=10)
    assert [a.token_ids for a in vcd] != [a.token_ids for a in greedy]  # the contrast does change the text


def test_vcd_noise_is_per_image_and_reproducible(llava, qwen):
    for bb, size in ((llava, (32, 32)), (qwen, (56, 28))):
        images = _images(2, size=size, seed=1)
        inputs = bb.prepare_batch(images * 2, ["describe the image"] * 4).inputs
        a = noise_pixels(inputs, 2, [5, 6], 500)
        b = noise_pixels(inputs, 2, [5, 6], 500)
        torch.testing.assert_close(a, b)
        half = a.shape[0] // 2
        torch.testing.assert_close(a[:half], inputs["pixel_values"][:half])  # the originals are untouched
        assert not torch.allclose(a[half:], inputs["pixel_values"][half:])
    # a batch answers each image as its single run does (noise seeded per image, not per row)
    images = _images(3, seed=2)
    batch = VCD().answer_batch(llava, images, ["describe the image"] * 3, 8, min_new_tokens=8)
    single = VCD().answer(llava, images[1], "describe the image", 8, min_new_tokens=8)
    assert batch[1].token_ids == single.token_ids


def test_vcd_on_the_embedded_model(embedded):
    from adapt.world import DEFAULT_DESCRIBE_PROMPT, make_split

    images = [s.image() for s in make_split("validation", 2, seed=3)]
    greedy = get_method("greedy:sdpa").answer_batch(embedded, images, [DEFAULT_DESCRIBE_PROMPT] * 2, 96)
    vcd0 = VCD(VCDConfig(alpha=0.0)).answer_batch(embedded, images, [DEFAULT_DESCRIBE_PROMPT] * 2, 96)
    assert [a.token_ids for a in vcd0] == [a.token_ids for a in greedy]
    vcd = get_method("vcd").answer_batch(embedded, images, [DEFAULT_DESCRIBE_PROMPT] * 2, 96)
    assert all(a.text and a.info["tokens"] == len(a.token_ids) for a in vcd)
    sampled = VCD(VCDConfig(sample=True, seed=1)).answer_batch(embedded, images, [DEFAULT_DESCRIBE_PROMPT] * 2, 96)
    again = VCD(VCDConfig(sample=True, seed=1)).answer_batch(embedded, images, [DEFAULT_DESCRIBE_PROMPT] * 2, 96)
    assert [a.token_ids for a in sampled] == [a.token_ids for a in again]
    assert [a.token_ids for a in sampled] != [a.token_ids for a in vcd]
