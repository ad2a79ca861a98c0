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
    method = AdaptTF(cfg, BiasCache(tmp_path), lean=False, record=True)
    batch = method.answer_batch(bb, images, questions, 6, min_new_tokens=6)
    for b, (im, q) in enumerate(zip(images, questions)):
        single = method.answer(bb, im, q, 6, min_new_tokens=6)
        assert batch[b].token_ids == single.token_ids
        assert (batch[b].info["fired"], batch[b].info["monitored"]) == (single.info["fired"], single.info["monitored"])
        torch.testing.assert_close(batch[b].generation.maps, single.generation.maps, atol=1e-5, rtol=1e-4)
        # H*(q) from the question tokens' own attention, and the anchor it shapes
        assert batch[b].record.anchor.target_entropy == pytest.approx(single.record.anchor.target_entropy, abs=1e-6)
        np.testing.assert_allclose(batch[b].record.anchor.anchor, single.record.anchor.anchor, atol=1e-6)


# ------------------------------------------------------------------------------- one ADAPT-TF
ALWAYS = {"asi.trigger": "always", "asi.layers": "all", "anchor.num_noise": 2, "anchor.k": 3, "max_new_tokens": 8}


def test_analyse_assembles_the_registered_methods_answers(bb, tmp_path):
    """The app's analysis is the benchmarks' ADAPT-TF (same tokens, maps, decisions) beside the registered
    greedy, and its anchor is the one an anchor run of K tokens gives (the two-pass definition)."""
    from adapt.methods import get_method
    from adapt.anchor.build import probe_anchor
    from adapt.pipeline import analyse

    cfg = AdaptConfig().replace(**ALWAYS)
    cache = BiasCache(tmp_path)
    image, q = _images(1, seed=2)[0], "describe the image"
    trace = analyse(bb, image, q, cfg, bias_cache=cache)
    method = get_method("adapt-tf", cfg, cache)
    method.lean = False
    ours = method.answer(bb, image, q, 8)
    greedy = get_method("greedy").answer(bb, image, q, 8)
    assert trace.steered.token_ids == ours.token_ids and trace.unsteered.token_ids == greedy.token_ids
    np.testing.assert_allclose(trace.steered.maps, ours.generation.maps.numpy(), atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(trace.unsteered.maps, greedy.generation.maps.numpy(), atol=1e-6, rtol=1e-5)
    assert int(trace.steered.steered.sum()) == ours.info["fired"] > 0 and not trace.unsteered.steered.any()
    assert np.isfinite(trace.steered.amc).all() and trace.asi_layers == [0, 1, 2]
    anchor, grid = probe_anchor(bb, image, q, cfg, cache)
    assert trace.grid == tuple(grid) and not trace.bias_cache_hit and anchor.cache_hit  # analyse filled the cache
    for name, ref in (("anchor", anchor.anchor), ("fused", anchor.fusion.fused), ("lam", anchor.fusion.lam),
                      ("bias", anchor.bias), ("debias_mask", anchor.debias_mask), ("layer_maps", anchor.layer_maps)):
        np.testing.assert_allclose(getattr(trace, name), ref, atol=1e-6, rtol=1e-5, err_msg=name)
    assert trace.target_entropy == pytest.approx(anchor.target_entropy)
    # the relative trigger's thresholds are τ·S_ref of the anchor phase
    amc_cfg = cfg.replace(**{"asi.trigger": "amc", "asi.tau": 0.9})
    t2 = analyse(bb, image, q, amc_cfg, bias_cache=cache)
    s_ref = np.nanmean(t2.steered.amc[: cfg.anchor.k], 0)
    np.testing.assert_allclose(t2.threshold, 0.9 * s_ref, rtol=1e-4)


def test_analyse_on_the_enhanced_image_decodes_it(bb, tmp_path):
    """``enhance.enabled``: the steered answer reads the anchor-guided image (its unsteered first K steps
    are greedy decoding on that image), and the trace shows that image."""
    from adapt.enhance import enhance
    from adapt.methods import get_method
    from adapt.anchor.build import probe_anchor
    from adapt.pipeline import analyse

    cfg = AdaptConfig().replace(**ALWAYS, **{"enhance.enabled": True})
    cache = BiasCache(tmp_path)
    image, q = _images(1, size=(48, 32), seed=3)[0], "describe the image"
    trace = analyse(bb, image, q, cfg, bias_cache=cache)
    anchor, grid = probe_anchor(bb, image, q, cfg, cache)
    made = enhance(image, anchor.anchor, cfg.enhance, geometry=bb.layout_geometry(image.size, grid))
    assert trace.steered.image_used == "enhanced"
    assert np.array_equal(np.asarray(trace.enhanced_image), np.asarray(made))
    assert not np.array_equal(np.asarray(made), np.asarray(image))
    k = min(cfg.anchor.k, len(trace.steered.token_ids))
    on_enhanced = get_method("greedy").answer(bb, made, q, k)
    assert trace.steered.token_ids[:k] == on_enhanced.token_ids[:k]
    np.testing.assert_allclose(trace.steered.maps[:k], on_enhanced.generation.maps.numpy()[:k], atol=1e-6,
                               rtol=1e-5)
    assert trace.steered.steered[k:].any()


def test_analyse_second_pass_steers_from_step_zero(bb, tmp_path):
    from adapt.pipeline import analyse

    cfg = AdaptConfig().replace(**ALWAYS, **{"asi.second_pass": "all"})
    trace = analyse(bb, _images(1, seed=2)[0], "is there a star ?", cfg, bias_cache=BiasCache(tmp_path))
    assert trace.steered.steered[0].all()  # always-on trigger from step 0: the second pass
    off = analyse(bb, _images(1, seed=2)[0], "is there a star ?", cfg.replace(**{"asi.second_pass": "off"}),
                  bias_cache=BiasCache(tmp_path))
    assert not off.steered.steered[: cfg.anchor.k].any() and off.steered.steered[cfg.anchor.k:].any()


# ------------------------------------------------------------------------------- the registry
def test_a_method_registers_with_one_decorator(bb):
    from adapt.methods import REGISTRY, Greedy, describe, get_method, names, register

    @register("test-echo", "greedy under another name (test only)", {"twice": "the same, variant"})
    class Echo(Greedy):
        @classmethod
        def create(cls, variant, cfg, cache, name):
            m = cls()
            m.name = name
            return m

    try:
        assert names()[-2:] == ["test-echo", "test-echo:twice"]
        assert describe()["test-echo:twice"] == "the same, variant"
        m = get_method(" test-echo:twice ")
        assert isinstance(m, Echo) and m.name == "test-echo:twice"
        image = _images(1)[0]
        assert m.answer(bb, image, "describe the image", 3).token_ids == \
            get_method("greedy").answer(bb, image, "describe the image", 3).token_ids
        with pytest.raises(ValueError, match="registered twice"):
            register("test-echo", "again")(Echo)
    finally:
        for n in ("test-echo", "test-echo:twice"):
            REGISTRY.pop(n, None)
    with pytest.raises(ValueError, match=r"unknown method 'test-echo'; available: greedy, greedy:sdpa, adapt-tf"):
        get_method("test-echo")


def test_every_registered_name_builds_its_method(tmp_path):
    from adapt.methods import NAMES, VARIANTS, AdaptTF, describe, get_method

    assert NAMES[:3] == ["greedy", "greedy:sdpa", "adapt-tf"] and NAMES[-2:] == ["vcd", "opera"]
    assert set(describe()) == set(NAMES) and all(describe()[n] for n in NAMES)
    cfg = AdaptConfig().replace(**{"asi.tau": 0.42})
    for name in NAMES:
        m = get_method(name, cfg, BiasCache(tmp_path))
        assert m.name == name
        if name.startswith("adapt-tf"):  # the configuration given, with the variant's settings on top
            variant = name.partition(":")[2]
            assert m.cfg.asi.tau == VARIANTS.get(variant, {}).get("asi.tau", 0.42)
    assert isinstance(get_method("image-boost"), AdaptTF) and get_method("image-boost").cfg.asi.operator == "image-boost"
    assert get_method("pai:attn").cfg.gamma == 1 and get_method("pai").cfg.gamma != 1
    assert get_method("greedy:sdpa").capture is False


def test_analyse_compares_with_a_registered_method_in_the_baseline_slot(bb, tmp_path):
    """``compare``: the named method answers in the unsteered slot (no greedy run is made and dropped),
    ADAPT-TF's answer does not change, and the trace names the method."""
    from adapt.methods import describe, get_method
    from adapt.pipeline import analyse

    cfg = AdaptConfig().replace(**ALWAYS)
    cache = BiasCache(tmp_path)
    image, q = _images(1, seed=2)[0], "describe the image"
    base = analyse(bb, image, q, cfg, bias_cache=cache)
    vs = analyse(bb, image, q, cfg, bias_cache=cache, compare="pai")
    pai = get_method("pai").answer(bb, image, q, 8)
    assert vs.unsteered.token_ids == pai.token_ids and vs.steered.token_ids == base.steered.token_ids
    np.testing.assert_allclose(vs.unsteered.maps, pai.generation.maps.numpy(), atol=1e-6, rtol=1e-5)
    assert not np.allclose(vs.unsteered.maps, base.unsteered.maps, atol=1e-5)  # PAI's attention, not greedy's
    assert vs.meta["compare"] == "pai" and vs.meta["compare_about"] == describe()["pai"]
    assert "compare" in vs.timings and "unsteered" not in vs.timings and "compare" not in base.meta
    sdpa = analyse(bb, image, q, cfg, bias_cache=cache, compare="greedy:sdpa")  # records no attention
    assert sdpa.unsteered.maps.shape[0] == 0 and sdpa.unsteered.token_ids == base.unsteered.token_ids
