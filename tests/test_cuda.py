"""The same guarantees on a GPU, in the precisions GPU users run (skipped without CUDA).

CI has no GPU; these run on a lent one with ``python -m pytest -q tests/test_cuda.py``.
"""

import pytest
import torch

from adapt.anchor import BiasCache
from adapt.backbones import LlavaBackbone, Qwen2_5_VLBackbone, load_backbone
from adapt.config import AdaptConfig
from adapt.pipeline import analyse
from adapt.testing import tiny_llava, tiny_qwen2_5_vl
from adapt.trace import Trace

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

FAMILIES = {"llava": (tiny_llava, LlavaBackbone), "qwen": (tiny_qwen2_5_vl, Qwen2_5_VLBackbone)}


def backbone(family, attn="adapt", dtype=torch.float32, **kw):
    build, cls = FAMILIES[family]
    model, proc = build(attn=attn, layers=3, dtype=dtype, device="cuda", **kw)
    return cls(model, proc, family)


@pytest.mark.parametrize("family", ["llava", "qwen"])
def test_cuda_no_policy_matches_stock_sdpa(family, rand_image):
    ours, ref = backbone(family), backbone(family, attn="sdpa")
    p = ours.prepare(rand_image, "describe the image")
    kw = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False, output_logits=True,
              return_dict_in_generate=True)
    from adapt.hooks import AttentionRecorder

    with AttentionRecorder(p.span, ours.num_layers):
        a = ours.model.generate(**p.inputs, **kw)
    b = ref.model.generate(**p.inputs, **kw)
    assert torch.equal(a.sequences, b.sequences)
    for la, lb in zip(a.logits, b.logits):
        torch.testing.assert_close(la, lb, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("family", ["llava", "qwen"])
def test_cuda_captured_maps_equal_eager(family, dtype, rand_image):
    ours, ref = backbone(family, dtype=dtype), backbone(family, attn="eager", dtype=dtype)
    p = ours.prepare(rand_image, "describe the image")
    g = ours.generate(p, max_new_tokens=4, min_new_tokens=4)
    assert g.maps.device.type == "cpu" and g.maps.dtype == torch.float32  # one copy to the host after decoding
    full = torch.cat([p.inputs["input_ids"], torch.tensor([g.token_ids], device="cuda")], 1)
    inputs = dict(p.inputs, input_ids=full, attention_mask=torch.ones_like(full))
    if "mm_token_type_ids" in inputs:
        inputs["mm_token_type_ids"] = torch.cat(
            [p.inputs["mm_token_type_ids"], torch.zeros(1, len(g.token_ids), dtype=torch.long, device="cuda")], 1)
    with torch.no_grad():
        out = ref.model(**inputs, output_attentions=True)
    pos = p.span.positions[0]
    tol = dict(atol=1e-6, rtol=1e-4) if dtype == torch.float32 else dict(atol=2e-3, rtol=2e-2)
    for t in range(4):
        row = p.prompt_len - 1 + t
        expected = torch.stack([att[0, :, row, pos].float().mean(0) for att in out.attentions])
        torch.testing.assert_close(g.maps[t], expected, **tol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_precision_bias_zeroes_its_keys_and_stays_finite(dtype, rand_image):
    bb = backbone("llava", dtype=dtype)
    p = bb.prepare(rand_image, "describe the image")
    n = p.span.n
    bias = torch.zeros(1, n, device="cuda")
    bias[:, : n // 2] = -1e4  # far beyond fp16's range once added to the logits: must stay finite

    def policy(layer, step, attn):
        return bias if layer == 1 else None

    g = bb.generate(p, max_new_tokens=4, min_new_tokens=4, policy=policy)
    assert torch.isfinite(g.maps).all() and len(g.token_ids) == 4
    assert g.maps[:, 1, : n // 2].max() < 1e-6
    assert g.maps[:, 1, n // 2:].sum(-1).min() > 0


@pytest.mark.parametrize("family", ["llava", "qwen"])
def test_cuda_device_map_load_and_full_analysis(family, tmp_path, rand_image):
    build, cls = FAMILIES[family]
    model, proc = build(layers=3)
    model.save_pretrained(tmp_path / "m")
    proc.save_pretrained(tmp_path / "m")
    bb = load_backbone(str(tmp_path / "m"), dtype=torch.bfloat16, device_map="auto")
    assert isinstance(bb, cls) and bb.device.type == "cuda" and bb.model.dtype == torch.bfloat16
    # always on, on every layer: every monitored step fires, through the probability-write path
    cfg = AdaptConfig().replace(max_new_tokens=16, **{"asi.trigger": "always", "asi.layers": "all"})
    cache = BiasCache(tmp_path / "cache")
    trace = analyse(bb, rand_image, "describe the image", cfg, bias_cache=cache)
    assert trace.steered is not None and trace.steered.steered.sum() > 0
    assert trace.anchor.shape == trace.grid and abs(float(trace.anchor.sum()) - 1) < 1e-4
    again = analyse(bb, rand_image, "describe the image", cfg, bias_cache=cache)
    assert again.bias_cache_hit and not trace.bias_cache_hit
    trace.save(tmp_path / "t.zip")
    back = Trace.load(tmp_path / "t.zip")
    assert back.steered.text == trace.steered.text
