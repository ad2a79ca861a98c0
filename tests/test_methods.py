"""The method registry: one-pass ADAPT-TF, batches, the second pass, PAI, on tiny backbones."""

import numpy as np
import pytest
import torch
from PIL import Image

from adapt.anchor import BiasCache
from adapt.backbones import LlavaBackbone, Qwen2_5_VLBackbone
from adapt.config import AdaptConfig
from adapt.methods import NAMES, AdaptTF, get_method, get_methods
from adapt.testing import tiny_llava, tiny_qwen2_5_vl

from two_pass import two_pass

ALWAYS = {"asi.trigger": "always", "asi.layers": "all", "anchor.num_noise": 2}


def _llava():
    return LlavaBackbone(*tiny_llava(layers=3), "tiny-llava")


def _images(n, size=(32, 32), seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype("uint8")) for _ in range(n)]


@pytest.mark.parametrize("operator", ["logprior", "mass-aware"])
def test_one_pass_equals_two_pass(operator, tmp_path):
    """The anchor run's first K tokens are the steered answer's: one decoding gives the same tokens
    and the same steered maps as an anchor run followed by a steered run."""
    bb = _llava()
    cfg = AdaptConfig().replace(**ALWAYS, **{"asi.operator": operator, "anchor.k": 3, "max_new_tokens": 10})
    cache = BiasCache(tmp_path)
    image, q = _images(1)[0], "describe the image"
    one = AdaptTF(cfg, cache, lean=False).answer(bb, image, q, 10, min_new_tokens=10)
    lean = AdaptTF(cfg.replace(**{"asi.layers": "1"}), cache).answer(bb, image, q, 10, min_new_tokens=10)
    full = AdaptTF(cfg.replace(**{"asi.layers": "1"}), cache, lean=False).answer(bb, image, q, 10, min_new_tokens=10)
    # lean: the unmonitored layers run as plain SDPA after the anchor phase, same tokens and decisions
    assert lean.token_ids == full.token_ids and lean.info == full.info
    assert lean.generation.maps.shape[0] == 3 and full.generation.maps.shape[0] == 10
    two, policy = two_pass(bb, image, q, cfg, cache)
    assert one.token_ids == two.token_ids
    torch.testing.assert_close(one.generation.maps, two.maps[: len(one.token_ids)], atol=1e-6, rtol=1e-5)
    assert one.info["fired"] == int(policy.fired_matrix()[: len(two.token_ids)].sum()) > 0


def test_batch_rows_equal_single_runs(tmp_path):
    """Two rows with different prompt lengths (so different image positions under left padding),
    different images and therefore different anchors and decisions: each equals its own single run."""
    bb = _llava()
    cfg = AdaptConfig().replace(**{"asi.trigger": "amc", "asi.tau": 0.9, "asi.layers": "top:2",
                                   "anchor.num_noise": 2, "anchor.k": 2})
    cache = BiasCache(tmp_path)
    images = _images(2, seed=3)
    questions = ["describe the image", "what colour is the star on the left of the picture ?"]
    method = AdaptTF(cfg, cache)
    prepared = bb.prepare_batch(images, questions)
    assert prepared.span.positions[0, 0] != prepared.span.positions[1, 0]
    batch = method.answer_batch(bb, images, questions, 8, min_new_tokens=8)
    singles = [method.answer(bb, im, q, 8, min_new_tokens=8) for im, q in zip(images, questions)]
    for b, s in zip(batch, singles):
        assert b.token_ids == s.token_ids
        assert (b.info["fired"], b.info["monitored"]) == (s.info["fired"], s.info["monitored"])
        torch.testing.assert_close(b.generation.maps, s.generation.maps, atol=1e-5, rtol=1e-4)
    assert batch[0].info["fired"] != batch[1].info["fired"] or not torch.equal(batch[0].generation.maps,
                                                                               batch[1].generation.maps)


