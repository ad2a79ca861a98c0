"""One ADAPT-TF: the app's analysis runs the registered method; the registry; the fixes found on the way."""

import numpy as np
import pytest
import torch
from PIL import Image

from adapt.anchor import BiasCache, model_target_entropy
from adapt.backbones import LlavaBackbone
from adapt.config import AdaptConfig
from adapt.hooks import HOOK_LOGITS, AttentionRecorder, LogitBias
from adapt.testing import tiny_llava


@pytest.fixture(scope="module")
def bb():
    return LlavaBackbone(*tiny_llava(layers=3), "tiny-llava")


def _images(n, size=(32, 32), seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype("uint8")) for _ in range(n)]


# ------------------------------------------------------------------------------- fixes on the way
def test_cached_image_logits_are_the_unsteered_ones(bb):
    """``attn.image_logits`` keeps what the layer computed before any write: a LogitBias on layer 1 changes
    that layer's probabilities (and everything downstream) but not its cached logits."""
    image = _images(1, seed=1)[0]
    p = bb.prepare(image, "describe the image")

    class Bias:
        def intervene(self, point):
            if point.layer != 1:
                return None
            return LogitBias(torch.linspace(-3.0, 3.0, point.probs.shape[-1]).expand(point.probs.shape[0], -1))

    def run(policy):
        rec = AttentionRecorder(p.span, bb.num_layers, policy=policy, cache=(HOOK_LOGITS,), per_head=True)
        with rec, torch.no_grad():
            bb.model(**p.inputs)
        return rec.cached(HOOK_LOGITS)[0], rec.maps()[0]  # [L, B, H, n] each

    plain_logits, plain_probs = run(None)
    steered_logits, steered_probs = run(Bias())
    # the write took effect on layer 1 (and moved layer 2, which reads its output) ...
    assert not torch.allclose(steered_probs[1], plain_probs[1], atol=1e-4)
    assert not torch.allclose(steered_logits[2], plain_logits[2], atol=1e-4)
    # ... yet layer 1's cached logits are its unsteered ones, and layers before it are untouched
    torch.testing.assert_close(steered_logits[:2], plain_logits[:2], rtol=0, atol=0)
    torch.testing.assert_close(steered_probs[0], plain_probs[0], rtol=0, atol=0)


def test_prefill_text_maps_batch_equal_single_under_left_padding(bb):
    """The question tokens' attention to the image (``target_entropy="model"``) of each row of a
    left-padded batch equals its single run: rows with a longer question keep their first tokens."""
    images = _images(2, seed=4)
    questions = ["what colour is the star on the left of the picture and is it big ?", "describe the image"]
    prepared = bb.prepare_batch(images, questions)
    ends = prepared.span.positions[:, -1]
    assert ends[0] != ends[1]  # the rows' images end at different columns
    batch = bb.generate_batch(prepared, max_new_tokens=1, capture_prefill=True)
    for b, (im, q) in enumerate(zip(images, questions)):
        single = bb.generate(bb.prepare(im, q), max_new_tokens=1, capture_prefill=True)
        torch.testing.assert_close(batch[b].prefill_maps, single.prefill_maps, atol=1e-6, rtol=1e-5)
        assert model_target_entropy(batch[b].prefill_maps.numpy()) == pytest.approx(
            model_target_entropy(single.prefill_maps.numpy()), abs=1e-6)


def test_adapt_tf_batch_equals_single_with_the_model_target_entropy(bb, tmp_path):
    from adapt.methods import AdaptTF

    cfg = AdaptConfig().replace(**{"anchor.target_entropy": "model", "anchor.num_noise": 2, "anchor.k": 2,
                                   "asi.trigger": "amc", "asi.tau": 0.9, "asi.layers": "all"})
    images = _images(2, seed=6)
    questions = ["what colour is the star on the left of the picture and is it big ?", "describe the image"]
    method = AdaptTF(cfg, BiasCache(tmp_path), lean=False)
    batch = method.answer_batch(bb, images, questions, 6, min_new_tokens=6)
    for b, (im, q) in enumerate(zip(images, questions)):
        single = method.answer(bb, im, q, 6, min_new_tokens=6)
        assert batch[b].token_ids == single.token_ids
        assert (batch[b].info["fired"], batch[b].info["monitored"]) == (single.info["fired"], single.info["monitored"])
        torch.testing.assert_close(batch[b].generation.maps, single.generation.maps, atol=1e-5, rtol=1e-4)
