"""Tiled families (issue 21): InternVL's tiles and thumbnail as views. The layout against what the processor
emitted and the features the model made, each view's cell boxes against the processor's own tiles, the
pixel shuffle's token order, batching by tiling, and loading the hub folder without torchvision. The
parametrised tests of ``tests/test_families.py`` (eager capture, every method, batch = single, one pass =
two passes, VCD, PAI's text-only branch with ``<img>`` / ``</img>``) run InternVL too. Then Idefics3 /
SmolVLM with image splitting on (``Idefics3TiledBackbone``): tiles whose image tokens are not one run, the
same checks here (the registered ``idefics3`` family, splitting off, is tested in test_families.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adapt.backbones import BackboneError, load_backbone
from adapt.backbones.base import group_by_grid

from families import _grey, internvl_checkpoint, noise_image

# tiles of 32 px, at most 6: 84 × 56 → 3 × 2 tiles, 56 × 84 → 2 × 3, 100 × 30 → 3 × 1, 37 × 29 → 3 × 2
SIZES = {(84, 56): (2, 3), (56, 84): (3, 2), (100, 30): (1, 3), (37, 29): (2, 3)}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return internvl_checkpoint(tmp_path_factory.mktemp("fam") / "internvl")


@pytest.fixture(scope="module")
def bb(folder):
    return load_backbone(folder, dtype=torch.float32)


_image = noise_image


def _tiles(bb, image):
    """The processor's own tiles of ``image`` (as its call makes them: crop_to_patches on)."""
    return bb.processor.image_processor(images=[image], crop_to_patches=True, return_tensors="np")


def test_loads_its_hub_folder_without_torchvision(folder, bb):
    from transformers import AutoProcessor, InternVLProcessor

    with pytest.raises(ImportError, match="orchvision"):
        AutoProcessor.from_pretrained(folder)
    assert bb.family == "internvl" and isinstance(bb.processor, InternVLProcessor)
    assert type(bb.processor.image_processor).__name__ == "GotOcr2ImageProcessorPil"
    assert bb.processor.image_seq_length == 16 and bb.text_config._attn_implementation == "adapt"
    # the folder's image processor leaves crop_to_patches off; the processor's call turns it on
    assert bb.processor.image_processor.crop_to_patches is False


def test_layout_is_what_the_processor_emitted_and_the_model_made(bb):
    """Per row: the image-token positions, ``<img>`` before and ``</img>`` after the run, the processor's
    tile count (which it pops) as views ``tile r,c`` row-major plus ``thumbnail``, and the model's features."""
    proc = bb.processor
    for size, (rows, cols) in SIZES.items():
        p = bb.prepare_batch([_image(size), _image(size, 1)], ["describe", "is there a red circle in the picture ?"])
        ids = p.inputs["input_ids"]
        views = p.span.views
        tiles = int(_tiles(bb, _image(size))["num_patches"][0])
        assert tiles == rows * cols + 1 == proc.image_processor.get_number_of_image_patches(
            size[1], size[0], {"crop_to_patches": True})
        assert [v.name for v in views] == [f"tile {r},{c}" for r in range(rows) for c in range(cols)] + ["thumbnail"]
        assert all((v.h, v.w, v.newline) == (4, 4, False) for v in views)
        assert p.span.n == views.n == tiles * proc.image_seq_length == int((ids[0] == bb.image_token_id).sum())
        for b in range(2):
            pos = p.span.positions[b]
            assert torch.equal(pos, (ids[b] == bb.image_token_id).nonzero()[:, 0])
            assert int(pos[-1] - pos[0]) + 1 == p.span.n
            assert (int(ids[b, pos[0] - 1]), int(ids[b, pos[-1] + 1])) == (proc.start_image_token_id,
                                                                           proc.end_image_token_id)
        assert p.span.positions[0, 0] != p.span.positions[1, 0]  # left padding
        # the processor's pixels, one row per image, and as many features as image keys
        pv = p.inputs["pixel_values"]
        stock = proc(images=[_image(size)], text=[bb.prompt("describe")], return_tensors="pt")
        torch.testing.assert_close(pv[0], stock["pixel_values"], rtol=0, atol=0)
        with torch.no_grad():
            feats = bb.model.model.get_image_features(pixel_values=pv[0]).pooler_output
        assert feats.shape[0] * feats.shape[1] == p.span.n
    # one tile alone (a square that small): no thumbnail, the plain one-grid layout
    p = bb.prepare(_image((32, 32)), "describe")
    assert p.span.grid == (4, 4) and p.span.views.plain and p.span.n == 16