def test_second_pass_steers_short_answers_from_step_zero(tmp_path):
    bb = _llava()
    cfg = AdaptConfig().replace(**ALWAYS, **{"anchor.k": 5, "asi.second_pass": "short"})
    images = _images(2, seed=5)
    out = AdaptTF(cfg, BiasCache(tmp_path)).answer_batch(bb, images, ["is there a star ?"] * 2, 3, min_new_tokens=3)
    for a in out:  # 3 tokens < K: the first pass could not act; the second fired from step 0
        assert a.info["pass"] == 2 and a.info["monitored"] == 3 * bb.num_layers and a.info["fired"] > 0
    off = AdaptTF(cfg.replace(**{"asi.second_pass": "off"}), BiasCache(tmp_path)).answer_batch(
        bb, images, ["is there a star ?"] * 2, 3, min_new_tokens=3)
    assert all(a.info["pass"] == 1 and a.info["monitored"] == 0 for a in off)
    # answers longer than K: "short" leaves them, "pointed" steers the yes/no question but not the description
    qs = ["is there a star ?", "describe the image in detail"]
    short = AdaptTF(cfg, BiasCache(tmp_path)).answer_batch(bb, images, qs, 8, min_new_tokens=8)
    pointed = AdaptTF(cfg.replace(**{"asi.second_pass": "pointed"}), BiasCache(tmp_path)).answer_batch(
        bb, images, qs, 8, min_new_tokens=8)
    assert [a.info["pass"] for a in short] == [1, 1] and [a.info["pass"] for a in pointed] == [2, 1]
    assert pointed[0].info["monitored"] == 8 * bb.num_layers


@pytest.mark.parametrize("family", ["llava", "qwen"])
def test_every_method_runs_on_tiny_backbones(family, tmp_path):
    if family == "llava":
        bb = _llava()
        images = _images(2)
    else:
        bb = Qwen2_5_VLBackbone(*tiny_qwen2_5_vl(layers=3), "tiny-qwen")
        images = _images(1, size=(56, 28)) + _images(1, size=(28, 56))  # two grids: answered in two groups
    questions = ["describe the image", "is there a dog ?"]
    cfg = AdaptConfig().replace(**{"anchor.num_noise": 2})
    for method in get_methods(NAMES, cfg, BiasCache(tmp_path)):
        answers = method.answer_batch(bb, images, questions, 6, min_new_tokens=6)
        assert len(answers) == 2 and all(len(a.token_ids) == 6 for a in answers), method.name


def test_pai_raises_image_attention_from_layer_two_only():
    """At the first step layer 2 reads what it read unsteered: PAI's image mass there is the softmax over
    all keys of the unsteered logits with α·|z| added at the image keys, computed here by hand per head."""
    from adapt.hooks import HOOK_LOGITS, AttentionRecorder

    bb = _llava()
    image = _images(1)[0]
    plain = get_method("greedy").answer(bb, image, "describe the image", 1).generation.maps[0]
    pai = get_method("pai").answer(bb, image, "describe the image", 1).generation.maps[0]
    torch.testing.assert_close(pai[:2], plain[:2])  # layers 0 and 1 untouched
    p = bb.prepare(image, "describe the image")
    rec = AttentionRecorder(p.span, bb.num_layers, cache=(HOOK_LOGITS,), per_head=True)
    with rec, torch.no_grad():
        bb.model(**p.inputs)
    z, probs = rec.cached(HOOK_LOGITS)[0, 2, 0].double(), rec.maps()[0, 2, 0].double()  # [H, n] unsteered
    boosted = probs * torch.exp(0.2 * z.abs())  # p_i·e^{b_i}
    mass = boosted.sum(-1) / (1 - probs.sum(-1) + boosted.sum(-1))  # per head, over all keys
    assert float(pai[2].sum()) == pytest.approx(float(mass.mean()), rel=1e-5)
    assert float(pai[2].sum()) > float(plain[2].sum()) + 1e-4  # raised, by more than rounding


def test_greedy_with_capture_equals_stock_sdpa():
    bb = _llava()
    images = _images(2, seed=9)
    a = get_method("greedy").answer_batch(bb, images, ["describe the image"] * 2, 8)
    b = get_method("greedy:sdpa").answer_batch(bb, images, ["describe the image"] * 2, 8)
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    assert bb.model.config.get_text_config()._attn_implementation == "adapt"  # switched back


def test_registry_names_and_errors():
    assert get_method("adapt-tf:paper").cfg.asi.layers == "all"
    assert get_method("adapt-tf:mass-aware").cfg.asi.operator == "mass-aware"
    assert get_method("adapt-tf:authors-hhi").cfg.anchor.fusion == "authors"
    for bad in ("beam", "adapt-tf:nope"):
        with pytest.raises(ValueError, match="available"):
            get_method(bad)
