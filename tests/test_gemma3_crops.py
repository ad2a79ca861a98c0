"""Gemma 3 with pan-and-scan on (issue 21): the image and its crops as views ``base``, ``crop 0`` … on a tiny
random checkpoint whose processor config turns it on (crops of at least 8 px; a hub config's would be 256).
The layout against what the processor emitted, each view's cell boxes against the processor's own frames,
capture against the model's eager attention, every method (batch = single), one pass = two passes, PAI's
text-only rows, and the load option that turns it off or on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adapt.anchor import BiasCache
from adapt.backbones import BackboneError, load_backbone
from adapt.backbones.base import group_by_grid

from methods_check import assert_every_method_batches_like_single
from families import _grey, eager_attentions, gemma3_checkpoint, noise_image

# crops at 8 px or more: wide 90 × 30 → 3 side by side, tall 30 × 70 → 2 stacked, 40 × 30 → 2; 32 × 32 → none
CROPS = {(90, 30): 3, (30, 70): 2, (40, 30): 2, (32, 32): 0}
WINDOW = 256  # the image stays in the sliding layers' window: they are steered too

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return gemma3_checkpoint(tmp_path_factory.mktemp("gemma3") / "crops", pan_and_scan=True, sliding_window=WINDOW)


@pytest.fixture(scope="module")
def bb(folder):
    return load_backbone(folder, dtype=torch.float32)


_image = noise_image


def _frames(bb, image):
    """The image processor's own frames of ``image`` (the image, then its crops) and its crop count."""
    out = bb.processor.image_processor(images=[image], do_pan_and_scan=True, return_tensors="np", **bb.crop_settings)
    return out["pixel_values"], int(out["num_crops"][0])


def test_load_option_turns_the_crops_off_and_on(folder, bb, tmp_path):
    import json
    from pathlib import Path

    assert json.loads((Path(folder) / "preprocessor_config.json").read_text())["do_pan_and_scan"] is True
    assert bb.pan_and_scan and bb.crop_settings["pan_and_scan_min_crop_size"] == 8
    assert len(bb.prepare(_image((90, 30)), "describe").span.views) == 4
    for off in (load_backbone(folder + "?pan_and_scan=off"), load_backbone(folder, pan_and_scan=False)):
        p = off.prepare(_image((90, 30)), "describe")
        assert not off.pan_and_scan and p.span.grid == (4, 4) and p.inputs["pixel_values"].shape[0] == 1
    # a folder that leaves it null (the hub's): off; on, with the stock crop settings (256 px, ratio 1.2)
    plain = gemma3_checkpoint(tmp_path / "plain")
    assert not load_backbone(plain).pan_and_scan
    on = load_backbone(plain + "?pan_and_scan=on")
    assert on.crop_settings == {"pan_and_scan_min_crop_size": 256, "pan_and_scan_max_num_crops": 4,
                                "pan_and_scan_min_ratio_to_activate": 1.2}
    views = on.prepare(_image((900, 300)), "describe").span.views
    assert [v.name for v in views] == ["base", "crop 0", "crop 1", "crop 2"]
    assert on.prepare(_image((600, 200)), "describe").span.views.plain  # 200-px crops: under 256, none
    assert on.prepare(_image((200, 180)), "describe").span.views.plain  # not wide enough to crop
    with pytest.raises(BackboneError, match="not a load option of gemma3"):
        load_backbone(folder + "?image_splitting=on")