def test_images_batch_by_tiling(bb):
    images = [_image((84, 56)), _image((56, 84)), _image((90, 60)), _image((84, 56), 3)]
    assert group_by_grid(bb, images) == [[0, 2, 3], [1]]
    together = bb.prepare_batch([images[0], images[2]], ["describe"] * 2)
    assert together.span.signature == bb.prepare(images[0], "describe").span.signature
    # 3 × 2 and 2 × 3 tiles: the same 112 keys, not the same views
    assert bb.views_for((84, 56)).n == bb.views_for((56, 84)).n
    with pytest.raises(BackboneError, match="same InternVL tiling"):
        bb.prepare_batch([images[0], images[1]], ["describe"] * 2)
    # rows of different tile counts cannot share a pixel tensor either
    with pytest.raises(BackboneError, match="same InternVL tiling"):
        bb.prepare_batch([images[0], _image((100, 30))], ["describe"] * 2)


def test_pixel_shuffle_folds_2x2_patch_blocks_row_major(bb):
    """The model's own pixel shuffle: token (i, j) of a tile holds the patches of block (i, j)."""
    vc = bb.model.config.vision_config
    side = vc.image_size[0] // vc.patch_size[0]
    patch_id = torch.arange(side * side, dtype=torch.float32).view(1, side, side, 1).expand(1, side, side, 4)
    folded = bb.model.model.pixel_shuffle(patch_id.contiguous(), 0.5).reshape(-1, 16)  # [tokens, 4 patches × 4]
    g = side // 2
    for t in range(g * g):
        i, j = divmod(t, g)
        block = {(2 * i + a) * side + 2 * j + b for a in range(2) for b in range(2)}
        assert set(folded[t].long().tolist()) == block


def _hits(bb, size, block):
    """Per view, per token cell, how much a white ``block`` on a grey ``size`` image changed the pixels of
    that view's tile (the processor's tiles in order: row-major, then the thumbnail)."""
    out = [_tiles(bb, _grey(size, b))["pixel_values"] for b in (None, block)]
    d = np.abs(out[1] - out[0]).sum(1)  # [tiles, T, T]
    k = d.shape[-1] // 4  # pixels per token cell along a side (4 × 4 tokens per tile)
    return d.reshape(d.shape[0], 4, k, 4, k).sum((2, 4))


@pytest.mark.parametrize("size", [(84, 56), (100, 30)])
def test_each_views_cell_boxes_follow_the_processors_tiles(bb, size):
    """A small block painted at the centre of a view's cell box changes that view's tile most at that cell:
    every tile's box within the stretched image, and the thumbnail's over the whole image."""
    p = bb.prepare(_image(size), "describe")
    geo = bb.layout_geometry(size, p.span.grid)
    boxes = geo.cell_boxes()
    assert geo.geometries["thumbnail"].covers_whole_image()
    assert not geo.geometries["tile 0,0"].covers_whole_image()
    for k, view in enumerate(p.span.views):
        grid_boxes = boxes[view.name]
        for r in range(view.h):
            for c in range(view.w):
                x0, y0, x1, y1 = grid_boxes[r, c]
                assert x1 - x0 > 2 and y1 - y0 > 2
                s = 2 if view.name != "thumbnail" else 4
                block = (int(round((x0 + x1) / 2 - s / 2)), int(round((y0 + y1) / 2 - s / 2)), s)
                hits = _hits(bb, size, block)[k]
                assert np.unravel_index(int(np.argmax(hits)), hits.shape) == (r, c), (view.name, r, c, block)
    # the tiles' boxes tile the image: every pixel is in exactly one tile's cells
    cover = np.zeros((size[1], size[0]))
    for view in p.span.views[:-1]:
        for x0, y0, x1, y1 in boxes[view.name].reshape(-1, 4):
            cover[int(round(y0)):int(round(y1)), int(round(x0)):int(round(x1))] += 1
    assert np.all(cover == 1)


def test_without_crop_to_patches_one_view(bb):
    """A processor called with crop_to_patches off sends the image stretched to one tile: the layout reads
    the one grid from the token count."""
    from adapt.backbones.internvl import _image_only_processor

    proc = _image_only_processor()(image_processor=bb.processor.image_processor, tokenizer=bb.tokenizer,
                                   image_seq_length=16, chat_template=bb.processor.chat_template)
    proc.images_kwargs = {"crop_to_patches": False}
    flat = type(bb)(bb.model, proc, "flat")
    p = flat.prepare(_image((84, 56)), "describe")
    assert p.span.grid == (4, 4) and p.span.n == 16
    assert flat.generate(p, max_new_tokens=2, min_new_tokens=2).maps.shape == (2, bb.num_layers, 16)


