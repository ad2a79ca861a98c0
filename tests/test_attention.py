"""Capture and steering through the registered attention function, on tiny random backbones."""

import json

import pytest
import torch

from adapt.hooks import AttentionRecorder, ImageSpan
from adapt.backbones import BackboneError, LlavaBackbone, Qwen2_5_VLBackbone, load_backbone
from adapt.testing import tiny_llava, tiny_qwen2_5_vl

FAMILIES = {"llava": (tiny_llava, LlavaBackbone), "qwen": (tiny_qwen2_5_vl, Qwen2_5_VLBackbone)}


def backbone(family, attn="adapt", **kw):
    build, cls = FAMILIES[family]
    model, proc = build(attn=attn, layers=3, **kw)
    return cls(model, proc, family)


@pytest.mark.parametrize("family", ["llava", "qwen"])
@pytest.mark.parametrize("stock", ["eager", "sdpa"])
def test_no_policy_matches_stock_attention(family, stock, rand_image):
    ours, ref = backbone(family), backbone(family, attn=stock)
    p = ours.prepare(rand_image, "describe the image")
    kw = dict(max_new_tokens=12, do_sample=False, output_logits=True, return_dict_in_generate=True,
              min_new_tokens=12)
    with AttentionRecorder(p.span, ours.num_layers):
        a = ours.model.generate(**p.inputs, **kw)
    b = ref.model.generate(**p.inputs, **kw)
    assert torch.equal(a.sequences, b.sequences)
    for la, lb in zip(a.logits, b.logits):
        torch.testing.assert_close(la, lb, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["llava", "qwen"])
def test_captured_maps_equal_eager_output_attentions(family, rand_image):
    ours, ref = backbone(family), backbone(family, attn="eager")
    p = ours.prepare(rand_image, "describe the image")
    g = ours.generate(p, max_new_tokens=6, min_new_tokens=6)
    assert g.maps.shape == (6, ours.num_layers, p.span.n)
    full = torch.cat([p.inputs["input_ids"], torch.tensor([g.token_ids])], 1)
    inputs = dict(p.inputs, input_ids=full, attention_mask=torch.ones_like(full))
    if "mm_token_type_ids" in inputs:
        inputs["mm_token_type_ids"] = torch.cat(
            [p.inputs["mm_token_type_ids"], torch.zeros(1, len(g.token_ids), dtype=torch.long)], 1)
    with torch.no_grad():
        out = ref.model(**inputs, output_attentions=True)
    pos = p.span.positions[0]
    for t in range(6):
        row = p.prompt_len - 1 + t
        expected = torch.stack([att[0, :, row, pos].mean(0) for att in out.attentions])
        torch.testing.assert_close(g.maps[t], expected, atol=1e-6, rtol=1e-5)


def test_llava_image_tokens_are_one_contiguous_run_of_grid(rand_image):
    bb = backbone("llava")
    p = bb.prepare(rand_image, "what is in the image ?")
    ids = p.inputs["input_ids"][0]
    pos = p.span.positions[0]
    assert p.span.grid == (4, 4)
    assert torch.equal(pos, torch.arange(int(pos[0]), int(pos[0]) + 16))
    assert bool((ids[pos] == bb.image_token_id).all()) and int((ids == bb.image_token_id).sum()) == 16