def test_layout_is_what_the_processor_emitted(bb):
    """Per row: the image and each crop as one run of mm_tokens_per_image after ``<start_of_image>``, as many
    crops as the image processor made, the runs in the processor's order, under left padding."""
    proc, tok = bb.processor, bb.tokenizer
    boi, eoi = tok.convert_tokens_to_ids(tok.boi_token), tok.convert_tokens_to_ids(tok.eoi_token)
    for size, k in CROPS.items():
        frames, crops = _frames(bb, _grey(size))
        assert crops == k == len(bb.crops(size)) and frames.shape[0] == 1 + k
        p = bb.prepare_batch([_image(size), _image(size, 1)], ["describe", "is there a red circle in the picture ?"])
        ids = p.inputs["input_ids"]
        assert [v.name for v in p.span.views] == ["base"] + [f"crop {i}" for i in range(k)]
        assert all((v.h, v.w) == (4, 4) for v in p.span.views)
        assert p.span.n == (1 + k) * proc.image_seq_length == int((ids[0] == bb.image_token_id).sum())
        stock = proc(images=[[_image(size)]], text=[bb.prompt("describe")], return_tensors="pt",
                     do_pan_and_scan=True, **bb.crop_settings)
        assert int((stock["input_ids"] == bb.image_token_id).sum()) == p.span.n
        torch.testing.assert_close(p.inputs["pixel_values"][0], stock["pixel_values"], rtol=0, atol=0)
        assert p.span.positions[0, 0] != p.span.positions[1, 0]  # left padding
        for b in range(2):
            pos = p.span.positions[b]
            assert torch.equal(pos, (ids[b] == bb.image_token_id).nonzero()[:, 0])
            runs = pos.view(1 + k, -1)
            assert bool((runs[:, -1] - runs[:, 0] + 1 == proc.image_seq_length).all())
            assert ids[b, runs[:, 0] - 1].tolist() == [boi] * (1 + k)
            assert ids[b, runs[:, -1] + 1].tolist() == [eoi] * (1 + k)
        if k:
            assert p.span.contiguous_slice() is None  # text between the blocks: the gather path


def test_images_batch_by_crop_count(bb):
    images = [_image((90, 30)), _image((40, 30)), _image((120, 40)), _image((32, 32)), _image((30, 70))]
    assert group_by_grid(bb, images) == [[0, 2], [1, 4], [3]]
    with pytest.raises(BackboneError, match="same number of Gemma 3 pan-and-scan crops"):
        bb.prepare_batch([images[0], images[1]], ["describe"] * 2)


@pytest.mark.parametrize("size", [(90, 30), (30, 70)])
def test_each_views_cell_boxes_follow_the_processors_frames(bb, size):
    """A small block painted at the centre of a view's cell box changes that view's frame most at that cell
    (each token pools an 8 × 8 pixel block of the 32-px frame, row-major); the crops' boxes tile the image."""
    p = bb.prepare(_image(size), "describe")
    geo = bb.layout_geometry(size, p.span.grid)
    boxes = geo.cell_boxes()
    assert geo.geometries["base"].covers_whole_image() and not geo.geometries["crop 0"].covers_whole_image()
    plain = _frames(bb, _grey(size))[0]
    for k, view in enumerate(p.span.views):
        for r in range(view.h):
            for c in range(view.w):
                x0, y0, x1, y1 = boxes[view.name][r, c]
                assert x1 - x0 > 2 and y1 - y0 > 2
                block = (int(round((x0 + x1) / 2 - 1)), int(round((y0 + y1) / 2 - 1)), 2)
                d = np.abs(_frames(bb, _grey(size, block))[0][k] - plain[k]).sum(0)
                hits = d.reshape(4, 8, 4, 8).sum((1, 3))
                assert np.unravel_index(int(np.argmax(hits)), hits.shape) == (r, c), (view.name, r, c, block)
    cover = np.zeros((size[1], size[0]))
    for view in p.span.views[1:]:
        for x0, y0, x1, y1 in boxes[view.name].reshape(-1, 4):
            cover[int(round(y0)):int(round(y1)), int(round(x0)):int(round(x1))] += 1
    assert np.all(cover == 1)