def test_a_tiled_trace_saves_reloads_and_reads_each_tile_through_its_box(bb, tmp_path):
    """``analyse`` on seven views (six tiles, a thumbnail): the trace reloads with its views, and a map hot on
    one cell of tile 1,2 is hottest, at the original size, inside that cell's box."""
    from adapt.anchor import BiasCache
    from adapt.config import AdaptConfig
    from adapt.pipeline import analyse
    from adapt.trace import Trace

    size = (84, 56)
    cfg = AdaptConfig().replace(**{"anchor.num_noise": 2, "anchor.k": 2, "max_new_tokens": 4})
    trace = analyse(bb, _image(size, 8), "describe the image", cfg, bias_cache=BiasCache(tmp_path / "cache"))
    views = bb.prepare(_image(size), "describe").span.views
    back = Trace.load(trace.save(tmp_path / "t.zip"))
    assert back.layout == views and len(views) == 7 and back.anchor.shape == (1, views.n)
    np.testing.assert_array_equal(back.anchor, trace.anchor)
    geo = bb.layout_geometry(size, views)
    tile = views[5]
    assert tile.name == "tile 1,2"
    flat = np.ones(views.n)
    flat[tile.start + 1 * tile.stride + 2] = 50.0  # row 1, column 2 of the tile
    pixels = geo.to_image(flat)
    x0, y0, x1, y1 = geo.cell_boxes()["tile 1,2"][1, 2]
    yy, xx = np.unravel_index(int(np.nanargmax(pixels)), pixels.shape)
    assert x0 <= xx + 0.5 <= x1 and y0 <= yy + 0.5 <= y1


# Idefics3 / SmolVLM with image splitting on --------------------------------------------------------
# tiles of 32 px (max_image_size), the longest edge first resized to 64: 84 × 56 → 2 × 2 tiles, 150 × 50 → 1 × 2

@pytest.fixture(scope="module")
def tiled(tmp_path_factory):
    """The hub-like folder (``do_image_splitting: true``, as SmolVLM's) loaded as a user loads it."""
    from families import idefics3_checkpoint

    folder = idefics3_checkpoint(tmp_path_factory.mktemp("fam") / "idefics3")
    return folder, load_backbone(folder, dtype=torch.float32)


