"""The key map per layer (adapt.hooks.keymap) on the two families that need one, tiny random checkpoints
saved like hub folders: Gemma 3 (sliding-window and global layers; a window small enough that the image
leaves it while decoding) and Qwen3.5 (linear-attention and full-attention layers)."""

from __future__ import annotations

import pytest
import torch

from adapt.anchor import BiasCache
from adapt.backbones import FAMILIES, load_backbone
from adapt.config import AdaptConfig
from adapt.hooks.keymap import KeyMap, KeyMapError
from adapt.methods import get_method
from adapt.pipeline import analyse

from methods_check import assert_every_method_batches_like_single
from families import eager_attentions as _eager_attentions, gemma3_checkpoint, noise_image, qwen_checkpoint
from two_pass import assert_one_pass_equals_two_pass

WINDOW = 32
FAMS = ["gemma3", "qwen3_5"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("keymap")
    return {"gemma3": gemma3_checkpoint(root / "gemma3", sliding_window=WINDOW),
            "qwen3_5": qwen_checkpoint("qwen3_5", root / "qwen3_5", layers=4)}


@pytest.fixture(scope="module")
def backbones(folders):
    return {f: load_backbone(folders[f], dtype=torch.float32) for f in FAMS}


_image = noise_image


def test_key_map_from_configs():
    class Cfg:
        num_hidden_layers = 4
        layer_types = ["sliding_attention", "full_attention", "linear_attention", "full_attention"]
        sliding_window = 8

    km = KeyMap.from_config(Cfg)
    assert km.captured == (0, 1, 3) and km.slot == {0: 0, 1: 1, 3: 2} and not km.plain
    assert km.describe() == {"captured": [0, 1, 3], "full": [1, 3], "sliding": [0], "not_captured": [2], "window": 8}
    Cfg.sliding_window = None  # a sliding layer without a window sees everything
    assert KeyMap.from_config(Cfg).kinds[0] == "full_attention"
    Cfg.layer_types = ["chunked_attention"] * 4
    with pytest.raises(KeyMapError, match="chunked_attention"):
        KeyMap.from_config(Cfg)
    # no layer_types (Mistral): a window makes every layer sliding, as transformers' cache builds it
    from transformers import LlamaConfig, MistralConfig

    assert KeyMap.from_config(MistralConfig(num_hidden_layers=2, sliding_window=16)) == KeyMap(
        ("sliding_attention",) * 2, 16)
    assert KeyMap.from_config(LlamaConfig(num_hidden_layers=2)).plain


def test_gemma3_capture_equals_eager_and_the_image_leaves_the_sliding_window(folders, backbones):
    """Two left-padded rows: every step's captured map equals the eager model's, per layer kind: global
    layers at the positions, sliding layers shifted by what the window dropped (and 0 for the keys it
    dropped); sliding layers are reported not steerable from the step the image began to leave the
    window, and no write is offered to them from then on, while the global layer is steered throughout."""
    bb = backbones["gemma3"]
    assert bb.key_map.kinds == ("sliding_attention", "sliding_attention", "full_attention")
    images = [_image((40, 30), 1), _image((30, 40), 2)]
    p = bb.prepare_batch(images, ["describe the image", "is there a dog ?"])
    steps = 12
    offered = []

    def policy(layer, step, attn):
        offered.append((layer, step))
        return torch.zeros_like(attn)

    gens = bb.generate_batch(p, max_new_tokens=steps, min_new_tokens=steps, policy=policy)
    atts = _eager_attentions(bb, folders["gemma3"], p, [g.token_ids for g in gens])
    assert len(atts) == 3
    for b in range(2):
        pos = p.span.positions[b]
        for t in range(steps):
            row = p.prompt_len - 1 + t
            expected = torch.stack([att[b, :, row, pos].mean(0) for att in atts])
            torch.testing.assert_close(gens[b].maps[t], expected, atol=1e-6, rtol=1e-5)
    # the image (from its earliest key in any row) is in the window of step t's query (at position
    # prompt_len − 1 + t, seeing keys at distance < window) iff first ≥ prompt_len + t − window
    first = int(p.span.positions.min())
    leaves = first + WINDOW - p.prompt_len + 1
    assert 0 < leaves < steps  # in the window at the prefill, out of it before the end
    keys = gens[0].keys
    assert keys["sliding"] == [0, 1] and keys["not_captured"] == [] and keys["window"] == WINDOW
    assert keys["not_steerable_from"] == {0: leaves, 1: leaves}
    for layer in (0, 1):
        assert float(gens[0].maps[leaves - 1, layer].sum()) > 1e-3  # in the window: real image mass
        assert float(gens[0].maps[steps - 1, layer].sum()) < float(gens[0].maps[leaves - 1, layer].sum())
        assert sorted(s for l, s in offered if l == layer) == list(range(leaves))
    assert sorted(s for l, s in offered if l == 2) == list(range(steps))


def test_gemma3_pan_and_scan_follows_the_checkpoint_and_the_load_option(folders):
    """The folder's image processor leaves pan-and-scan null (as the hub's): one view, no warning; a processor
    with it on, loaded with ``pan_and_scan=False``, gives one view too (tests/test_gemma3_crops.py: the crops)."""
    import warnings

    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(folders["gemma3"])
    proc.image_processor.do_pan_and_scan = True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bb = FAMILIES["gemma3"].load(folders["gemma3"], dtype=torch.float32, processor=proc, pan_and_scan=False)
        plain = load_backbone(folders["gemma3"], dtype=torch.float32)
    assert bb.pan_and_scan is False and plain.pan_and_scan is False
    for b in (bb, plain):
        p = b.prepare(_image((900, 300), 3), "describe the image")  # wide: pan-and-scan would crop it
        assert p.span.n == 16 and p.span.grid == (4, 4)


def test_gemma3_text_only_branch_masks_the_image_block_and_its_wrappers(backbones):
    from adapt.methods.pai import text_only_mask

    bb = backbones["gemma3"]
    p = bb.prepare_batch([_image((40, 30), 4)] * 2, ["describe the image"] * 2)
    mask = text_only_mask(bb, p.inputs, 1)
    ids = p.inputs["input_ids"][1]
    tok = bb.tokenizer
    wrappers = torch.isin(ids, torch.tensor([tok.convert_tokens_to_ids(t) for t in (tok.boi_token, tok.eoi_token)]))
    assert int(wrappers.sum()) == 2 and int(mask[1][wrappers].sum()) == 0
    assert int(mask[1].sum()) == int(p.inputs["attention_mask"][1].sum()) - p.span.n - 2


def test_qwen3_5_captures_the_full_attention_layers_only(folders, backbones):
    bb = backbones["qwen3_5"]
    assert bb.key_map.kinds == ("linear_attention", "full_attention") * 2 and bb.num_layers == 2
    p = bb.prepare_batch([_image((84, 56), 1), _image((84, 56), 2)], ["describe the image", "is there a dog ?"])
    steps = 4
    offered = set()

    def policy(layer, step, attn):
        offered.add(layer)
        return None

    gens = bb.generate_batch(p, max_new_tokens=steps, min_new_tokens=steps, policy=policy)
    assert gens[0].keys["captured"] == [1, 3] and gens[0].keys["not_captured"] == [0, 2]
    assert gens[0].maps.shape[1] == 2 and offered == {0, 1}  # the policy sees captured rows 0, 1
    atts = _eager_attentions(bb, folders["qwen3_5"], p, [g.token_ids for g in gens])
    full = [atts[i] for i in (1, 3)] if len(atts) == 4 else list(atts)
    assert len(full) == 2 and all(a is not None for a in full)
    for b in range(2):
        pos = p.span.positions[b]
        for t in range(steps):
            row = p.prompt_len - 1 + t
            expected = torch.stack([att[b, :, row, pos].mean(0) for att in full])
            torch.testing.assert_close(gens[b].maps[t], expected, atol=1e-6, rtol=1e-5)
    assert float(gens[0].maps.sum(-1).min()) > 1e-3


@pytest.mark.parametrize("family", FAMS)
def test_every_method_runs_and_batches_equal_single_runs(family, backbones, tmp_path):
    bb = backbones[family]
    images = [_image((40, 30), 4), _image((84, 56), 5)]
    questions = ["describe the image", "what colour is the star on the left ?"]
    # OPERA cuts its beams out of the cache by position; a linear layer keeps a masked token
    refused = {"opera": f"OPERA is not supported on {family}"}
    if family == "qwen3_5":
        refused["pai"] = f"PAI's text-only branch is not supported on {family}"
    assert_every_method_batches_like_single(bb, images, questions, tmp_path, n=4, refused=refused)


@pytest.mark.parametrize("family", FAMS)
def test_one_pass_adapt_tf_equals_two_pass(family, backbones, tmp_path):
    """The registered one-pass ADAPT-TF against the paper's two decodings (``tests/two_pass.py``)."""
    bb = backbones[family]
    cache = BiasCache(tmp_path)
    image, q = _image((84, 56), 7), "describe the image"
    one, two, cfg = assert_one_pass_equals_two_pass(bb, image, q, cache)
    greedy = get_method("greedy").answer(bb, image, q, 8, min_new_tokens=8)
    n = len(two.token_ids)
    trace = analyse(bb, image, q, cfg, bias_cache=cache)
    assert trace.layer_maps.shape[0] == bb.num_layers  # the anchor fuses captured layers only
    assert not torch.allclose(one.generation.maps[cfg.anchor.k:n], greedy.generation.maps[cfg.anchor.k:n])


@pytest.mark.parametrize("contiguous", [True, False])
def test_steering_a_sliding_layer_at_shifted_columns_equals_the_full_row_with_the_window_mask(contiguous):
    """One decoding step of a sliding layer whose cache dropped keys: the recorder reading the window's
    keys at the shifted columns, with a logit bias on the image keys, gives the output and map of a
    full-attention row over every key with the window as a mask; once the image has begun to leave the
    window no write is offered and the row is the window's plain attention."""
    from adapt.hooks import AttentionRecorder, ImageSpan

    torch.manual_seed(0)
    b, h, hkv, d, window, n = 2, 4, 2, 8, 12, 4
    positions = torch.tensor([[5, 6, 7, 8], [6, 7, 8, 9]] if not contiguous else [[5, 6, 7, 8]] * 2)
    span = ImageSpan(positions=positions, grid=(2, 2))
    bias = torch.randn(b, n)
    for seq, steered in ((14, True), (17, True), (18, False)):  # first image key 5: in the window iff 5 ≥ seq − 12
        q = torch.randn(b, h, 1, d)
        k, v = torch.randn(b, hkv, seq, d), torch.randn(b, hkv, seq, d)
        offered = []

        def policy(layer, step, attn):
            offered.append(step)
            return bias

        prompt = seq - 3
        sliding = AttentionRecorder(span, 1, policy=policy, keymap=KeyMap(("sliding_attention",), window))
        full = AttentionRecorder(span, 1, policy=policy)
        mask = (torch.arange(seq) >= seq - window).view(1, 1, 1, seq).expand(b, 1, 1, seq)
        outs = []
        for rec, kk, vv, m in ((sliding, k[:, :, -window:], v[:, :, -window:], None), (full, k, v, mask)):
            assert rec.step_of(prompt, prompt, 0) == 0
            for _ in range(3):
                step = rec.step_of(1, kk.shape[2], 0)
            assert step == 3
            outs.append((rec.last_row(0, step, q, kk, vv, m, d ** -0.5), rec._maps.layers[0][step]))
        if steered:
            assert offered == [3, 3]
            torch.testing.assert_close(outs[0][0], outs[1][0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(outs[0][1], outs[1][1], atol=1e-6, rtol=1e-5)
        else:
            assert offered == [3] and sliding.keys_report()["not_steerable_from"] == {0: 3}
            plain = torch.nn.functional.scaled_dot_product_attention(
                q, k[:, :, -window:].repeat_interleave(2, 1), v[:, :, -window:].repeat_interleave(2, 1))
            torch.testing.assert_close(outs[0][0], plain.transpose(1, 2), atol=1e-5, rtol=1e-5)
            dropped = positions < seq - window  # keys the cache no longer holds read 0
            assert bool((outs[0][1][dropped] == 0).all()) and bool((outs[0][1][~dropped] > 0).all())


def test_the_trace_says_which_layers_were_not_captured(backbones, tmp_path):
    """Qwen3.5's linear-attention layers have no softmax over the image: the saved trace names them and the
    summary says so, after a save and a reload."""
    from adapt.trace import Trace
    from app.figures import summary_markdown

    bb = backbones["qwen3_5"]
    cfg = AdaptConfig().replace(**{"anchor.num_noise": 1, "anchor.k": 2, "max_new_tokens": 6})
    trace = analyse(bb, _image((84, 56), 3), "describe the image", cfg, bias_cache=BiasCache(tmp_path))
    keys = trace.meta["keys"]
    assert keys["not_captured"] == [0, 2] and keys["captured"] == [1, 3]
    again = Trace.load(trace.save(tmp_path / "t.zip"))
    text = summary_markdown(again)
    assert "**not captured** 0,2" in text and "captured layers 1,3" in text
    again.meta["keys"] = {"not_captured": ["<img src=x onerror=alert(1)>", 2], "captured": [1]}
    assert "<img" not in summary_markdown(again) and "**not captured** 2" in summary_markdown(again)


def test_a_sliding_layer_whose_window_lost_the_image_feeds_no_anchor(backbones, tmp_path):
    """A long question puts the image out of the 32-key window within the anchor's K steps: the sliding
    layers are left out of the anchor (λ 0, ``window_lost``) exactly when the recorder reports them not steerable
    before step K, the anchor is then the global layer's alone (as if the sliding layers were absent, bias
    map included), one pass = two passes, and a batch row = its single run. A short question keeps them."""
    import numpy as np

    from adapt.anchor.build import anchor_from_maps, layer_maps_from, noise_layer_maps, window_kept
    from adapt.methods import AdaptTF

    bb = backbones["gemma3"]
    k = 3
    cfg = AdaptConfig().replace(**{"anchor.num_noise": 2, "anchor.k": k, "max_new_tokens": 6,
                                   "asi.trigger": "always", "asi.layers": "all"})
    cache = BiasCache(tmp_path)
    image = _image((40, 30), 5)
    short, long = "describe the image", "is there a red circle or a blue star near the dog on the left of the picture ?"
    method = AdaptTF(cfg, cache, lean=False, record=True)
    anchors = {}
    for q in (short, long):
        p = bb.prepare(image, q)
        probe = bb.generate(p, max_new_tokens=k, min_new_tokens=k)
        lost_before_k = {layer: s for layer, s in probe.keys["not_steerable_from"].items() if s < k}
        keep = window_kept(bb, p, 0, k)
        # the anchor's rule is the recorder's: a sliding layer is left out iff its window lost the image by step K − 1
        assert (keep is None) == (not lost_before_k)
        answer = method.answer(bb, image, q, 6, min_new_tokens=6)
        anchors[q] = a = answer.record.anchor
        maps, grid = probe.maps.numpy(), p.span.grid
        noise, _ = noise_layer_maps(bb, p.question, image.size, grid, cfg, cache)
        if q == short:
            assert keep is None and a.window_lost == () and (a.fusion.lam > 0).all()
            continue
        assert sorted(lost_before_k) == [0, 1] and list(keep) == [False, False, True]
        assert a.window_lost == (0, 1) and list(a.fusion.lam) == [0.0, 0.0, 1.0]
        # what the anchor would be with the sliding layers' part-zero maps in it: another map
        full = anchor_from_maps(layer_maps_from(maps, k, grid), p.question, cfg, noise)
        assert (full.fusion.lam[:2] > 0).all() and not np.allclose(full.anchor, a.anchor)
        # the global layer alone (bias map from the noise images' global layer) is the anchor
        alone = anchor_from_maps(layer_maps_from(maps[:, 2:], k, grid), p.question, cfg, noise[:, 2:])
        np.testing.assert_allclose(a.anchor, alone.anchor, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(a.bias, alone.bias, rtol=1e-6, atol=1e-9)
        # one pass = the paper's two passes (whose probe anchor leaves the same layers out)
        assert_one_pass_equals_two_pass(bb, image, q, cache, n=6, k=k)
    # a batch of both questions: each row's anchor is its single run's
    batch = method.answer_batch(bb, [image, image], [short, long], 6, min_new_tokens=6)
    for row, q in zip(batch, (short, long)):
        assert row.record.anchor.window_lost == anchors[q].window_lost
        np.testing.assert_allclose(row.record.anchor.anchor, anchors[q].anchor, rtol=1e-5, atol=1e-7)


def test_an_anchor_of_sliding_layers_only_keeps_them_all_and_says_so():
    """Every captured layer lost the image (a decoder of sliding layers only, Mistral-style): nothing else
    could feed the anchor, so all of them do, as without ``keep``, and ``window_lost`` names them all. Some
    lost: λ 0 there, and the model-mode H*(q) from the others' prefill maps."""
    import numpy as np

    from adapt.anchor.build import anchor_from_maps

    maps = np.random.default_rng(0).random((3, 4, 4))
    cfg = AdaptConfig()
    none = anchor_from_maps(maps, "describe", cfg, None, keep=np.zeros(3, dtype=bool))
    plain = anchor_from_maps(maps, "describe", cfg, None)
    assert none.window_lost == (0, 1, 2) and plain.window_lost == ()
    np.testing.assert_array_equal(none.fusion.lam, plain.fusion.lam)
    np.testing.assert_array_equal(none.anchor, plain.anchor)
    some = anchor_from_maps(maps, "describe", cfg, None, keep=np.array([True, False, True]))
    assert some.window_lost == (1,) and some.fusion.lam[1] == 0 and some.fusion.lam.sum() == pytest.approx(1)
    # the model-mode H*(q) reads the kept layers' prefill maps alone
    from adapt.anchor import model_target_entropy

    model = cfg.replace(**{"anchor.target_entropy": "model"})
    prefill = np.random.default_rng(1).random((3, 16)) ** 4
    kept = anchor_from_maps(maps, "describe", model, None, prefill, keep=np.array([True, False, True]))
    assert kept.target_entropy == pytest.approx(model_target_entropy(prefill[[0, 2]]))
    assert kept.target_entropy != pytest.approx(model_target_entropy(prefill))