def test_capture_equals_eager_attention(folder, bb):
    """Two left-padded rows, every layer (sliding and global) and step: the captured image attention over the
    four views equals the stock eager model's ``output_attentions``."""
    p = bb.prepare_batch([_image((90, 30), 1), _image((120, 40), 2)], ["describe the image", "is there a dog ?"])
    steps = 4
    gens = bb.generate_batch(p, max_new_tokens=steps, min_new_tokens=steps)
    assert gens[0].keys["not_steerable_from"] == {}  # the whole image in every window
    atts = eager_attentions(bb, folder, p, [g.token_ids for g in gens])
    for b in range(2):
        pos = p.span.positions[b]
        for t in range(steps):
            expected = torch.stack([att[b, :, p.prompt_len - 1 + t, pos].mean(0) for att in atts])
            torch.testing.assert_close(gens[b].maps[t], expected, atol=1e-6, rtol=1e-5)
    assert float(gens[0].maps[:, :, 16:].sum()) > 1e-3  # the crops take attention too


def test_every_method_runs_batch_equals_single_and_one_pass_equals_two(bb, tmp_path):
    from two_pass import assert_one_pass_equals_two_pass

    images = [_image((90, 30), 4), _image((40, 30), 5), _image((120, 40), 6)]
    questions = ["describe the image", "is there a dog ?", "what colour is the star on the left ?"]
    # OPERA cuts its beams out of the cache by position: refused on sliding layers
    assert_every_method_batches_like_single(bb, images, questions, tmp_path, n=3,
                                            refused={"opera": "OPERA is not supported on gemma3"}, singles=(0, 1))
    one, _, _ = assert_one_pass_equals_two_pass(bb, images[0], questions[0], BiasCache(tmp_path / "tf"), n=6)
    assert one.generation.maps.shape[-1] == 64


def test_text_only_branch_masks_every_crops_block(bb):
    from adapt.methods.pai import text_only_mask

    p = bb.prepare_batch([_image((90, 30))] * 2, ["describe"] * 2)
    ids = p.inputs["input_ids"][1]
    tok = bb.tokenizer
    wrappers = torch.isin(ids, torch.tensor([tok.convert_tokens_to_ids(t) for t in (tok.boi_token, tok.eoi_token)]))
    mask = text_only_mask(bb, p.inputs, 1)
    assert int(wrappers.sum()) == 2 * 4 and int(mask[1][wrappers].sum()) == 0
    assert int(mask[1].sum()) == int(p.inputs["attention_mask"][1].sum()) - p.span.n - 8


def test_a_cropped_trace_saves_reloads_and_reads_each_crop_through_its_box(bb, tmp_path):
    """``analyse`` on the image and three crops: the trace reloads with its views, and a map hot on one cell of
    crop 2 is hottest, at the original size, inside that cell's box (the right third of the image)."""
    from adapt.config import AdaptConfig
    from adapt.pipeline import analyse
    from adapt.trace import Trace

    size = (90, 30)
    cfg = AdaptConfig().replace(**{"anchor.num_noise": 1, "anchor.k": 2, "max_new_tokens": 4})
    trace = analyse(bb, _image(size, 8), "describe the image", cfg, bias_cache=BiasCache(tmp_path / "cache"))
    views = bb.prepare(_image(size), "describe").span.views
    back = Trace.load(trace.save(tmp_path / "t.zip"))
    assert back.layout == views and [v.name for v in views] == ["base", "crop 0", "crop 1", "crop 2"]
    np.testing.assert_array_equal(back.anchor, trace.anchor)
    geo = bb.layout_geometry(size, views)
    crop = views[3]
    flat = np.ones(views.n)
    flat[crop.start + 2 * crop.stride + 1] = 50.0  # row 2, column 1 of crop 2
    pixels = geo.to_image(flat)
    x0, y0, x1, y1 = geo.cell_boxes()["crop 2"][2, 1]
    assert x0 >= 60
    yy, xx = np.unravel_index(int(np.nanargmax(pixels)), pixels.shape)
    assert x0 <= xx + 0.5 <= x1 and y0 <= yy + 0.5 <= y1
