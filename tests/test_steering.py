"""Hook points, the readings of Eq. 11 (operators), triggers and the per-row policy."""

import numpy as np
import pytest
import torch

from adapt.hooks import HOOK_LOGITS, AttentionPoint, AttentionRecorder, ImageProbs, ImageSpan, LogitBias
from adapt.hooks.writes import correct_output, resolve
from adapt.backbones import LlavaBackbone
from adapt.config import ASIConfig
from adapt.steering import ASIPolicy, References, amc, apply_operator
from adapt.steering.triggers import fire
from adapt.testing import tiny_llava


def _point(B=2, H=3, n=6, mass=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(B, H, n, generator=g) + 0.05
    p = p / p.sum(-1, keepdim=True) * mass
    return AttentionPoint(1, 7, torch.log(p), p)


W = torch.tensor([[0.05, 0.1, 0.2, 0.4, 0.8, 1.0], [1.0, 0.5, 0.25, 0.1, 0.05, 0.02]])
FIRED = torch.tensor([True, False])


def _new_image_mass(cfg, point, m_ref=None, a_ref=None):
    m_ref = torch.full((2,), 0.8) if m_ref is None else m_ref
    a_ref = point.attn if a_ref is None else a_ref
    edit = apply_operator(cfg, point, W, FIRED, m_ref, a_ref)
    if isinstance(edit, LogitBias):  # apply like the recorder: over all keys, the text keys' logits fixed
        p = point.probs
        text = 1 - p.sum(-1, keepdim=True)
        bias = edit.bias if edit.bias.ndim == 3 else edit.bias[:, None, :]
        img = p * torch.exp(bias)
        return (img / (img.sum(-1, keepdim=True) + text)).sum(-1), edit
    return edit.probs.sum(-1), edit


@pytest.mark.parametrize("op,expect", [("logprior", "lower"), ("logprior-image", "kept"), ("mass-aware", "higher"),
                                       ("hhi", "higher"), ("quality", "kept"), ("image-boost", "higher")])
def test_each_operator_moves_the_image_mass_as_designed(op, expect):
    point = _point()
    before = point.probs.sum(-1)
    cfg = ASIConfig(operator=op, alpha=0.5, gamma=0.5, k1=0.4)
    # anchor phase: more mass (0.8), more concentrated (higher HHI) than the drifted map
    a_ref = 0.8 * torch.softmax(4 * W, -1)
    after, edit = _new_image_mass(cfg, point, a_ref=a_ref)
    # row 1 did not fire: unchanged whatever the operator
    torch.testing.assert_close(after[1], before[1])
    if expect == "lower":
        assert (after[0] < before[0] - 1e-4).all()
    elif expect == "kept":
        torch.testing.assert_close(after[0], before[0])
    else:
        assert (after[0] > before[0] + 1e-4).all()
    if op == "mass-aware":  # head-mean mass 0.5 -> 0.5 + γ·(0.8 − 0.5) = 0.65
        assert float(after[0].mean()) == pytest.approx(0.65, rel=1e-5)
    if op in ("logprior-image", "mass-aware"):  # and the direction is the anchor's: AMC rises
        assert float(amc(edit.probs[0].mean(0), W[0])) > float(amc(point.probs[0].mean(0), W[0]))
    if op == "quality":  # below the 40th percentile of w: zeroed
        thr = torch.quantile(W[0], 0.4)
        assert float(edit.probs[0][:, W[0] < thr].abs().max()) == 0.0


def test_mass_aware_gives_nothing_back_without_a_drop():
    point = _point(mass=0.5)
    after, _ = _new_image_mass(ASIConfig(operator="mass-aware", alpha=0.0, gamma=1.0), point,
                               m_ref=torch.full((2,), 0.3))
    torch.testing.assert_close(after, point.probs.sum(-1))


def _row(positions, seed=1, H=4, Hkv=2, kv=9, D=5):
    """A newest row's logits over kv keys, its values, the image block and its unsteered output."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(2, H, kv, generator=g) * 2
    v = torch.randn(2, Hkv, kv, D, generator=g)
    span = ImageSpan(positions=positions, grid=(2, 2))
    p = torch.softmax(z, -1)
    full_v = v.repeat_interleave(H // Hkv, 1)  # [B, H, kv, D]: repeat_kv's layout
    out = (p[:, :, None, :] @ full_v)[:, :, 0]  # [B, H, D]
    return z, p, v, full_v, span, out


@pytest.mark.parametrize("positions", [[[2, 3, 4, 5], [2, 3, 4, 5]], [[1, 3, 4, 6], [0, 2, 5, 7]]])
def test_image_probs_write_keeps_each_row_summing_to_one_and_the_text_proportions(positions):
    """The write rescales the text keys by r and sets the image block, and the output corrected on the
    image block alone (o′ = r·o + (p′ − r·p)·V_I) equals attention with the rescaled full row."""
    positions = torch.tensor(positions)
    z, p, v, full_v, span, out = _row(positions)
    old = span.image_cols(p)
    point = AttentionPoint(1, 0, None, old)
    m = old.sum(-1, keepdim=True)
    for new in (old * (m + 0.5 * (1 - m)) / m, old * 100):  # half of the text mass moves in; too much
        r, img = resolve(ImageProbs(new), point)
        full = p * r
        full[torch.arange(2)[:, None, None], torch.arange(4)[None, :, None], positions[:, None, :]] = img
        torch.testing.assert_close(full.sum(-1), torch.ones(2, 4))  # capped at mass one, never above
        text = torch.ones(2, 9, dtype=torch.bool)
        text[torch.arange(2)[:, None], positions] = False
        ratio = (full / p)[text[:, None].expand(2, 4, 9)].view(2, 4, 5)
        torch.testing.assert_close(ratio, r.expand(2, 4, 5))
        corrected = correct_output(out, v, span, old, r, img).view(2, 4, -1)
        torch.testing.assert_close(corrected, (full[:, :, None, :] @ full_v)[:, :, 0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(resolve(ImageProbs(old * 100), point)[1].sum(-1), torch.ones(2, 4))


@pytest.mark.parametrize("positions", [[[2, 3, 4, 5], [2, 3, 4, 5]], [[1, 3, 4, 6], [0, 2, 5, 7]]])
@pytest.mark.parametrize("scale", [1.0, 60.0, -1e4])
def test_logit_bias_on_the_image_block_equals_a_second_softmax_over_all_keys(positions, scale):
    positions = torch.tensor(positions)
    z, p, v, full_v, span, out = _row(positions, seed=2)
    bias = scale * torch.linspace(-1, 1, 4)[None].expand(2, 4)
    r, img = resolve(LogitBias(bias), AttentionPoint(1, 0, None, span.image_cols(p)))
    zb = z.clone()
    idx = positions[:, None, :].expand(2, 4, 4)
    zb.scatter_add_(-1, idx, bias[:, None, :].expand(2, 4, 4).contiguous())
    want = torch.softmax(zb, -1)
    torch.testing.assert_close(img, want.gather(-1, idx), atol=1e-6, rtol=1e-5)
    corrected = correct_output(out, v, span, span.image_cols(p), r, img).view(2, 4, -1)
    torch.testing.assert_close(corrected, (want[:, :, None, :] @ full_v)[:, :, 0], atol=1e-5, rtol=1e-4)


def test_triggers_on_known_values():
    score = torch.tensor([0.010, 0.030, 0.050])
    mass = torch.tensor([0.20, 0.50, 0.40])
    s_ref, m_ref = torch.full((3,), 0.05), torch.full((3,), 0.5)
    assert fire(ASIConfig(trigger="amc", tau=0.8), score, mass, s_ref, m_ref, 16).tolist() == [True, True, False]
    assert fire(ASIConfig(trigger="amc", tau=0.4, mode="absolute"), score, mass, s_ref, m_ref, 16).tolist() == \
        [True, False, False]  # n·AMC = 0.16, 0.48, 0.8
    assert fire(ASIConfig(trigger="mass", mass_tau=0.9), score, mass, s_ref, m_ref, 16).tolist() == [True, False, True]
    assert fire(ASIConfig(trigger="amc+mass", tau=0.8, mass_tau=0.9), score, mass, s_ref, m_ref, 16).tolist() == \
        [True, False, False]
    assert fire(ASIConfig(trigger="always"), score, mass, s_ref, m_ref, 16).all()


def test_fire_rate_on_a_known_sequence_of_maps():
    """K = 2 anchor steps set M_ref = 0.5; then masses 0.5, 0.3, 0.2, 0.44: the mass trigger (0.9)
    fires on 3 of 4 steps of row 0; row 1 stops after 2 steered steps (its length is 4)."""
    n = 4
    policy = ASIPolicy(1, [0], ASIConfig(trigger="mass", mass_tau=0.9), 2, weights=np.ones(n))
    masses = [0.5, 0.5, 0.5, 0.3, 0.2, 0.44]
    for step, m in enumerate(masses):
        p = torch.full((2, 1, n), m / n)
        policy.intervene(AttentionPoint(0, step, torch.log(p), p))
    fired, monitored = policy.fire_counts([6, 4])
    assert fired.tolist() == [3, 1] and monitored.tolist() == [4, 2]
    assert policy.fired_matrix(0)[:, 0].tolist() == [False, False, False, True, True, True]
    refs = policy.references()
    torch.testing.assert_close(refs.m_ref[0], torch.tensor([0.5, 0.5]))


def test_ref_without_step0_drops_the_prefill_row():
    n = 4
    w = np.array([0.1, 0.2, 0.3, 1.0])
    policy = ASIPolicy(1, [0], ASIConfig(ref_skip_step0=True), 3, weights=w)
    maps = [torch.tensor([[0.9, 0.05, 0.03, 0.02]]), torch.tensor([[0.1, 0.1, 0.1, 0.7]]),
            torch.tensor([[0.2, 0.2, 0.2, 0.4]])]
    for step, a in enumerate(maps):
        policy.intervene(AttentionPoint(0, step, torch.log(a[:, None]), a[:, None]))
    expected = np.mean([amc(m[0].numpy(), w) for m in maps[1:]])
    assert float(policy.references().s_ref[0, 0]) == pytest.approx(expected, rel=1e-5)


def test_hook_points_equal_stock_eager_attention(rand_image):
    """What an intervention reads (logits and probabilities, per head) is eager attention's own."""
    bb = LlavaBackbone(*tiny_llava(layers=3), "tiny")
    ref = LlavaBackbone(*tiny_llava(layers=3, attn="eager"), "tiny-eager")
    p = bb.prepare(rand_image, "describe the image")
    seen = {}

    class Spy:
        def intervene(self, point):
            seen[point.layer] = point.probs.clone()

    rec = AttentionRecorder(p.span, bb.num_layers, policy=Spy(), cache=(HOOK_LOGITS,))
    with rec, torch.no_grad():
        bb.model(**p.inputs)
        out = ref.model(**p.inputs, output_attentions=True)
    pos = p.span.positions[0]
    logits = rec.cached(HOOK_LOGITS)[0]  # [L, B, H, n]
    for layer, att in enumerate(out.attentions):
        torch.testing.assert_close(seen[layer][0], att[0, :, -1, pos], atol=1e-6, rtol=1e-5)
        # softmax of the cached logits over the image keys = eager's probabilities renormalised there
        torch.testing.assert_close(torch.softmax(logits[layer, 0], -1),
                                   att[0, :, -1, pos] / att[0, :, -1, pos].sum(-1, keepdim=True), atol=1e-5,
                                   rtol=1e-4)


def test_image_probs_write_through_a_model_sets_the_mass(rand_image):
    bb = LlavaBackbone(*tiny_llava(layers=3), "tiny")
    p = bb.prepare(rand_image, "describe the image")

    class Halve:
        def intervene(self, point):
            return ImageProbs(point.probs * 0.5) if point.layer == 1 else None

    plain = bb.generate(p, max_new_tokens=1, per_head=True).maps[0]
    steered = bb.generate(p, max_new_tokens=1, per_head=True, policy=Halve()).maps[0]
    torch.testing.assert_close(steered[1], plain[1] * 0.5)
    torch.testing.assert_close(steered[0], plain[0])


@pytest.mark.parametrize("operator", ["mass-aware", "logprior"])
def test_steered_row_in_bfloat16_agrees_with_float32(operator):
    """One steered decoding row (576 image keys of 700, GQA 8/2 heads) in bfloat16 against float32: the
    captured map within 2 % (relative; measured 0.8 %) and the output within 0.01 (absolute; measured
    0.003, mean |o| ≈ 0.07), far below what the steering itself moves (0.24: checked below)."""
    n, kv, L = 576, 700, 1
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 8, 1, 64, generator=g), torch.randn(2, 2, kv, 64, generator=g), torch.randn(2, 2, kv, 64, generator=g)
    span = ImageSpan(torch.arange(100, 100 + n)[None].expand(2, n), (24, 24))
    refs = References(torch.linspace(0.01, 1, n)[None].expand(2, n), torch.full((L, 2), 1.0 / n),
                      torch.full((L, 2), 1.0), torch.full((L, 2, n), 1.0 / n))
    cfg = ASIConfig(operator=operator, trigger="always", alpha=2.0)
    outs, maps = {}, {}
    for dtype in (torch.float32, torch.bfloat16):
        rec = AttentionRecorder(span, L, policy=ASIPolicy(L, [0], cfg, 5, refs=refs))
        outs[dtype] = rec.last_row(0, 1, q.to(dtype), k.to(dtype), v.to(dtype), None, 0.125).float()
        maps[dtype] = rec._maps.layers[0][1]
    plain = AttentionRecorder(span, L).last_row(0, 1, q, k, v, None, 0.125)
    torch.testing.assert_close(maps[torch.bfloat16], maps[torch.float32], rtol=2e-2, atol=1e-5)
    torch.testing.assert_close(outs[torch.bfloat16], outs[torch.float32], rtol=0, atol=1e-2)
    assert (plain - outs[torch.float32]).abs().max() > 0.1  # the steering moved the row more than that
