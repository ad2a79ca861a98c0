"""The grid cell → original pixel map of each backbone, checked against the processor itself: a block
painted in a non-square image must land, after the processor's own resize / crop / pad, in the image
token whose cell box holds it; a block the processor crops away must reach no token."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from adapt.backbones import LlavaBackbone, Qwen2_5_VLBackbone
from adapt.backbones.geometry import InputGeometry
from adapt.testing import tiny_llava, tiny_qwen2_5_vl


@pytest.fixture(scope="module")
def tiny():
    return {"llava": tiny_llava(), "qwen": tiny_qwen2_5_vl()}


def _image(size, block=None):
    """A mid-grey image, with a white square ``block = (x0, y0, side)`` painted on it."""
    a = np.full((size[1], size[0], 3), 128, dtype=np.uint8)
    if block is not None:
        x0, y0, s = block
        a[y0:y0 + s, x0:x0 + s] = 255
    return Image.fromarray(a)


def _llava_token_hits(image_processor, size, block, patch):
    """Per image token of a LLaVA input, how much the block changed its pixels ``[h, w]``."""
    plain = image_processor(images=[_image(size)], return_tensors="np")["pixel_values"][0]
    painted = image_processor(images=[_image(size, block)], return_tensors="np")["pixel_values"][0]
    d = np.abs(painted - plain).sum(0)  # [H, W] of the canvas
    h, w = d.shape[0] // patch, d.shape[1] // patch
    return d[: h * patch, : w * patch].reshape(h, patch, w, patch).sum((1, 3))


def _qwen_token_hits(image_processor, size, block):
    """Per image token of a Qwen2.5-VL input (after the merge), how much the block changed it."""
    out = [image_processor(images=[im], return_tensors="np") for im in (_image(size), _image(size, block))]
    t, gh, gw = (int(x) for x in out[0]["image_grid_thw"][0])
    m = image_processor.merge_size
    # patches come in merge windows: m² consecutive patches make one token, tokens row-major
    d = np.abs(out[1]["pixel_values"] - out[0]["pixel_values"]).sum(1).reshape(-1, m * m).sum(1)
    return d.reshape(gh // m, gw // m)


def _centre_block(box, side):
    x0, y0, x1, y1 = box
    return int(round((x0 + x1) / 2 - side / 2)), int(round((y0 + y1) / 2 - side / 2)), side


def _llava(image_processor, patch=14):
    from transformers import LlavaProcessor

    model, proc = tiny_llava()
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=proc.tokenizer, patch_size=patch,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=proc.chat_template)
    return LlavaBackbone(model, processor, "tiny")


def _check_cells(bb, hits_of, size, grid, cells, side):
    boxes = bb.cell_boxes(size, grid)
    assert boxes.shape == (*grid, 4)
    for r, c in cells:
        block = _centre_block(boxes[r, c], side)
        hits = hits_of(block)
        assert hits.shape == tuple(grid)
        got = np.unravel_index(int(np.argmax(hits)), hits.shape)
        assert got == (r, c), f"block at {block} landed in token {got}, cell box says {(r, c)}"
        # and the map at the original size agrees with the box around the block's centre
        cell_id = bb.grid_to_image(np.arange(grid[0] * grid[1]).reshape(grid), size)
        x0, y0, s = block
        assert cell_id[y0 + s // 2, x0 + s // 2] == r * grid[1] + c


def test_llava_15_centre_crop_on_a_coco_sized_image():
    from transformers import CLIPImageProcessorPil

    # llava-1.5-7b-hf's preprocessor_config: resize the shortest edge to 336, centre-crop 336 × 336
    ip = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    bb = _llava(ip, patch=14)
    size = (500, 375)
    geo = bb.input_geometry(size)
    # 375 → 336, 500 → int(336·500/375) = 448; the crop drops (448 − 336) // 2 = 56 canvas pixels a side
    assert geo.scale == pytest.approx((448 / 500, 336 / 375))
    assert geo.visible_box() == pytest.approx((56 * 500 / 448, 0, 392 * 500 / 448, 375))
    _check_cells(bb, lambda blk: _llava_token_hits(ip, size, blk, 14), size, (24, 24),
                 [(0, 0), (0, 23), (12, 12), (23, 0), (23, 23), (5, 17)], side=10)
    # a block in the strip the crop removes reaches no token, and the map there is the fill value
    assert _llava_token_hits(ip, size, (10, 150, 20), 14).max() == 0
    full = bb.grid_to_image(np.ones((24, 24)), size, fill=-1.0)
    assert (full[:, :62] == -1).all() and (full[:, 62:437] == 1).all() and (full[:, 438:] == -1).all()
    # stretching the grid over the whole image (what enhance did) puts this block in another column
    stretched = InputGeometry.stretch(size).cell_boxes((24, 24))
    assert not np.allclose(stretched[0, 0], bb.cell_boxes(size, (24, 24))[0, 0])


def test_llava_pad_to_square():
    from transformers import LlavaImageProcessorPil

    ip = LlavaImageProcessorPil(do_pad=True, size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    bb = _llava(ip, patch=14)
    size = (300, 500)  # portrait: padded left and right to 500 × 500
    boxes = bb.cell_boxes(size, (24, 24))
    # (500 − 300) // 2 = 100 pixels of padding on the left: 100 · 336/500 = 67.2 canvas px = 4.8 cells
    assert (boxes[:, :4, 2] <= boxes[:, :4, 0]).all(), "padding-only cells must be empty"
    assert boxes[0, 4, 0] == 0 and boxes[0, 4, 2] > 0
    _check_cells(bb, lambda blk: _llava_token_hits(ip, size, blk, 14), size, (24, 24),
                 [(0, 6), (12, 12), (23, 18), (10, 8)], side=12)


def test_tiny_llava_backbone_on_a_wide_image(tiny):
    model, proc = tiny["llava"]
    bb = LlavaBackbone(model, proc, "tiny")
    size = (80, 48)
    grid = bb.prepare(_image(size), "describe").span.grid
    assert grid == (4, 4)
    _check_cells(bb, lambda blk: _llava_token_hits(proc.image_processor, size, blk, 8), size, grid,
                 [(r, c) for r in range(4) for c in range(4)], side=4)
    assert _llava_token_hits(proc.image_processor, size, (2, 20, 6), 8).max() == 0


def test_qwen2_5_vl_smart_resize():
    from transformers import Qwen2VLImageProcessorPil

    ip = Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2,
                                  size={"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 64})
    model, proc = tiny_qwen2_5_vl()
    from adapt.backbones.qwen2_5_vl import ImageOnlyQwen2_5_VLProcessor

    bb = Qwen2_5_VLBackbone(model, ImageOnlyQwen2_5_VLProcessor(image_processor=ip, tokenizer=proc.tokenizer,
                                                                 chat_template=proc.chat_template), "tiny")
    size = (150, 90)  # → 140 × 84 (multiples of 28): 5 × 3 tokens, x and y scaled differently
    geo = bb.input_geometry(size)
    assert geo.canvas_size == (140, 84) and geo.covers_whole_image()
    grid = bb.prepare(_image(size), "describe").span.grid
    assert grid == (3, 5)
    _check_cells(bb, lambda blk: _qwen_token_hits(ip, size, blk), size, grid,
                 [(r, c) for r in range(3) for c in range(5)], side=8)
    boxes = bb.cell_boxes(size, grid)
    assert boxes[0, 1] == pytest.approx((30.0, 0.0, 60.0, 30.0))  # 28 canvas px = 30 original px


def test_qwen_tiny_processor_downscales_to_its_pixel_budget(tiny):
    model, proc = tiny["qwen"]
    bb = Qwen2_5_VLBackbone(model, proc, "tiny")
    size = (200, 70)
    grid = bb.prepare(_image(size), "describe").span.grid
    geo = bb.input_geometry(size)
    assert (geo.canvas_size[1] // 28, geo.canvas_size[0] // 28) == grid
    _check_cells(bb, lambda blk: _qwen_token_hits(proc.image_processor, size, blk), size, grid,
                 [(r, c) for r in range(grid[0]) for c in range(grid[1])], side=8)


def test_embedded_model_square_input_is_the_whole_image():
    from adapt.backbones import load_backbone

    bb = load_backbone("embedded")
    geo = bb.input_geometry((96, 96))
    assert geo.covers_whole_image()
    boxes = bb.cell_boxes((96, 96), (8, 8))
    assert boxes[0, 0] == pytest.approx((0, 0, 12, 12)) and boxes[7, 7] == pytest.approx((84, 84, 96, 96))


# --- the anchor-guided image uses the same map --------------------------------------------------------

def test_enhance_places_the_anchor_inside_llavas_centre_crop():
    from transformers import CLIPImageProcessorPil

    from adapt.config import EnhanceConfig
    from adapt.enhance import enhance

    bb = _llava(CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}))
    size = (500, 375)
    anchor = np.full((24, 24), 0.1)
    anchor[0, 0] = 5.0  # the crop's top-left cell
    grey = _image(size)
    cfg = EnhanceConfig()
    out = np.asarray(enhance(grey, anchor, cfg, geometry=bb.input_geometry(size)), dtype=float)[..., 0]
    box = bb.cell_boxes(size, (24, 24))[0, 0]  # x 62.5 … 78.1, y 0 … 15.6
    cx, cy = int((box[0] + box[2]) / 2), int((box[1] + box[3]) / 2)
    # grey 128 faded toward white by 1 − a: the hot cell stays darkest, where the crop really took it
    r, c = np.unravel_index(int(np.argmin(out)), out.shape)
    assert box[0] - 1 <= c < box[2] and box[1] <= r < box[3] and out.min() < 140 and out[cy, cx] < 150
    assert out[cy, 10] > out[cy, cx] + 40, "the strip left of the crop must not take the hot cell's weight"
    # the strips the crop removed hold one neutral weight: the mean of the seen pixels' weights
    left, right = out[:, :62], out[:, 438:]
    assert np.ptp(left) <= 1 and np.ptp(right) <= 1 and abs(left.mean() - right.mean()) <= 1
    seen = out[:, 63:437]
    assert seen.min() < left.mean() < seen.max()
    # stretched over the whole image (no geometry) the hot cell lands at the image's own corner instead
    stretched = np.asarray(enhance(grey, anchor, cfg), dtype=float)[..., 0]
    r, c = np.unravel_index(int(np.argmin(stretched)), stretched.shape)
    assert c < 21 and r < 16 and stretched[cy, cx] > stretched.min() + 40


def test_enhance_unchanged_when_the_input_is_the_whole_image():
    from adapt.backbones import load_backbone
    from adapt.enhance import enhance

    bb = load_backbone("embedded")
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8))
    anchor = rng.random((8, 8))
    a = np.asarray(enhance(img, anchor))
    b = np.asarray(enhance(img, anchor, geometry=bb.input_geometry(img.size)))
    assert np.array_equal(a, b)
