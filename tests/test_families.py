"""Each model family end to end on a tiny random checkpoint saved like a hub folder (Qwen2-VL,
Qwen2.5-VL, Qwen3-VL and its MoE, PaliGemma, Idefics3 / SmolVLM with image splitting off, LLaVA-NeXT and
LLaVA-OneVision: their views are tested in test_multiview.py): loading with our
requirements alone, capture against the model's own eager attention, the image layout against what the
processor emitted, cell boxes against the processor's resize, every registered method, VCD's noised
pixels and PAI's text-only branch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adapt.anchor import BiasCache
from adapt.backbones import FAMILIES, BackboneError, load_backbone
from adapt.backbones.base import group_by_grid
from adapt.methods import get_method
from adapt.methods.pai import PAI, PAIConfig, text_only_mask
from adapt.methods.vcd import VCD, VCDConfig, image_seed, noise_pixels

from methods_check import assert_every_method_batches_like_single
from families import checkpoint, noise_image, patch_hits, QWEN_FAMILIES, tiny_idefics3, tiny_paligemma, tiny_qwen_vl, token_hits
from two_pass import assert_one_pass_equals_two_pass

QWEN = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe"]
ALL = QWEN + ["paligemma", "idefics3", "llava_next", "llava_onevision", "internvl"]
# families with a key map (sliding-window / linear-attention layers): their capture, methods and one-pass
# ADAPT-TF are tested in test_keymap.py; here what reads like any other family's
KEYMAPPED = ["gemma3", "qwen3_5"]
# tokens around the image run that a text-only branch must mask too
WRAPPERS = {"qwen2_vl": 2, "qwen2_5_vl": 2, "qwen3_vl": 2, "qwen3_vl_moe": 2, "paligemma": 0, "idefics3": 3,
            "llava_next": 0, "llava_onevision": 0, "gemma3": 2, "qwen3_5": 2, "internvl": 2}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {f: checkpoint(f, root / f) for f in ALL + KEYMAPPED}


@pytest.fixture(scope="module")
def backbones(folders):
    # Idefics3 here with image splitting off, the global view alone (tests/test_tiles.py: the tiles, its default)
    return {f: load_backbone(folders[f], dtype=torch.float32, image_splitting=False if f == "idefics3" else None)
            for f in ALL + KEYMAPPED}


_image = noise_image


def _extend(inputs: dict, new: torch.Tensor) -> dict:
    """``inputs`` with ``new`` tokens appended, as generation extends them: attention 1, no image (Qwen's
    ``mm_token_type_ids`` 0), the causal suffix (PaliGemma's ``token_type_ids`` 1)."""
    out = dict(inputs, input_ids=torch.cat([inputs["input_ids"], new], 1),
               attention_mask=torch.cat([inputs["attention_mask"], torch.ones_like(new)], 1))
    if "mm_token_type_ids" in inputs:
        out["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(new)], 1)
    if "token_type_ids" in inputs:
        out["token_type_ids"] = torch.cat([inputs["token_type_ids"], torch.ones_like(new)], 1)
    return out


def _eager(bb, folder):
    """The same checkpoint with the stock eager attention in the decoder."""
    return type(bb).model_class().from_pretrained(
        folder, dtype=torch.float32, attn_implementation={"text_config": "eager", "vision_config": "sdpa"}).eval()


# loading ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", QWEN + ["qwen3_5"])
def test_loads_from_a_hub_like_folder_without_torchvision(family, folders, backbones):
    import transformers
    from transformers import AutoProcessor

    bb = backbones[family]
    assert isinstance(bb, FAMILIES[family]) and bb.family == family
    assert type(bb.model).__name__ == type(bb).model_class().__name__
    # the stock processor needs torchvision for its video processor; the image-only one is what loads
    with pytest.raises(ImportError, match="orchvision"):
        AutoProcessor.from_pretrained(folders[family])
    assert isinstance(bb.processor, type(bb).image_only_processor)
    assert isinstance(bb.processor, getattr(transformers, QWEN_FAMILIES[family].processor_class))
    # the hub's image-processor type (and Qwen2-VL's min / max pixels keys) load as the PIL backend, same budget
    patch = QWEN_FAMILIES[family].patch
    ip = bb.processor.image_processor
    assert type(ip).__name__ == "Qwen2VLImageProcessorPil"
    assert (ip.size.shortest_edge, ip.size.longest_edge) == (6 * (2 * patch) ** 2,) * 2
    assert bb.text_config._attn_implementation == "adapt"
    assert bb.model.config.vision_config._attn_implementation == "sdpa"


def test_unsupported_family_message_lists_the_families(tmp_path):
    import json

    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(BackboneError) as err:
        load_backbone(str(tmp_path / "bert"))
    msg = str(err.value)
    assert "\n" not in msg and "'bert'" in msg
    for name in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "paligemma", "idefics3", "llava", "Qwen2-VL", "Qwen3-VL",
                 "PaliGemma", "SmolVLM", "llava_next", "LLaVA-NeXT", "llava_onevision", "LLaVA-OneVision"):
        assert name in msg


def test_catalog_and_docs_cover_every_registered_family():
    from pathlib import Path

    from adapt.backbones import CATALOG

    assert set(CATALOG) == set(FAMILIES)
    docs = (Path(__file__).resolve().parents[1] / "docs" / "families.md").read_text()
    for model_type, info in CATALOG.items():
        assert info.model_class == FAMILIES[model_type].model_class().__name__
        assert f"| `{model_type}` |" in docs and info.model_class in docs, model_type
        assert all(hub_id in docs for hub_id in info.hub_ids), model_type


def test_sliding_window_layers_are_refused():
    model, proc = tiny_qwen_vl("qwen2_vl")
    cfg = model.config.get_text_config()
    cfg.layer_types = ["full_attention", "sliding_attention"]
    with pytest.raises(BackboneError, match="sliding_attention layers is not supported"):
        FAMILIES["qwen2_vl"](model, proc, "tiny")


# capture ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ALL)
def test_capture_equals_eager_attention_per_layer(family, folders, backbones):
    """Two left-padded rows (different question lengths): every decoding step's captured image attention,
    every layer (DeepStack layers included), equals the stock eager model's ``output_attentions``."""
    bb = backbones[family]
    ref = _eager(bb, folders[family])
    images = [_image((84, 56), 1), _image((84, 56), 2)]
    p = bb.prepare_batch(images, ["describe the image", "what colour is the star on the left of the picture ?"])
    steps = 5
    gens = bb.generate_batch(p, max_new_tokens=steps, min_new_tokens=steps)
    inputs = _extend(p.inputs, torch.tensor([g.token_ids for g in gens]))
    with torch.no_grad():
        out = ref(**inputs, output_attentions=True)
    assert len(out.attentions) == bb.num_layers
    for b in range(2):
        pos = p.span.positions[b]
        for t in range(steps):
            row = p.prompt_len - 1 + t
            expected = torch.stack([att[b, :, row, pos].mean(0) for att in out.attentions])
            torch.testing.assert_close(gens[b].maps[t], expected, atol=1e-6, rtol=1e-5)
    assert float(gens[0].maps.sum(-1).min()) > 1e-3  # real image mass at every (step, layer)


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_vl_moe"])
def test_qwen3_vl_deepstack_reaches_the_image_keys_of_later_layers_only(family, backbones):
    """DeepStack adds vision maps to the image positions after decoder layer 0 (and 1, …): switching them
    off leaves layer 0's attention as it was and changes layer 1's (its image keys)."""
    bb = backbones[family]
    assert bb.deepstack_layers == (1,)
    p = bb.prepare(_image((84, 56), 3), "describe the image")
    with torch.no_grad():
        on = bb.generate(p, max_new_tokens=1).maps[0]
        saved = {k: v.clone() for k, v in bb.model.model.visual.deepstack_merger_list.state_dict().items()}
        try:
            for prm in bb.model.model.visual.deepstack_merger_list.parameters():
                prm.zero_()
            off = bb.generate(p, max_new_tokens=1).maps[0]
        finally:
            bb.model.model.visual.deepstack_merger_list.load_state_dict(saved)
    torch.testing.assert_close(on[0], off[0])
    assert (on[1] - off[1]).abs().max() > 1e-4


# layout ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", QWEN)
def test_layout_is_what_the_processor_emitted(family, backbones):
    bb = backbones[family]
    m = bb.merge_size
    side = QWEN_FAMILIES[family].patch * m
    for size in [(84, 56), (56, 84), (150, 50)]:
        p = bb.prepare_batch([_image(size), _image(size, 1)], ["describe", "is there a red circle in the picture ?"])
        t, gh, gw = (int(x) for x in p.inputs["image_grid_thw"][0])
        assert t == 1 and p.span.grid == (gh // m, gw // m) and p.span.grid[0] != p.span.grid[1]
        ids = p.inputs["input_ids"]
        assert p.span.n == gh * gw // m ** 2 == int((ids[0] == bb.image_token_id).sum())
        for b in range(2):
            pos = p.span.positions[b]
            assert torch.equal(pos, (ids[b] == bb.image_token_id).nonzero()[:, 0])
            assert ids[b, pos[0] - 1] == bb.model.config.vision_start_token_id
            assert ids[b, pos[-1] + 1] == bb.model.config.vision_end_token_id
            assert bool((p.inputs["mm_token_type_ids"][b, pos] == 1).all())
        assert p.span.positions[0, 0] != p.span.positions[1, 0]  # left padding moved row 0's image
        # the grid is the processor's canvas in tokens
        geo = bb.input_geometry(size)
        assert (geo.canvas_size[1] // side, geo.canvas_size[0] // side) == p.span.grid
    # sizes that resize to one canvas share a group (and a batch); others do not
    images = [_image((84, 56)), _image((56, 84)), _image((86, 57))]
    assert group_by_grid(bb, images) == [[0, 2], [1]]
    together = bb.prepare_batch([images[0], images[2]], ["describe"] * 2)  # would raise on two grids
    assert together.span.grid == bb.prepare(images[0], "describe").span.grid


@pytest.mark.parametrize("family", QWEN)
def test_cell_boxes_follow_the_processors_resize(family, backbones):
    """A block painted at each cell box's centre changes that token's pixels most, after the processor's
    own resize, on a hub-like pixel budget where x and y scale differently."""
    from transformers import Qwen2VLImageProcessorPil

    bb0 = backbones[family]
    patch, m = QWEN_FAMILIES[family].patch, bb0.merge_size
    ip = Qwen2VLImageProcessorPil(patch_size=patch, merge_size=m, temporal_patch_size=2,
                                  size={"shortest_edge": (patch * m) ** 2 * 4, "longest_edge": (patch * m) ** 2 * 20})
    proc = type(bb0).image_only_processor(image_processor=ip, tokenizer=bb0.tokenizer,
                                          chat_template=bb0.processor.chat_template)
    bb = type(bb0)(bb0.model, proc, "wide")
    size = (130, 70)
    grid = bb.prepare(_image(size), "describe").span.grid
    geo = bb.input_geometry(size)
    assert geo.covers_whole_image() and geo.scale[0] != pytest.approx(geo.scale[1])
    assert grid == (geo.canvas_size[1] // (patch * m), geo.canvas_size[0] // (patch * m))
    boxes = bb.cell_boxes(size, grid)
    cell_id = bb.grid_to_image(np.arange(grid[0] * grid[1]).reshape(grid), size)
    for r in range(grid[0]):
        for c in range(grid[1]):
            x0, y0, x1, y1 = boxes[r, c]
            block = (int(round((x0 + x1) / 2 - 3)), int(round((y0 + y1) / 2 - 3)), 6)
            hits = token_hits(ip, size, block)
            assert hits.shape == grid
            assert np.unravel_index(int(np.argmax(hits)), grid) == (r, c), (r, c, block)
            assert cell_id[block[1] + 3, block[0] + 3] == r * grid[1] + c


# methods ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ALL)
def test_every_method_runs_and_batches_equal_single_runs(family, backbones, tmp_path):
    """Three images of two sizes (two grid groups, one of two rows with different question lengths):
    every registered method gives exactly max_new_tokens tokens per answer, each equal to its single run."""
    bb = backbones[family]
    images = [_image((84, 56), 4), _image((56, 84), 5), _image((84, 56), 6)]
    questions = ["describe the image", "is there a dog ?", "what colour is the star on the left ?"]
    assert_every_method_batches_like_single(bb, images, questions, tmp_path, n=4)


@pytest.mark.parametrize("family", ALL)
def test_one_pass_adapt_tf_equals_two_pass(family, backbones, tmp_path):
    """The registered one-pass ADAPT-TF (which ``analyse`` runs) against the paper's two decodings: a
    K-token anchor run, then ASI on a second decoding (``tests/two_pass.py``)."""
    bb = backbones[family]
    cache = BiasCache(tmp_path)
    image, q = _image((84, 56), 7), "describe the image"
    one, two, cfg = assert_one_pass_equals_two_pass(bb, image, q, cache)
    greedy = get_method("greedy").answer(bb, image, q, 8, min_new_tokens=8)
    n = len(two.token_ids)
    assert one.info["fired"] > 0
    # the steering did something: the steered maps after the anchor phase are not the greedy run's
    assert not torch.allclose(one.generation.maps[cfg.anchor.k:n], greedy.generation.maps[cfg.anchor.k:n])


@pytest.mark.parametrize("family", ALL + KEYMAPPED)
def test_vcd_noises_only_the_contrast_rows(family, backbones):
    bb = backbones[family]
    images = [_image((84, 56), 8), _image((84, 56), 9)]
    p = bb.prepare_batch(images * 2, ["describe the image"] * 4)
    seeds = [image_seed(im, 0) for im in images]
    pv = p.inputs["pixel_values"]
    noised = noise_pixels(p.inputs, 2, seeds, 500)
    # rows of pixel_values per image: Qwen-VL concatenates t·h·w patch rows, PaliGemma stacks images
    per = int(p.inputs["image_grid_thw"][0].prod()) if "image_grid_thw" in p.inputs else 1
    assert noised.shape == pv.shape and pv.shape[0] == 4 * per
    torch.testing.assert_close(noised[: 2 * per], pv[: 2 * per], rtol=0, atol=0)
    for i in (2, 3):
        chunk = slice(i * per, (i + 1) * per)
        assert (noised[chunk] - pv[chunk]).abs().mean() > 0.1
    again = noise_pixels(p.inputs, 2, seeds, 500)
    torch.testing.assert_close(again, noised, rtol=0, atol=0)
    # α = 0: the contrast is the original image's logits; the noised rows run beside them unchanged
    q = "describe the image"
    plain = get_method("greedy").answer(bb, images[0], q, 6, min_new_tokens=6).token_ids
    assert VCD(VCDConfig(alpha=0.0)).answer(bb, images[0], q, 6, min_new_tokens=6).token_ids == plain


def _pai_by_hand(bb, image, question, gamma, beta, steps):
    """Greedy over c + (γ−1)(c − u): c from the prompt with the image, u from the prompt with its whole
    image block (Qwen-VL: <|vision_start|>, pads, <|vision_end|>) removed and no pixels, both recomputed
    from scratch each step."""
    p = bb.prepare(image, question)
    keep = ~torch.isin(p.inputs["input_ids"][0], torch.tensor(bb.image_block_ids()))
    text_only = {k: p.inputs[k][:, keep] for k in ("input_ids", "attention_mask", "token_type_ids") if k in p.inputs}
    toks: list[int] = []
    with torch.no_grad():
        for _ in range(steps):
            new = torch.tensor([toks], dtype=torch.long).reshape(1, -1)
            c = bb.model(**_extend(p.inputs, new)).logits[0, -1]
            u = bb.model(**_extend(text_only, new)).logits[0, -1]
            c, u = c.log_softmax(-1), u.log_softmax(-1)
            s = c + (gamma - 1) * (c - u)
            if beta > 0:
                s = s.masked_fill(c < c.max() + np.log(beta), -float("inf"))
            s[bb.model.generation_config.eos_token_id] = -float("inf")  # min_new_tokens in the method
            toks.append(int(s.argmax()))
    return toks


# not Gemma 3 (_extend marks new tokens as PaliGemma's suffix, token_type_ids 1, which Gemma 3 reads as image)
# nor Qwen3.5 (its text-only branch is refused: test_keymap.py)
@pytest.mark.parametrize("family", ALL)
def test_pai_text_only_branch_is_the_prompt_without_the_image_block(family, backbones):
    bb = backbones[family]
    image, q = _image((84, 56), 10), "describe the image"
    p = bb.prepare_batch([image, image], [q, q])
    mask = text_only_mask(bb, p.inputs, 1)
    ids = p.inputs["input_ids"]
    assert torch.equal(mask[0], p.inputs["attention_mask"][0])
    block = torch.isin(ids[1], torch.tensor(bb.image_block_ids()))
    assert int(block.sum()) == p.span.n + WRAPPERS[family]  # PaliGemma's image has no wrapper tokens
    assert int(mask[1][block].sum()) == 0  # not only the image tokens
    assert int(mask[1].sum()) == int(p.inputs["attention_mask"][1].sum()) - p.span.n - WRAPPERS[family]
    # the guided answer equals the formula with u from the prompt that never held the image
    steps = 6
    got = PAI(PAIConfig(alpha=0.0, gamma=3.0, beta=0.0)).answer(bb, image, q, steps, min_new_tokens=steps)
    assert got.token_ids == _pai_by_hand(bb, image, q, 3.0, 0.0, steps)
    assert got.token_ids != get_method("greedy").answer(bb, image, q, steps, min_new_tokens=steps).token_ids


# PaliGemma (Gemma 1) ---------------------------------------------------------------------------

def test_paligemma_loads_with_its_stock_processor_and_keeps_pad_id_zero(folders, backbones):
    from transformers import PaliGemmaProcessor

    bb = backbones["paligemma"]
    assert type(bb).__name__ == "PaliGemmaBackbone" and bb.family == "paligemma"
    assert isinstance(bb.processor, PaliGemmaProcessor)  # no video processor: the stock class loads
    assert type(bb.processor.image_processor).__name__ == "SiglipImageProcessorPil"
    # Gemma's pad id is 0, a real id: the generation config gets it, not the eos fallback
    assert bb.tokenizer.pad_token_id == 0 and bb.model.generation_config.pad_token_id == 0
    assert bb.text_config._attn_implementation == "adapt"


def test_paligemma_2_is_refused_with_one_line(tmp_path):
    model, proc = tiny_paligemma(text_model="gemma2")
    with pytest.raises(BackboneError, match="gemma2 decoder .*softcap") as err:
        FAMILIES["paligemma"](model, proc, "tiny")
    assert "\n" not in str(err.value)
    model.save_pretrained(tmp_path / "pg2")
    proc.save_pretrained(tmp_path / "pg2")
    with pytest.raises(BackboneError, match="PaliGemma 2"):
        load_backbone(str(tmp_path / "pg2"))


def test_paligemma_layout_is_what_the_processor_emitted(backbones):
    bb = backbones["paligemma"]
    vc = bb.model.config.vision_config
    side = vc.image_size // vc.patch_size
    p = bb.prepare_batch([_image((84, 56)), _image((56, 84), 1)], ["describe", "is there a red circle in the picture ?"])
    ids = p.inputs["input_ids"]
    assert p.span.grid == (side, side) and p.span.n == bb.processor.image_seq_length == side * side
    for b in range(2):
        pos = p.span.positions[b]
        assert torch.equal(pos, (ids[b] == bb.image_token_id).nonzero()[:, 0])
        assert torch.equal(pos, torch.arange(int(pos[0]), int(pos[0]) + p.span.n))
        assert ids[b, pos[-1] + 1] == bb.tokenizer.bos_token_id  # image, <bos>, the prefix
        assert int(p.inputs["attention_mask"][b, : pos[0]].sum()) == 0  # only left padding before it
        assert int(p.inputs["token_type_ids"][b].sum()) == 0  # the whole prompt is the bidirectional prefix
    assert p.span.positions[0, 0] != p.span.positions[1, 0]
    assert "labels" not in p.inputs


def test_paligemma_cell_boxes_follow_the_stretch_resize(backbones):
    bb = backbones["paligemma"]
    vc = bb.model.config.vision_config
    size = (84, 56)  # stretched to 28 × 28: x by 1/3, y by 1/2
    grid = bb.prepare(_image(size), "describe").span.grid
    geo = bb.input_geometry(size)
    assert geo.covers_whole_image() and geo.scale == pytest.approx((1 / 3, 1 / 2))
    boxes = bb.cell_boxes(size, grid)
    for r in range(grid[0]):
        for c in range(grid[1]):
            x0, y0, x1, y1 = boxes[r, c]
            block = (int(round((x0 + x1) / 2 - 4)), int(round((y0 + y1) / 2 - 3)), 6)
            hits = patch_hits(bb.processor.image_processor, size, block, vc.patch_size)
            assert np.unravel_index(int(np.argmax(hits)), grid) == (r, c), (r, c, block)


# Idefics3 / SmolVLM with image splitting off ---------------------------------------------------

def test_idefics3_loads_its_stock_processor_with_splitting_turned_off(folders, backbones):
    import json
    from pathlib import Path

    from transformers import Idefics3Processor

    bb = backbones["idefics3"]
    assert type(bb).__name__ == "Idefics3Backbone" and isinstance(bb.processor, Idefics3Processor)
    saved = json.loads((Path(folders["idefics3"]) / "preprocessor_config.json").read_text())
    assert saved["do_image_splitting"] is True and bb.processor.image_processor.do_image_splitting is False
    assert bb.text_config._attn_implementation == "adapt"


def test_idefics3_layout_is_one_global_view(backbones):
    bb = backbones["idefics3"]
    proc = bb.processor
    big = (150, 50)  # with splitting on, the stock processor would add tiles: several grids
    model, stock = tiny_idefics3()
    tiled = stock(images=[_image(big)], text=[stock.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe"}]}],
        add_generation_prompt=True)], return_tensors="pt")
    assert int((tiled["input_ids"] == bb.image_token_id).sum()) > proc.image_seq_len
    p = bb.prepare_batch([_image(big), _image((56, 84), 1)], ["describe", "is there a red circle in the picture ?"])
    ids = p.inputs["input_ids"]
    vc = bb.model.config.vision_config
    side = vc.image_size // vc.patch_size // bb.model.config.scale_factor
    assert p.span.grid == (side, side) and p.span.n == proc.image_seq_len
    for b in range(2):
        pos = p.span.positions[b]
        assert torch.equal(pos, (ids[b] == bb.image_token_id).nonzero()[:, 0])
        assert [int(ids[b, pos[0] - 2]), int(ids[b, pos[0] - 1]), int(ids[b, pos[-1] + 1])] == \
            [proc.fake_image_token_id, proc.global_image_token_id, proc.fake_image_token_id]
    assert p.span.positions[0, 0] != p.span.positions[1, 0]


def test_idefics3_cell_boxes_follow_the_stretch_and_the_pixel_shuffle(backbones):
    """Each token is a scale_factor × scale_factor block of patches (the connector's pixel shuffle): a block
    painted at a cell box's centre changes that token's pixels most."""
    bb = backbones["idefics3"]
    vc = bb.model.config.vision_config
    s = bb.model.config.scale_factor
    size = (84, 56)
    grid = bb.prepare(_image(size), "describe").span.grid
    # the model's own pixel shuffle: token (i, j) holds the patches of block (i, j), row-major
    side = vc.image_size // vc.patch_size
    patch_id = torch.arange(side * side, dtype=torch.float32).view(1, -1, 1)
    folded = bb.model.model.connector.pixel_shuffle(patch_id, s)[0]  # [tokens, s²]
    for t in range(grid[0] * grid[1]):
        i, j = divmod(t, grid[1])
        block_ids = {(i * s + a) * side + j * s + b for a in range(s) for b in range(s)}
        assert set(folded[t].long().tolist()) == block_ids
    geo = bb.input_geometry(size)
    assert geo.covers_whole_image() and geo.scale == pytest.approx((32 / 84, 32 / 56))
    boxes = bb.cell_boxes(size, grid)
    for r in range(grid[0]):
        for c in range(grid[1]):
            x0, y0, x1, y1 = boxes[r, c]
            block = (int(round((x0 + x1) / 2 - 3)), int(round((y0 + y1) / 2 - 3)), 6)
            hits = patch_hits(bb.processor.image_processor, size, block, vc.patch_size * s)
            assert np.unravel_index(int(np.argmax(hits)), grid) == (r, c), (r, c, block)
