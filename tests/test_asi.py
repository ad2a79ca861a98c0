"""AMC against hand computation, and steering only where ASI triggers (Eq. 10–11)."""

import numpy as np
import pytest
import torch

from adapt.steering import ASIPolicy, amc, steering_weights
from adapt.backbones import LlavaBackbone
from adapt.config import ASIConfig
from adapt.testing import tiny_llava


def _paper(**kw):
    """The paper's reading: relative AMC trigger, α·log(w + ε) over all keys (the defaults differ)."""
    return ASIConfig(operator="logprior", trigger="amc", **kw)


def test_amc_by_hand():
    a = np.array([0.5, 0.3, 0.2, 0.0])
    w = np.array([1.0, 0.5, 0.0, 0.0])
    assert amc(a, w) == pytest.approx((0.25 * 1 + 0.09 * 0.5) / 1.0)
    # invariant to the total mass on the image (Σa in the denominator)
    assert amc(a * 0.3, w) == pytest.approx(amc(a, w))
    # torch and numpy agree, batched
    t = torch.tensor(np.stack([a, a[::-1]]), dtype=torch.float32)
    np.testing.assert_allclose(amc(t, torch.tensor(w, dtype=torch.float32)).numpy(),
                               [amc(a, w), amc(a[::-1], w)], rtol=1e-6)


def test_amc_prefers_concentration_on_the_anchor():
    w = steering_weights(np.array([[0.0, 0.1], [0.2, 0.7]]))
    assert w.max() == 1.0 and w[0] == 0.0
    on_anchor = np.array([0.0, 0.0, 0.0, 1.0])
    uniform = np.full(4, 0.25)
    off_anchor = np.array([1.0, 0.0, 0.0, 0.0])
    assert amc(on_anchor, w) > amc(uniform, w) > amc(off_anchor, w) == 0.0


def _policy(cfg, layers, n=4, num_layers=3, k=2, w=(0.1, 0.2, 0.3, 1.0)):
    return ASIPolicy(num_layers, layers, cfg, k, weights=np.array(w))


def test_relative_threshold_is_tau_times_mean_anchor_phase_amc():
    p = _policy(_paper(tau=0.5, alpha=0.5), layers=[0, 1, 2])
    attn = [torch.tensor([[0.1, 0.1, 0.1, 0.7]]), torch.tensor([[0.25, 0.25, 0.25, 0.25]])]
    for step, a in enumerate(attn):  # anchor phase: K = 2 steps, never steered
        for layer in range(3):
            assert p(layer, step, a) is None
    expected = 0.5 * np.mean([amc(a[0].numpy(), p.weights[0]) for a in attn])
    np.testing.assert_allclose(p.thresholds(), expected, rtol=1e-6)
    # after the anchor phase: a drifted map (off the anchor) fires, a faithful one does not
    drifted = torch.tensor([[0.7, 0.1, 0.1, 0.1]])
    bias = p(0, 2, drifted)
    assert bias is not None
    torch.testing.assert_close(bias, 0.5 * torch.log(torch.tensor(p.weights) + 1e-3))
    assert p(1, 2, torch.tensor([[0.0, 0.0, 0.0, 1.0]])) is None
    assert p.fired_matrix()[2].tolist() == [True, False, False]


def test_unmonitored_layers_are_never_steered():
    p = _policy(_paper(tau=0.5, mode="absolute"), layers=[2], k=0)
    drifted = torch.tensor([[0.7, 0.1, 0.1, 0.1]])
    assert p(0, 0, drifted) is None and p(1, 0, drifted) is None and p(2, 0, drifted) is not None


def test_steering_changes_only_the_triggered_layer_in_a_model(rand_image):
    bb = LlavaBackbone(*tiny_llava(layers=3), "tiny")
    p = bb.prepare(rand_image, "describe the image")
    n = p.span.n
    plain = bb.generate(p, max_new_tokens=6, min_new_tokens=6)
    w = np.linspace(0.01, 1.0, n)
    # absolute τ = ∞ fires at every step after the anchor phase, on layer 1 only
    policy = ASIPolicy(3, [1], _paper(tau=float("inf"), mode="absolute", alpha=2.0), 2, weights=w)
    steered = bb.generate(p, max_new_tokens=6, min_new_tokens=6, policy=policy)
    fired = policy.fired_matrix()
    assert fired[:2].sum() == 0 and fired[2:, 1].all() and not fired[:, [0, 2]].any()
    # anchor phase untouched; at the first steered step layer 0 (before the bias) is identical
    torch.testing.assert_close(steered.maps[:2], plain.maps[:2])
    torch.testing.assert_close(steered.maps[2, 0], plain.maps[2, 0])
    assert not torch.allclose(steered.maps[2, 1], plain.maps[2, 1])
    # the bias pulls layer 1's attention toward the anchor: AMC of the used map rises
    wt = torch.tensor(w, dtype=torch.float32)
    assert amc(steered.maps[2, 1], wt) > amc(plain.maps[2, 1], wt)
    # the AMC the policy logged is the pre-steering one, equal to the unsteered run's
    assert policy.amc_matrix()[2, 1] == pytest.approx(float(amc(plain.maps[2, 1], wt)), rel=1e-5)


def test_tau_zero_never_fires_and_equals_plain_decoding(rand_image):
    bb = LlavaBackbone(*tiny_llava(layers=3), "tiny")
    p = bb.prepare(rand_image, "describe the image")
    plain = bb.generate(p, max_new_tokens=8)
    policy = ASIPolicy(3, [0, 1, 2], _paper(tau=0.0), 2, weights=np.ones(p.span.n))
    steered = bb.generate(p, max_new_tokens=8, policy=policy)
    assert steered.token_ids == plain.token_ids and not policy.fired_matrix().any()
    torch.testing.assert_close(steered.maps, plain.maps)
