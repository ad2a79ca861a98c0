"""Mllama (Llama 3.2 Vision) on a tiny random checkpoint saved like a hub folder: the image enters through
cross-attention layers, which the key map captures (every key a vision column); the self-attention layers
see one <|image|> token and are reported not captured (docs/families.md, "Key maps")."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adapt.anchor import BiasCache
from adapt.backbones import FAMILIES, load_backbone
from adapt.methods import get_method
from adapt.pipeline import analyse

from methods_check import assert_every_method_batches_like_single
from families import checkpoint, noise_image
from two_pass import assert_one_pass_equals_two_pass

Q = "what is it"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return checkpoint("mllama", tmp_path_factory.mktemp("mllama") / "mllama")


@pytest.fixture(scope="module")
def bb(folder):
    return load_backbone(folder, dtype=torch.float32)


_image = noise_image


def _per_tile(bb):
    vc = bb.model.config.vision_config
    return vc.image_size // vc.patch_size, (vc.image_size // vc.patch_size) ** 2 + 1


def test_key_map_captures_the_cross_attention_layers(bb):
    assert isinstance(bb, FAMILIES["mllama"]) and bb.family == "mllama"
    cross = list(bb.model.config.text_config.cross_attention_layers)
    assert cross == [1, 3] and bb.key_map.captured == (1, 3) and bb.num_layers == 2
    report = bb.key_map.describe()
    assert report["cross"] == [1, 3] and report["not_captured"] == [0, 2]
    g = bb.generate(bb.prepare(_image((30, 12)), Q), max_new_tokens=3, min_new_tokens=3)
    assert g.keys["not_captured"] == [0, 2] and g.keys["cross"] == [1, 3] and g.maps.shape[1] == 2


@pytest.mark.parametrize("size, names", [((30, 12), ["tile 0,0", "tile 0,1"]), ((16, 16), ["tile 0,0"]),
                                         ((12, 30), ["tile 0,0", "tile 1,0"])])
def test_views_are_the_processors_tiles(bb, size, names):
    side, per_tile = _per_tile(bb)
    tiles = len(names)
    p = bb.prepare(_image(size), Q)
    assert int(p.inputs["aspect_ratio_mask"].sum()) == tiles
    assert [(v.name, v.h, v.w, v.newline) for v in p.span.views] == [(name, side, side, False) for name in names]
    # each tile's patch columns, its class token (column 0 of the tile) and the padded tiles left out
    want = [t * per_tile + 1 + j for t in range(tiles) for j in range(side * side)]
    assert p.span.positions[0].tolist() == want
    ids = p.inputs["input_ids"][0]
    assert int(p.span.text_positions[0, 0]) == int((ids == bb.image_token_id).nonzero()[0, 0])


@pytest.mark.parametrize("size, tiles", [((30, 12), 2), ((16, 16), 1)])
def test_capture_equals_the_models_eager_cross_attention(bb, folder, size, tiles):
    _, per_tile = _per_tile(bb)
    p = bb.prepare(_image(size, 3), Q)
    n = 5
    g = bb.generate(p, max_new_tokens=n, min_new_tokens=n, per_head=True)
    ref = type(bb).model_class().from_pretrained(
        folder, dtype=torch.float32, attn_implementation={"text_config": "eager", "vision_config": "sdpa"}).eval()
    new = torch.tensor([g.token_ids])
    cam = p.inputs["cross_attention_mask"]
    inputs = dict(p.inputs, input_ids=torch.cat([p.inputs["input_ids"], new], 1),
                  attention_mask=torch.cat([p.inputs["attention_mask"], torch.ones_like(new)], 1),
                  cross_attention_mask=torch.cat([cam, cam[:, -1:].expand(-1, n, -1, -1)], 1))
    with torch.no_grad():
        att = ref(**inputs, output_attentions=True).attentions
    rows = slice(p.prompt_len - 1, p.prompt_len - 1 + n)
    cols = p.span.positions[0]
    for slot, layer in enumerate(bb.key_map.captured):
        want = att[layer][0][:, rows][..., cols].transpose(0, 1)  # [steps, H, n]
        assert torch.allclose(g.maps[:, slot], want, atol=1e-5), layer
        # the real tiles (class tokens included) hold all the mass, the padded tile none
        real = att[layer][0][:, rows][..., :tiles * per_tile].sum(-1)
        assert torch.allclose(real, torch.ones_like(real), atol=1e-5) and float(want.sum(-1).min()) > 0.1


def test_steering_writes_the_cross_attention(bb):
    p = bb.prepare(_image((30, 12), 1), Q)
    plain = bb.generate(p, max_new_tokens=3, min_new_tokens=3)

    def boost_first(layer, step, attn):
        bias = torch.zeros_like(attn)
        bias[..., 0] = 4.0
        return bias

    steered = bb.generate(p, max_new_tokens=3, min_new_tokens=3, policy=boost_first)
    assert bool((steered.maps[0, :, 0] > plain.maps[0, :, 0] + 0.05).all())


def test_every_method_runs_or_is_refused_in_one_line(bb, tmp_path):
    images = [_image((40, 30), 4), _image((84, 56), 5)]  # both two tiles side by side
    questions = ["describe the image", "what colour is the star on the left ?"]
    refused = {"opera": "OPERA is not supported on mllama", "pai": "PAI's text-only branch is not supported on mllama"}
    assert_every_method_batches_like_single(bb, images, questions, tmp_path, n=4, refused=refused)


@pytest.mark.parametrize("size", [(30, 12), (12, 30), (16, 16), (50, 40)])
def test_tile_cells_map_to_the_processors_pixels(bb, size):
    """A tile cell's box is empty exactly where the processor filled the cell with padding, and the
    non-empty boxes tile the whole image."""
    p = bb.prepare(_image(size, 2), Q)
    side, _ = _per_tile(bb)
    ip = bb.processor.image_processor
    pad = -np.asarray(ip.image_mean) / np.asarray(ip.image_std)  # a padded pixel after normalisation
    pixels = p.inputs["pixel_values"][0, 0].numpy()  # [tiles, 3, tile, tile]
    geo = bb.layout_geometry(size, p.span.grid)  # one tile: a plain grid, its InputGeometry
    geometries = getattr(geo, "geometries", None) or {"tile 0,0": geo}
    covered = np.zeros(size[::-1], dtype=bool)
    for i, view in enumerate(p.span.views):
        boxes = geometries[view.name].cell_boxes((side, side))
        cells = pixels[i].reshape(3, side, pixels.shape[-1] // side, side, pixels.shape[-1] // side)
        padded = np.all(np.abs(cells - pad[:, None, None, None, None]) < 1e-5, axis=(0, 2, 4))  # [side, side]
        empty = (boxes[..., 2] <= boxes[..., 0]) | (boxes[..., 3] <= boxes[..., 1])
        assert (empty == padded).all(), view.name
        for x0, y0, x1, y1 in boxes[~empty]:
            covered[int(np.floor(y0)):int(np.ceil(y1)), int(np.floor(x0)):int(np.ceil(x1))] = True
    assert covered.all()


def test_one_pass_adapt_tf_equals_two_pass_and_steers_the_cross_layers(bb, tmp_path):
    cache = BiasCache(tmp_path)
    image, q = _image((84, 56), 7), "describe the image"
    one, two, cfg = assert_one_pass_equals_two_pass(bb, image, q, cache)
    greedy = get_method("greedy").answer(bb, image, q, 8, min_new_tokens=8)
    n = len(two.token_ids)
    trace = analyse(bb, image, q, cfg, bias_cache=cache)
    assert trace.layer_maps.shape[0] == bb.num_layers == 2  # the anchor fuses the cross layers only
    assert not torch.allclose(one.generation.maps[cfg.anchor.k:n], greedy.generation.maps[cfg.anchor.k:n])