def test_idefics3_loads_with_the_checkpoints_own_splitting_unless_told_otherwise(tiled, tmp_path, capsys):
    """``load_backbone(dir)`` follows the folder's ``do_image_splitting`` (on: the tiles), ``image_splitting=False``
    or ``dir?image_splitting=off`` gives the global view alone; a folder saved with splitting off loads as one
    view and ``?image_splitting=on`` tiles it; a wrong option is one line. The CLI's ``--backbone`` takes the
    same form."""
    import json
    from pathlib import Path

    from adapt.backbones import Idefics3Backbone, Idefics3TiledBackbone
    from adapt.cli import main

    folder, bb = tiled
    assert json.loads((Path(folder) / "preprocessor_config.json").read_text())["do_image_splitting"] is True
    assert type(bb) is Idefics3TiledBackbone and bb.processor.image_processor.do_image_splitting is True
    size = (84, 56)
    assert len(bb.prepare(_image(size), "describe").span.views) == 5  # 2 × 2 tiles and the global view
    for off in (load_backbone(folder, dtype=torch.float32, image_splitting=False),
                load_backbone(folder + "?image_splitting=off", dtype=torch.float32)):
        assert type(off) is Idefics3Backbone and off.processor.image_processor.do_image_splitting is False
        p = off.prepare(_image(size), "describe")
        assert p.span.grid == (4, 4) and p.span.n == off.processor.image_seq_len
    # a keyword wins over the name's option
    assert type(load_backbone(folder + "?image_splitting=off", image_splitting=True)) is Idefics3TiledBackbone
    # a folder saved with splitting off: one view unless asked for the tiles
    bb.processor.save_pretrained(tmp_path / "flat")
    flat = tmp_path / "flat"
    cfg = json.loads((flat / "processor_config.json").read_text())
    cfg["image_processor"]["do_image_splitting"] = False
    (flat / "processor_config.json").write_text(json.dumps(cfg))
    bb.model.save_pretrained(flat)
    assert type(load_backbone(str(flat))) is Idefics3Backbone
    assert type(load_backbone(f"{flat}?image_splitting=on")) is Idefics3TiledBackbone
    for bad, words in ((folder + "?image_splitting=maybe", "name=on or name=off"),
                       (folder + "?pan_and_scan=on", "not a load option of idefics3")):
        with pytest.raises(BackboneError, match=words):
            load_backbone(bad)
    # the CLI: the layout it prints is the one asked for; a wrong option is one line, exit 2
    image = tmp_path / "img.png"
    _image(size).save(image)
    base = ["run", "--image", str(image), "--question", "describe", "--max-new-tokens", "3", "--k", "2",
            "--num-noise", "1", "--cache-dir", str(tmp_path / "cache")]
    printed = {}
    for name in (folder, folder + "?image_splitting=off"):
        assert main(base + ["--backbone", name, "--out", str(tmp_path / f"out{len(printed)}")]) == 0
        printed[name] = capsys.readouterr().out.splitlines()[0]
    assert "views tile 0,0 4x4, tile 0,1 4x4, tile 1,0 4x4, tile 1,1 4x4, global 4x4" in printed[folder]
    assert "grid 4x4" in printed[folder + "?image_splitting=off"]
    assert main(base + ["--backbone", folder + "?image_spliting=off", "--out", str(tmp_path / "bad")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "'image_spliting' is not a load option of idefics3" in err[0], err


def _frames(bb, image):
    """The image processor's own frames (tiles row-major, then the global image) and its rows / cols."""
    out = bb.processor.image_processor(images=[[image]], return_row_col_info=True, return_tensors="np")
    return out["pixel_values"][0], (int(out["rows"][0][0]), int(out["cols"][0][0]))


def test_idefics3_tiles_layout_is_what_the_processor_emitted(tiled):
    """Non-contiguous image tokens: per tile ``<row_i_col_j>`` then n image tokens, the global image last;
    the views are the processor's rows × cols tiles (read from its tokens, equal to the resize's tiling)."""
    _, bb = tiled
    proc = bb.processor
    assert proc.image_processor.do_image_splitting is True
    for size in [(84, 56), (56, 84), (150, 50), (50, 150), (1000, 510)]:
        rows, cols = _frames(bb, _grey(size))[1]
        assert bb.tiling(size) == (rows, cols) and rows * cols > 1
        p = bb.prepare_batch([_image(size), _image(size, 1)], ["describe", "is there a red circle in the picture ?"])
        ids = p.inputs["input_ids"]
        views = p.span.views
        assert [v.name for v in views] == [f"tile {r},{c}" for r in range(rows) for c in range(cols)] + ["global"]
        assert p.span.n == views.n == (rows * cols + 1) * proc.image_seq_len
        assert p.span.n == int((ids[0] == bb.image_token_id).sum())
        assert p.span.contiguous_slice() is None  # gaps between the tiles' runs: the gather path
        for b in range(2):
            pos = p.span.positions[b]
            assert torch.equal(pos, (ids[b] == bb.image_token_id).nonzero()[:, 0])
            starts = pos.view(-1, proc.image_seq_len)[:, 0]
            marks = bb.tokenizer.convert_ids_to_tokens(ids[b, starts - 1].tolist())
            assert marks == [f"<row_{r + 1}_col_{c + 1}>" for r in range(rows) for c in range(cols)] + ["<global-img>"]
            assert int(ids[b, pos[-1] + 1]) == proc.fake_image_token_id
        assert p.span.positions[0, 0] != p.span.positions[1, 0]
    # an image that fits one tile (longest edge resized to the tile's 32 px): the global view alone, one grid
    ip = bb.processor.image_processor
    before = ip.size
    ip.size = {"longest_edge": 32}
    try:
        p = bb.prepare(_image((84, 56)), "describe")
        assert bb.tiling((84, 56)) == (0, 0) and p.span.views.plain and p.span.grid == (4, 4)
        assert p.span.n == proc.image_seq_len and p.span.contiguous_slice() is not None
    finally:
        ip.size = before


def test_idefics3_tiles_cell_boxes_follow_the_processors_frames(tiled):
    _, bb = tiled
    size = (84, 56)
    p = bb.prepare(_image(size), "describe")
    geo = bb.layout_geometry(size, p.span.grid)
    boxes = geo.cell_boxes()
    plain = _frames(bb, _grey(size))[0]
    m = plain.shape[-1]
    assert geo.geometries["global"].covers_whole_image()
    for k, view in enumerate(p.span.views):
        for r in range(view.h):
            for c in range(view.w):
                x0, y0, x1, y1 = boxes[view.name][r, c]
                s = 2
                block = (int(round((x0 + x1) / 2 - s / 2)), int(round((y0 + y1) / 2 - s / 2)), s)
                d = np.abs(_frames(bb, _grey(size, block))[0][k] - plain[k]).sum(0)
                hits = d.reshape(view.h, m // view.h, view.w, m // view.w).sum((1, 3))
                assert np.unravel_index(int(np.argmax(hits)), hits.shape) == (r, c), (view.name, r, c, block)


def test_idefics3_tiles_capture_equals_eager(tiled):
    _, bb = tiled
    folder = tiled[0]
    ref = type(bb).model_class().from_pretrained(
        folder, dtype=torch.float32, attn_implementation={"text_config": "eager", "vision_config": "sdpa"}).eval()
    p = bb.prepare_batch([_image((84, 56), 1), _image((84, 56), 2)], ["describe the image", "what colour is the star ?"])
    steps = 4
    gens = bb.generate_batch(p, max_new_tokens=steps, min_new_tokens=steps)
    new = torch.tensor([g.token_ids for g in gens])
    inputs = dict(p.inputs, input_ids=torch.cat([p.inputs["input_ids"], new], 1),
                  attention_mask=torch.cat([p.inputs["attention_mask"], torch.ones_like(new)], 1))
    with torch.no_grad():
        out = ref(**inputs, output_attentions=True)
    for b in range(2):
        pos = p.span.positions[b]
        for t in range(steps):
            expected = torch.stack([att[b, :, p.prompt_len - 1 + t, pos].mean(0) for att in out.attentions])
            torch.testing.assert_close(gens[b].maps[t], expected, atol=1e-6, rtol=1e-5)


def test_idefics3_tiles_every_method_batch_equals_single_and_one_pass_equals_two(tiled, tmp_path):
    from adapt.anchor import BiasCache
    from adapt.config import AdaptConfig
    from adapt.methods import NAMES, get_methods

    from two_pass import assert_one_pass_equals_two_pass

    _, bb = tiled
    images = [_image((84, 56), 4), _image((150, 50), 5), _image((84, 56), 6)]
    questions = ["describe the image", "is there a dog ?", "what colour is the star on the left ?"]
    cfg = AdaptConfig().replace(**{"anchor.num_noise": 2, "anchor.k": 2})
    n = 3
    for method in get_methods(NAMES, cfg, BiasCache(tmp_path)):
        batch = method.answer_batch(bb, images, questions, n, min_new_tokens=n)
        assert [len(a.token_ids) for a in batch] == [n] * 3, method.name
        for i in (0, 1):
            assert method.answer(bb, images[i], questions[i], n, min_new_tokens=n).token_ids == batch[i].token_ids, \
                (method.name, i)
    assert_one_pass_equals_two_pass(bb, images[0], questions[0], BiasCache(tmp_path / "tf"), n=6)


def test_idefics3_tiles_text_only_branch_masks_every_tile_marker(tiled):
    from adapt.methods.pai import text_only_mask

    _, bb = tiled
    p = bb.prepare_batch([_image((84, 56))] * 2, ["describe"] * 2)
    ids = p.inputs["input_ids"]
    block = torch.isin(ids[1], torch.tensor(bb.image_block_ids()))
    rows, cols = bb.tiling((84, 56))
    # per tile <fake> <row_i_col_j>; the global image <fake> <global-img> … <fake>
    assert int(block.sum()) == p.span.n + 2 * rows * cols + 3
    mask = text_only_mask(bb, p.inputs, 1)
    assert int(mask[1][block].sum()) == 0


def test_options_after_a_models_name(tmp_path):
    """``split_options``: options after the last ``?``, several joined by ``&``, on / off spelt as users do; a
    name that exists as a path is kept whole (a folder may have ``?`` in its name); a hub id without options
    passes untouched."""
    from adapt.backbones import split_options

    assert split_options("org/model") == ("org/model", {})
    assert split_options("org/model?image_splitting=OFF") == ("org/model", {"image_splitting": False})
    assert split_options("d?a=on&b=0&c=yes") == ("d", {"a": True, "b": False, "c": True})
    odd = tmp_path / "smol?v2"
    odd.mkdir()
    assert split_options(str(odd)) == (str(odd), {})
    assert split_options(f"{odd}?image_splitting=off") == (str(odd), {"image_splitting": False})
    for bad in ("d?image_splitting", "d?=on", "d?x=maybe"):
        with pytest.raises(BackboneError, match="must read name=on or name=off"):
            split_options(bad)
