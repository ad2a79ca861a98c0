"""Several devices (``device_map`` over GPUs): every tensor the hot path uses is made where the layer
that uses it lives. No test here needs a GPU: the second device is ``meta`` (shapes only), which fails
loudly when a tensor of another device meets it."""

import torch

from adapt.config import ASIConfig
from adapt.hooks import AttentionPoint, AttentionRecorder, ImageProbs, ImageSpan, LogitBias
from adapt.hooks.writes import correct_output, resolve
from adapt.steering import ASIPolicy, References

META = torch.device("meta")


def _point(device, B=1, H=4, n=6):
    p = torch.full((B, H, n), 0.1, device=device)
    return AttentionPoint(0, 3, None, p)


def test_a_write_made_on_the_host_moves_to_the_layer():
    """A plain bias callable's tensor and a user's ImageProbs, made on the CPU, are used on the layer's
    device (the layer here lives on ``meta``)."""
    point = _point(META)
    for edit in (LogitBias(torch.zeros(1, 6)), ImageProbs(torch.full((1, 6), 0.05))):
        r, new = resolve(edit, point)
        assert r.device == META and new.device == META
        out = correct_output(torch.zeros(1, 4, 8, device=META), torch.zeros(1, 2, 10, 8, device=META),
                             ImageSpan(torch.arange(2, 8)[None], (2, 3)), point.probs, r, new)
        assert out.device == META


def test_recorder_and_policy_state_live_on_each_layers_device():
    """Layer 0 on the CPU, layer 1 on another device: the recorder's buffers, the policy's per-layer
    constants and its decision logs are made on each layer's own device, from CPU references."""
    n, L = 6, 2
    span = ImageSpan(torch.arange(2, 8)[None], (2, 3))
    refs = References(torch.linspace(0.1, 1, n)[None], torch.full((L, 1), 0.1), torch.full((L, 1), 2.0),
                      torch.full((L, 1, n), 0.1))
    policy = ASIPolicy(L, [0, 1], ASIConfig(), 5, refs=refs)
    rec = AttentionRecorder(span, L, policy=policy)
    for layer, dev in ((0, torch.device("cpu")), (1, META)):
        q, k, v = (torch.randn(1, 4, 1, 8).to(dev), torch.randn(1, 2, 10, 8).to(dev), torch.randn(1, 2, 10, 8).to(dev))
        out = rec.last_row(layer, 1, q, k, v, None, 0.3)
        assert out.device == dev and out.shape == (1, 1, 4, 8)
        assert rec._maps.device(layer) == dev
        assert policy._fired.device(layer) == dev and policy._unsteered.device(layer) == dev
        st = policy._state[layer]
        assert {t.device for t in (st["w"], st["mass_thr"], st["op"].toward, st["op"].gamma_m_ref)} == {dev}


def test_vcd_generators_are_made_on_the_scores_device(monkeypatch):
    """VCD's sampling generators follow the scores (the LM head's device), not the first parameter's."""
    from adapt.methods import vcd

    made = []

    class Recording:
        def __init__(self, device="cpu"):
            made.append(torch.device(device))

        def manual_seed(self, seed):
            return self

    proc = vcd.VCDLogitsProcessor(2, 1.0, 0.1, [3, 4])
    monkeypatch.setattr(vcd.torch, "Generator", Recording)
    proc._generators(META)
    assert made == [META, META]
    monkeypatch.undo()
    real = vcd.VCDLogitsProcessor(2, 1.0, 0.1, [3, 4])
    scores = torch.randn(4, 10)
    real(None, scores)
    assert all(g.device == scores.device for g in real.generators)


def test_opera_reads_the_capture_on_the_lm_heads_device():
    """The last layer's capture (here on the CPU) is handed to the search on the logits' device."""
    from types import SimpleNamespace

    from adapt.methods.opera import ModelDecoder

    dec = ModelDecoder.__new__(ModelDecoder)
    dec.layer, dec.window, dec._fed = 0, 4, None
    dec.capture = SimpleNamespace(full={0: torch.full((1, 2, 5), 0.2)}, all_image_mass={0: torch.full((1, 2), 0.5)})
    dec.cache = SimpleNamespace(get_seq_length=lambda: 3)
    dec.model = lambda **kw: SimpleNamespace(logits=torch.zeros(1, 2, 7, device=META), past_key_values=dec.cache)
    dec.model.config = SimpleNamespace(model_type="llava")
    dec._position = lambda past, rows, device: torch.full((rows, 1), past)
    logits, rows, mass = dec.candidates(torch.tensor([[1], [2]]), 2)
    assert logits.device == rows.device == mass.device == META
    assert rows.shape == (2, 4) and mass.shape == (2,)
