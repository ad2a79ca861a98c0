"""The decoding baselines VCD and OPERA: their defining equations on hand-made numbers, their
reductions to greedy / beam search, and a run on every backbone family."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from adapt.backbones import LlavaBackbone, Qwen2_5_VLBackbone, load_backbone
from adapt.hooks import TextWindowCapture
from adapt.methods import get_method
from adapt.methods.opera import OPERA, OPERAConfig, opera_search, over_trust
from adapt.methods.vcd import VCD, VCDConfig, VCDLogitsProcessor, contrast, noise_pixels, plausible
from adapt.testing import tiny_llava, tiny_qwen2_5_vl


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models' ops are too small to split (the CLI's default for them is one thread too); on a
    shared machine two threads mostly wait for each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
    qs = [DEFAULT_DESCRIBE_PROMPT] * 2
    greedy = get_method("greedy:sdpa").answer_batch(embedded, images, qs, 64)
    vcd0 = VCD(VCDConfig(alpha=0.0)).answer_batch(embedded, images, qs, 64)
    assert [a.token_ids for a in vcd0] == [a.token_ids for a in greedy]
    vcd = get_method("vcd").answer_batch(embedded, images, qs, 64)
    # each description is its own tokens and ends by itself, before the 64-token cap
    assert all(a.text and a.text == embedded.decode(a.token_ids) and len(a.token_ids) < 64 for a in vcd)
    assert [a.token_ids for a in vcd] != [a.token_ids for a in greedy]
    sampled = VCD(VCDConfig(sample=True, seed=1)).answer(embedded, images[0], qs[0], 64)
    again = VCD(VCDConfig(sample=True, seed=1)).answer(embedded, images[0], qs[0], 64)
    assert sampled.token_ids == again.token_ids != vcd[0].token_ids


# OPERA -----------------------------------------------------------------------------------------

def test_text_window_hook_matches_eager_attention(rand_image):
    """The hook's row is the last layer's newest query row over the last `window` keys, as stock eager
    attention gives it (max over heads renormalised, or the head mean), and only the latest is kept."""
    ours = LlavaBackbone(*tiny_llava(layers=2), "ours")
    eager, _ = tiny_llava(layers=2, attn="eager")  # same seed: same weights
    prepared = ours.prepare(rand_image, "describe the image")
    with torch.inference_mode():
        ref = eager(**prepared.inputs, output_attentions=True).attentions[1][:, :, -1, :]  # [1, H, kv]
        for reduce, want in (("max", ref.max(1).values / ref.max(1).values.sum(-1, keepdim=True)),
                             ("mean", ref.mean(1))):
            pos = prepared.span.positions[0]
            with TextWindowCapture(7, (1,), reduce=reduce, image_positions=pos) as cap:
                ours.model(**prepared.inputs)
                assert set(cap.rows) == {1} and cap.rows[1].shape == (1, 7)
                torch.testing.assert_close(cap.rows[1], want[:, -7:], atol=1e-6, rtol=1e-5)
                torch.testing.assert_close(cap.image_mass[1], want[:, pos].sum(-1), atol=1e-6, rtol=1e-5)
            assert cap.rows == {}  # freed with the context


def test_over_trust_column_products():
    cfg = OPERAConfig(scale_factor=50.0, window=3)
    prev = torch.log(torch.tensor([[2.0, 3.0, 0.5]]))  # three generated columns so far, one beam
    rows = torch.tensor([[0.9, 0.02, 0.1, 0.04], [0.9, 0.01, 0.2, 0.5]])  # two candidates, last key = itself
    logprod, first = over_trust(prev, rows, step=3, cfg=cfg, k=2)
    # window 3: the oldest column (2.0) falls out; columns 2, 3 and the candidate's own
    assert first == 1
    want = torch.tensor([[3.0 * 1.0, 0.5 * 5.0, 2.0], [3.0 * 0.5, 0.5 * 10.0, 25.0]])
    torch.testing.assert_close(logprod.exp(), want)


@pytest.mark.parametrize("min_new", [0, 12])
def test_opera_without_penalty_is_transformers_beam_search(min_new, llava):
    images = _images(3, seed=6)
    plain = OPERA(OPERAConfig(penalty_weight=0.0, rollback=False))
    for im in images:
        prepared = llava.prepare(im, "describe the image")
        ref = llava.generate_batch(prepared, 12, capture=False, num_beams=5, min_new_tokens=min_new)[0]
        greedy = llava.generate_batch(prepared, 12, capture=False, min_new_tokens=min_new)[0]
        assert plain.answer(llava, im, "describe the image", 12, min_new_tokens=min_new).token_ids == ref.token_ids
    assert ref.token_ids != greedy.token_ids  # beam search is not greedy here: the comparison can fail


def test_opera_without_penalty_is_beam_search_on_the_embedded_model(embedded):
    """Real descriptions that end with the end-of-sequence token: finished hypotheses, length penalty
    and the stopping rule as transformers'."""
    from adapt.world import DEFAULT_DESCRIBE_PROMPT, make_split

    image = make_split("validation", 1, seed=3)[0].image()
    prepared = embedded.prepare(image, DEFAULT_DESCRIBE_PROMPT)
    ref = embedded.generate_batch(prepared, 128, capture=False, num_beams=5)[0]
    plain = OPERA(OPERAConfig(penalty_weight=0.0, rollback=False)).answer(embedded, image, DEFAULT_DESCRIBE_PROMPT, 128)
    assert plain.token_ids == ref.token_ids and len(ref.token_ids) < 128
    full = get_method("opera").answer(embedded, image, DEFAULT_DESCRIBE_PROMPT, 128)
    assert full.text and full.text == embedded.decode(full.token_ids) and len(full.token_ids) < 128
    assert full.token_ids != plain.token_ids  # the penalty and rollback do act on this description
    short = get_method("opera").answer_batch(embedded, [image] * 2, ["is there a star ?", DEFAULT_DESCRIBE_PROMPT], 8)
    assert [len(a.token_ids) for a in short][1] == 8 and short[0].text


