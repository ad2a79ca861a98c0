"""The compile switch of the steered row's math (``adapt.hooks.compile_writes``) against eager mode."""

import shutil

import pytest
import torch

from adapt.config import ASIConfig
from adapt.hooks import AttentionRecorder, ImageSpan, compile_writes
from adapt.steering import ASIPolicy, References

# inductor builds C++ kernels on a CPU: without a compiler torch.compile cannot run here at all
needs_compiler = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                    reason="torch.compile on a CPU needs a C++ compiler (g++ / c++ not found)")


@needs_compiler
@pytest.mark.slow
@pytest.mark.parametrize("operator", ["mass-aware", "logprior-image"])
def test_compiled_steered_row_equals_eager(operator):
    """Rows steered by the two operators the switch compiles (and their write), batch of 2 with GQA 4/2 over
    40 keys (one more each step) of which 12 are the image's: output and kept map agree with eager mode to
    float32 rounding at three decoding steps; the steps after the first reuse its compiled code (no
    rebuild as the keys grow), and the steering did move the row."""
    n, kv, L = 12, 40, 1
    g = torch.Generator().manual_seed(0)
    span = ImageSpan(torch.arange(5, 5 + n)[None].expand(2, n), (3, 4))
    refs = References(torch.linspace(0.05, 1, n)[None].expand(2, n), torch.full((L, 2), 1.0 / n),
                      torch.full((L, 2), 0.9), torch.full((L, 2, n), 0.9 / n))
    cfg = ASIConfig(operator=operator, trigger="always", alpha=2.0)
    rows = [(torch.randn(2, 4, 1, 8, generator=g), torch.randn(2, 2, kv + t, 8, generator=g),
             torch.randn(2, 2, kv + t, 8, generator=g)) for t in range(3)]
    results, graphs = {}, []
    counters = torch._dynamo.utils.counters["stats"]
    graphs.append(counters["unique_graphs"])
    try:
        for on in (False, True):
            compile_writes(on)
            rec = AttentionRecorder(span, L, policy=ASIPolicy(L, [0], cfg, 5, refs=refs))
            results[on] = []
            with torch.inference_mode():
                for t, (q, k, v) in enumerate(rows):
                    results[on].append((rec.last_row(0, 1 + t, q, k, v, None, 8 ** -0.5), rec._maps.layers[0][1 + t]))
                    graphs.append(counters["unique_graphs"])
    finally:
        compile_writes(False)
    assert graphs[3] == graphs[0] and graphs[4] > graphs[3]  # eager made no graph; the first compiled step did
    assert graphs[6] == graphs[4]  # and the next steps, with more keys, made none
    plain = AttentionRecorder(span, L).last_row(0, 1, *rows[0], None, 8 ** -0.5)
    for (o_eager, m_eager), (o_comp, m_comp) in zip(results[False], results[True]):
        torch.testing.assert_close(o_comp, o_eager, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(m_comp, m_eager, rtol=1e-5, atol=1e-7)
    assert (plain - results[False][0][0]).abs().max() > 1e-2  # the steering moved the output