def test_qwen_grid_comes_from_image_grid_thw(rand_image):
    bb = backbone("qwen")
    wide = rand_image.resize((150, 50))
    p = bb.prepare(wide, "what is in the image ?")
    t, gh, gw = p.inputs["image_grid_thw"][0].tolist()
    m = bb.model.config.vision_config.spatial_merge_size
    assert p.span.grid == (gh // m, gw // m) and p.span.grid[0] != p.span.grid[1]
    ids = p.inputs["input_ids"][0]
    pos = p.span.positions[0]
    assert torch.equal(pos, (ids == bb.image_token_id).nonzero()[:, 0])
    start = int(pos[0])
    assert ids[start - 1] == bb.model.config.vision_start_token_id
    assert ids[int(pos[-1]) + 1] == bb.model.config.vision_end_token_id


class HalfMask:
    """Large negative bias on the first half of the image keys, at one layer, at step 0."""

    def __init__(self, layer, n, value=-1e4):
        self.layer, self.bias = layer, torch.zeros(1, n)
        self.bias[:, : n // 2] = value

    def __call__(self, layer, step, attn):
        return self.bias if (layer == self.layer and step == 0) else None


@pytest.mark.parametrize("family", ["llava", "qwen"])
def test_negative_bias_zeroes_half_of_image_at_one_layer_only(family, rand_image):
    bb = backbone(family)
    p = bb.prepare(rand_image, "describe the image")
    n = p.span.n
    plain = bb.generate(p, max_new_tokens=1)
    steered = bb.generate(p, max_new_tokens=1, policy=HalfMask(1, n))
    a, s = plain.maps[0], steered.maps[0]
    assert s[1, : n // 2].max() < 1e-6
    # the rest renormalises: each head's kept keys scale by 1/(1 - removed mass); on the head
    # mean the kept image mass can only grow
    assert s[1, n // 2:].sum() > a[1, n // 2:].sum()
    torch.testing.assert_close(s[0], a[0])  # the layer before is untouched
    assert not torch.allclose(s[2], a[2])  # later layers see the changed hidden state
    torch.testing.assert_close(s[2, : n // 2].sum() > 0, torch.tensor(True))


def test_renormalisation_per_head_is_exact(rand_image):
    bb = backbone("llava")
    p = bb.prepare(rand_image, "describe the image")
    n = p.span.n
    plain = bb.generate(p, max_new_tokens=1, per_head=True).maps[0, 1]  # [H, n]
    steered = bb.generate(p, max_new_tokens=1, per_head=True, policy=HalfMask(1, n)).maps[0, 1]
    removed = plain[:, : n // 2].sum(-1, keepdim=True)
    torch.testing.assert_close(steered[:, n // 2:], plain[:, n // 2:] / (1 - removed), atol=1e-6, rtol=1e-4)


# measured: largest map entry 0.044; |half − fp32| at most 1.5e-6 (float16) and 1.3e-5 (bfloat16)
@pytest.mark.parametrize("dtype, atol", [(torch.float16, 1e-5), (torch.bfloat16, 1e-4)])
def test_half_precision_steering_agrees_with_float32(dtype, atol, rand_image):
    """The same weights in half precision, steered by the same bias, give float32's steered maps within
    ``atol`` (the correction runs in float32 either way) and its tokens; a bias of −30 stays finite."""
    full = LlavaBackbone(*tiny_llava(layers=3), "fp32")
    half = LlavaBackbone(*tiny_llava(layers=3, dtype=dtype), "half")
    bias = lambda layer, step, a: torch.full_like(a, -1.0) if layer >= 1 else None  # noqa: E731
    p32, ph = full.prepare(rand_image, "describe the image"), half.prepare(rand_image, "describe the image")
    ref = full.generate(p32, max_new_tokens=3, min_new_tokens=3, policy=bias)
    plain = full.generate(p32, max_new_tokens=3, min_new_tokens=3).maps
    assert (ref.maps[:, 1:].sum(-1) < plain[:, 1:].sum(-1) - 0.1).all()  # the bias moved the image mass
    g = half.generate(ph, max_new_tokens=3, min_new_tokens=3, policy=bias)
    assert g.token_ids == ref.token_ids
    torch.testing.assert_close(g.maps.float(), ref.maps, atol=atol, rtol=0)
    g = half.generate(ph, max_new_tokens=4, min_new_tokens=4, policy=lambda l, s, a: torch.full_like(a, -30.0))
    assert torch.isfinite(g.maps).all() and len(g.token_ids) == 4


def test_left_padded_batch_rows_capture_their_own_image(rand_image):
    """Two prompts of different length, left-padded: each row matches its own eager attention."""
    ours, ref = backbone("llava"), backbone("llava", attn="eager")
    tok = ours.processor.tokenizer
    tok.padding_side = "left"
    prompts = [ours.prompt("describe"), ours.prompt("what colour is the star on the left ?")]
    inputs = ours.processor(images=[rand_image, rand_image], text=prompts, return_tensors="pt", padding=True)
    pos = ours.image_positions(inputs["input_ids"])
    assert pos[0, 0] != pos[1, 0]
    span = ImageSpan(positions=pos, grid=(4, 4))
    rec = AttentionRecorder(span, ours.num_layers)
    with rec, torch.no_grad():
        ours.model(**inputs)
        out = ref.model(**inputs, output_attentions=True)
    maps = rec.maps()[0]  # [L, B, n]
    for b in range(2):
        expected = torch.stack([att[b, :, -1, pos[b]].mean(0) for att in out.attentions])
        torch.testing.assert_close(maps[:, b], expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("family", ["llava", "qwen"])
def test_load_backbone_from_local_directory(family, tmp_path, rand_image):
    build, cls = FAMILIES[family]
    model, proc = build(layers=2)
    model.save_pretrained(tmp_path / "m")
    proc.save_pretrained(tmp_path / "m")
    bb = load_backbone(str(tmp_path / "m"), dtype=torch.float32)
    assert isinstance(bb, cls) and bb.model.config.get_text_config()._attn_implementation == "adapt"
    assert bb.model.config.vision_config._attn_implementation == "sdpa"
    p = bb.prepare(rand_image, "describe the image")
    g = bb.generate(p, max_new_tokens=3)
    assert g.maps is not None and g.maps.shape[1:] == (2, p.span.n)


def test_load_backbone_errors_are_clear(tmp_path):
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(BackboneError, match="supported: .*llava, .*qwen2_5_vl"):
        load_backbone(str(tmp_path / "bert"))
    with pytest.raises(BackboneError, match="without a config.json"):
        load_backbone(str(tmp_path))
    with pytest.raises(BackboneError, match="cannot find a model"):
        load_backbone(str(tmp_path / "nope" / "missing"))


def test_prefill_capture_is_question_rows_attention_to_the_image(rand_image):
    ours, ref = backbone("llava"), backbone("llava", attn="eager")
    p = ours.prepare(rand_image, "what colour is the star on the left ?")
    g = ours.generate(p, max_new_tokens=1, capture_prefill=True)
    with torch.no_grad():
        out = ref.model(**p.inputs, output_attentions=True)
    pos = p.span.positions[0]
    end = int(pos[-1]) + 1
    expected = torch.stack([att[0, :, end:, :][..., pos].mean(dim=(0, 1)) for att in out.attentions])
    torch.testing.assert_close(g.prefill_maps, expected, atol=1e-6, rtol=1e-5)


def test_recorder_records_past_the_steps_it_was_told(rand_image):
    """A recorder told of one step still records every step of a longer decoding, each at its own step."""
    bb = backbone("llava")
    p = bb.prepare(rand_image, "describe the image")
    kw = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False)
    maps = []
    for steps in (1, 64):
        rec = AttentionRecorder(p.span, bb.num_layers, max_steps=steps)
        with rec, torch.inference_mode():
            bb.model.generate(**p.inputs, **kw)
        maps.append(rec.maps())
    assert maps[0].shape == (5, bb.num_layers, 1, p.span.n)
    torch.testing.assert_close(maps[0], maps[1], rtol=0, atol=0)