class ScriptedDecoder:
    """A decoder with fixed logits whose attention rows give response token 12 σ·ω = 25 from every
    later query (0.5 at σ = 50) and every other generated column 0.5 (0.01): the over-trust pattern."""

    def __init__(self, vocab=40, column=12):
        self.logits = torch.linspace(3.0, -3.0, vocab)[None]
        self.column = column
        self.length = 0

    def prefill(self):
        self.length = 0
        return self.logits.clone()

    def candidates(self, tokens, repeat):
        s, rows_n = self.length, tokens.shape[0]
        row = torch.full((rows_n, s + 1), 0.01)
        if s >= self.column:
            row[:, self.column] = 0.5
        self.length += 1
        return self.logits.expand(rows_n, -1).clone(), row, torch.zeros(rows_n)

    def select(self, rows):
        pass

    def refeed(self, sequences):
        self.length = sequences.shape[1]
        return self.logits.expand(sequences.shape[0], -1).clone()


@pytest.mark.parametrize("threshold", [15, 10])
def test_constructed_over_trust_column_triggers_the_rollback(threshold):
    """The maximum sits on column 12 from step 12 on, so its count reaches r at step 12 + r − 1; decoding
    rolls back to the token after it (13) until that position has had its N_can = 5 rollbacks, then to
    12 itself, five times, then goes on."""
    cfg = OPERAConfig(threshold=threshold)
    n = 12 + threshold + 2
    tokens, info = opera_search(ScriptedDecoder(), cfg, eos=[39], max_new_tokens=n, min_new_tokens=n)
    at = 12 + threshold - 1
    assert info["rollbacks"] == [[at, 13]] * 5 + [[at, 12]] * 5
    plain, plain_info = opera_search(ScriptedDecoder(), OPERAConfig(threshold=threshold, rollback=False), eos=[39],
                                     max_new_tokens=n, min_new_tokens=n)
    assert plain_info["rollbacks"] == [] and len(tokens) == len(plain) == n
    assert tokens != plain  # the rejected continuations changed the answer
    # no pattern, no rollback: every column at 0.01 (a factor 0.5) never stays the maximum
    flat = ScriptedDecoder(column=10 ** 6)
    assert opera_search(flat, cfg, eos=[39], max_new_tokens=n, min_new_tokens=n)[1]["rollbacks"] == []


@pytest.mark.parametrize("family", ["llava", "qwen"])
def test_every_baseline_runs_on_tiny_backbones(family, llava, qwen):
    bb = llava if family == "llava" else qwen
    images = _images(1, size=(56, 28)) + _images(1, size=(28, 56)) if family == "qwen" else _images(2)
    qs = ["describe the image", "is there a dog ?"]
    for name in ("vcd", "opera"):
        out = get_method(name).answer_batch(bb, images, qs, 6, min_new_tokens=6)
        assert [len(a.token_ids) for a in out] == [6, 6], name
        assert all(a.text == bb.decode(a.token_ids) for a in out), name  # each row's text is its own tokens
        single = get_method(name).answer(bb, images[1], qs[1], 6, min_new_tokens=6)
        assert single.token_ids == out[1].token_ids, name


def test_opera_capture_is_one_layer_and_the_window_only(llava):
    """What the hook keeps per step: one layer, beams × candidates rows, at most `window` keys; gone after."""
    from adapt.methods.opera import ModelDecoder

    cfg = OPERAConfig(window=4, threshold=3, image_steps=2)
    prepared = llava.prepare(_images(1, seed=8)[0], "describe the image")
    seen = []

    class Watching(ModelDecoder):
        def candidates(self, tokens, repeat):
            out = super().candidates(tokens, repeat)
            seen.append((set(self.capture.rows), tuple(out[1].shape)))
            return out

    with torch.inference_mode(), Watching(llava, prepared, cfg) as dec:
        tokens, info = opera_search(dec, cfg, eos=[2], max_new_tokens=12, min_new_tokens=12)
    assert len(tokens) == 12 and len(seen) == info["forwards"] - 1 - len(info["rollbacks"])
    assert all(layers == {llava.num_layers - 1} and shape == (25, 4) for layers, shape in seen)
    assert dec.capture.rows == {} and dec.cache is None


@pytest.mark.parametrize("family", ["llava", "qwen"])
def test_opera_candidates_as_queries_equal_one_forward_each(family, llava, qwen):
    """k candidates fed as k query tokens per beam under a 4-D mask give each candidate the logits, window
    row and image mass of feeding it alone; keeping some as the beams leaves the cache of feeding them
    alone; a rollback to the first token (image_steps = 0) returns the prompt's own logits."""
    from adapt.methods.opera import ModelDecoder

    bb = llava if family == "llava" else qwen
    cfg = OPERAConfig(num_beams=2, num_candidates=3, window=3)
    prepared = bb.prepare(_images(1, seed=4)[0], "describe the image")
    with torch.inference_mode(), ModelDecoder(bb, prepared, cfg) as dec:
        first = dec.prefill()
        tokens = first.topk(6, -1).indices.reshape(-1, 1)  # [6, 1]: one cached row, six candidates
        logits, rows, mass = dec.candidates(tokens, 6)
        dec.select(torch.tensor([4, 1]))
        nxt = torch.tensor([[7], [9]])
        after = dec.model(input_ids=nxt, past_key_values=dec.cache, use_cache=True).logits[:, -1]
        again = dec.refeed(torch.zeros(2, 0, dtype=torch.long))
        assert dec.cache.get_seq_length() == prepared.prompt_len
        torch.testing.assert_close(again, first.expand(2, -1))
    with torch.inference_mode():
        for i, t in enumerate(tokens[:, 0].tolist()):
            with TextWindowCapture(3, (dec.layer,), reduce=cfg.head_reduce,
                                   image_positions=prepared.span.positions[0]) as cap:
                out = bb.model(**prepared.inputs, use_cache=True)
                one = bb.model(input_ids=torch.tensor([[t]]), past_key_values=out.past_key_values, use_cache=True)
                torch.testing.assert_close(logits[i], one.logits[0, -1].float(), atol=1e-5, rtol=1e-4)
                torch.testing.assert_close(rows[i], cap.rows[dec.layer][0], atol=1e-6, rtol=1e-5)
                torch.testing.assert_close(mass[i], cap.image_mass[dec.layer][0], atol=1e-6, rtol=1e-5)
                if i in (4, 1):
                    b = [4, 1].index(i)
                    more = bb.model(input_ids=nxt[b:b + 1], past_key_values=one.past_key_values, use_cache=True)
                    torch.testing.assert_close(after[b], more.logits[0, -1], atol=1e-5, rtol=1e-4)
