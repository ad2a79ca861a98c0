"""Image layouts with several views (issue 21), first family LLaVA-NeXT: the layout against what the
processor emitted and what the model packed, each view's cell boxes against the processor's tiles, the
per-view anchor (newline columns weight 0), the bias-map keys, batching by layout, and a two-view trace
that saves, reloads through the hardened loader and draws. The parametrised tests of
``tests/test_families.py`` (eager capture, every method, batch = single, one pass = two passes, VCD, PAI)
run LLaVA-NeXT too."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch

from adapt.anchor import BiasCache, debias, fuse
from adapt.backbones import load_backbone
from adapt.backbones.base import group_by_grid
from adapt.config import AdaptConfig, AnchorConfig
from adapt.hooks import ImageLayout, View, Views
from adapt.pipeline import analyse
from adapt.steering import steering_weights
from adapt.trace import Trace

from families import _grey, llava_next_checkpoint, llava_onevision_checkpoint, noise_image

# non-square sizes: 2×2 tiles cut to 4×8 (wide), 2×2 cut to 8×4 (tall), 1×3 tiles cut to 4×10, 2×2 cut to 6×8
SIZES = [(40, 24), (24, 40), (50, 20), (37, 29)]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("fam")
    return {"llava_next": llava_next_checkpoint(root / "llava_next"),
            "llava_onevision": llava_onevision_checkpoint(root / "llava_onevision")}


@pytest.fixture(scope="module")
def bbs(folders):
    return {f: load_backbone(path, dtype=torch.float32) for f, path in folders.items()}


@pytest.fixture(scope="module")
def bb(bbs):
    return bbs["llava_next"]


_image = noise_image


# layout ----------------------------------------------------------------------------------------

def test_views_fold_the_flat_columns():
    views = Views.from_shapes([("base", 2, 2, False), ("hires", 2, 3, True)])
    assert views.n == 4 + 2 * 4 and views.grid == (1, 12) and not views.plain
    flat = np.arange(12)
    np.testing.assert_array_equal(views[1].take(flat), [[4, 5, 6], [8, 9, 10]])
    assert views.cell_mask().tolist() == [True] * 4 + [True, True, True, False] * 2
    out = np.full(12, -1)
    views[1].put(np.zeros((2, 3)), out)
    assert out.tolist() == [-1] * 4 + [0, 0, 0, -1] * 2
    # a one-grid layout is what ImageSpan always was
    one = ImageLayout(positions=torch.arange(3, 9).view(1, 6), grid=(2, 3))
    assert one.grid == (2, 3) and one.views == Views([View("base", 0, 2, 3)]) and one.contiguous_slice() == slice(3, 9)
    two = ImageLayout(positions=torch.arange(5, 17).view(1, 12), views=views)
    assert two.grid is two.views and two.grid == views and two.n == 12
    with pytest.raises(ValueError):
        ImageLayout(positions=torch.arange(11).view(1, 11), views=views)


@pytest.mark.parametrize("family", ["llava_next", "llava_onevision"])
def test_layout_is_what_the_processor_emitted_and_the_model_packed(bbs, family):
    """Per row: the image-token positions of ``input_ids``, the count the processor emitted, and views whose
    newline columns hold exactly the model's ``image_newline`` in the features ``pack_image_features`` made
    (OneVision's hi-res grids here are down-sampled: the tiny config is ``anyres_max_1``)."""
    bb = bbs[family]
    cfg = bb.model.config
    side = cfg.vision_config.image_size // cfg.vision_config.patch_size
    seen = set()
    for size in SIZES:
        p = bb.prepare_batch([_image(size), _image(size, 1)], ["describe", "is there a red circle in the picture ?"])
        ids = p.inputs["input_ids"]
        views = p.span.views
        assert [v.name for v in views] == ["base", "hires"] and not views[0].newline and views[1].newline
        assert (views[0].h, views[0].w) == (side, side)
        seen.add((views[1].h, views[1].w))
        for b in range(2):
            assert torch.equal(p.span.positions[b], (ids[b] == bb.image_token_id).nonzero()[:, 0])
        assert p.span.n == int((ids[0] == bb.image_token_id).sum()) == views.n
        assert p.span.positions[0, 0] != p.span.positions[1, 0]  # left padding
        with torch.no_grad():
            feats = bb.model.model.get_image_features(pixel_values=p.inputs["pixel_values"],
                                                      image_sizes=p.inputs["image_sizes"]).pooler_output
        feats = feats[0] if isinstance(feats, (list, tuple)) else feats
        assert feats.shape[0] == views.n
        newline = bb.model.model.image_newline
        is_newline = np.array([torch.equal(f, newline) for f in feats])
        np.testing.assert_array_equal(is_newline, ~views.cell_mask())
        assert int((~views.cell_mask()).sum()) == views[1].h
    assert len(seen) == len(SIZES)  # the hi-res grid follows each aspect


def test_images_batch_by_layout_signature(bb):
    images = [_image((40, 24)), _image((24, 40)), _image((41, 25)), _image((40, 24), 3)]
    assert group_by_grid(bb, images) == [[0, 2, 3], [1]]
    together = bb.prepare_batch([images[0], images[2]], ["describe"] * 2)
    assert together.span.signature == bb.prepare(images[0], "describe").span.signature
    from adapt.backbones import BackboneError

    # 4×8 and 12×2 hi-res grids: the same 52 keys, not the same cells
    assert bb.views_for((28, 16)).n == bb.views_for((16, 67)).n
    with pytest.raises(BackboneError, match="same LLaVA-NeXT layout"):
        bb.prepare_batch([_image((28, 16)), _image((16, 67))], ["describe"] * 2)


# pixel geometry --------------------------------------------------------------------------------

def _hits(bb, size, block):
    """Per cell of each view, how much a white ``block`` on a grey ``size`` image changed the pixels the
    processor fed to that view's tokens: the base image, and the tiles put back together and un-padded."""
    ip = bb.processor.image_processor
    out = [ip(images=[_grey(size, b)], return_tensors="np") for b in (None, block)]
    d = np.abs(out[1]["pixel_values"][0] - out[0]["pixel_values"][0]).sum(1)  # [tiles, s, s]
    vc = bb.model.config.vision_config
    s, p = vc.image_size, vc.patch_size
    cells = lambda a: a.reshape(a.shape[0] // p, p, a.shape[1] // p, p).sum((1, 3))  # noqa: E731
    (rows, cols), (h, w) = bb._hires_grid(size[1], size[0])
    canvas = np.zeros((rows * s, cols * s))
    for i in range(rows * cols):
        r, c = divmod(i, cols)
        canvas[r * s:(r + 1) * s, c * s:(c + 1) * s] = d[1 + i]
    full = cells(canvas)
    top, left = (full.shape[0] - h) // 2, (full.shape[1] - w) // 2
    return {"base": cells(d[0]), "hires": full[top:top + h, left:left + w]}


@pytest.mark.parametrize("size", [(160, 96), (90, 150)])
def test_each_views_cell_boxes_follow_the_processors_tiles(bb, size):
    """A small block painted at the centre of a view's cell box changes that cell's pixels most, in the
    base image and in the anyres tiles (resized keeping the aspect, padded centred, cut, un-padded)."""
    geo = bb.layout_geometry(size, bb.prepare(_image(size), "describe").span.grid)
    boxes = geo.cell_boxes()
    assert boxes["hires"].shape[:2] != boxes["base"].shape[:2]
    assert geo.geometries["base"].covers_whole_image()
    for name, grid_boxes in boxes.items():
        h, w = grid_boxes.shape[:2]
        for r in range(h):
            for c in range(w):
                x0, y0, x1, y1 = grid_boxes[r, c]
                if x1 - x0 < 6 or y1 - y0 < 6:
                    continue  # a sliver of real pixels beside the padding
                block = (int(round((x0 + x1) / 2 - 2)), int(round((y0 + y1) / 2 - 2)), 4)
                hits = _hits(bb, size, block)[name]
                assert hits.shape == (h, w)
                assert np.unravel_index(int(np.argmax(hits)), (h, w)) == (r, c), (name, r, c, block)


# anchor ----------------------------------------------------------------------------------------

def test_per_view_anchor_gives_newline_columns_weight_zero():
    views = Views.from_shapes([("base", 3, 3, False), ("hires", 3, 4, True)])
    rng = np.random.default_rng(0)
    maps = rng.random((4, 1, views.n)) + 0.05
    cfg = AnchorConfig()
    f = fuse(maps, 0.7, cfg, views)
    mask = views.cell_mask()
    assert f.fused.shape == (1, views.n) and f.fused.sum() == pytest.approx(1.0)
    assert np.all(f.fused.ravel()[~mask] == 0) and f.lam.shape == (4,)
    bias = rng.random((1, views.n)) + 0.05
    d, w = debias(f.fused, bias, None, views)
    assert w.sum() == pytest.approx(1.0) and np.all(w.ravel()[~mask] == 0) and np.all(d.ravel()[~mask] == 0)
    # debiasing moves mass within a view, never between views
    for v in views:
        assert v.take(w.ravel()).sum() == pytest.approx(v.take(f.fused.ravel()).sum())
    assert np.all(steering_weights(w)[~mask] == 0)
    # each view's fused map is that view's λ-weighted maps, as on one grid
    hires = views[1].take(maps.reshape(4, -1))
    expect = np.tensordot(f.lam, hires / hires.sum((1, 2), keepdims=True), axes=1)
    got = views[1].take(f.fused.ravel())
    np.testing.assert_allclose(got / got.sum(), expect / expect.sum())


def test_bias_keys_hold_the_layout_signature():
    a = Views.from_shapes([("base", 4, 4, False), ("hires", 4, 8, True)])
    b = Views.from_shapes([("base", 4, 4, False), ("hires", 8, 4, True)])
    cfg = AnchorConfig()
    assert BiasCache.noise_key("m", "q", a, cfg, (64, 64)) != BiasCache.noise_key("m", "q", b, cfg, (64, 64))
    # a plain one-view layout keys as its grid did
    plain = Views.from_shapes([("base", 4, 4, False)])
    assert BiasCache.noise_key("m", "q", plain, cfg, (64, 64)) == BiasCache.noise_key("m", "q", (4, 4), cfg, (64, 64))


@pytest.fixture(scope="module")
def two_views(bb, tmp_path_factory):
    """One analysed two-view trace, saved: (trace, its file, the layout)."""
    cfg = AdaptConfig().replace(**{"anchor.num_noise": 2, "anchor.k": 2, "max_new_tokens": 5})
    image = _image((40, 24), 8)
    root = tmp_path_factory.mktemp("trace")
    trace = analyse(bb, image, "describe the image", cfg, bias_cache=BiasCache(root / "cache"))
    return trace, trace.save(root / "t.zip"), bb.prepare(image, "describe").span.views


def test_two_view_trace_runs_saves_reloads_and_draws(bb, two_views):
    from app import figures as F

    trace, path, views = two_views
    image = trace.image
    assert trace.views == views.to_list() and trace.grid == (1, views.n)
    assert trace.layout == views and trace.layer_maps.shape == (bb.num_layers, 1, views.n)
    for m in (trace.anchor, trace.fused, trace.bias, trace.debias_mask):
        assert np.all(m.ravel()[~views.cell_mask()] == 0)
    # the anchor-guided image is painted from both views: it differs from the base view alone
    from adapt.enhance import enhance

    base_only = enhance(image, views[0].take(trace.anchor.ravel()), None, bb.input_geometry(image.size))
    assert not np.array_equal(np.asarray(trace.enhanced_image), np.asarray(base_only))
    back = Trace.load(path)
    assert back.views == trace.views and back.layout == views
    np.testing.assert_array_equal(back.anchor, trace.anchor)
    tile, title = F.titled(F.display_image(back.image), back.anchor, "W", back)
    single, _ = F.titled(F.display_image(back.image), views[0].take(back.anchor.ravel()), "W")
    assert tile.shape[1] > 2 * single.shape[1] - 10  # two views side by side
    for items in (F.anchor_gallery(back), F.layer_gallery(back)):
        assert items and all(img.ndim == 3 for img, _ in items)
    img, caption = F.step_map(back, "steered", 1)
    assert img is not None and "step 1" in caption
    assert "`hires` 4×8 + newline" in F.summary_markdown(back)
    # the Inspect tab renders every view of the reopened trace
    from app.ui.views import render

    out = render(back)
    assert len(out) == 14 and all(img.shape[1] > 2 * single.shape[1] - 10 for img, _ in out[10])


def test_hostile_views_are_refused_with_one_line(two_views, tmp_path):
    """The loader checks the views against the 1×n grid before it reads an array; old traces (no views)
    still load as one view."""
    _, path, _ = two_views

    def views(v):
        return lambda doc: doc.__setitem__("views", v)

    base = {"name": "base", "h": 4, "w": 4, "newline": False}
    bad = {
        "image keys but the grid": views([base, {"name": "hires", "h": 4, "w": 9, "newline": True}]),
        "named twice": views([base, dict(base)]),
        "newline flag": views([base, {"name": "hires", "h": 4, "w": 8, "newline": 1}]),
        "with name, h, w": views([base, {"name": "hires", "h": 4, "w": 8, "newline": True, "x": 1}]),
        "short name": views([base, {"name": "x" * 41, "h": 4, "w": 8, "newline": True}]),
        "1 to 64 views": views([{"name": f"v{i}", "h": 1, "w": 1, "newline": False} for i in range(65)]),
        "a list or null": views({"name": "base"}),
    }
    for i, (message, edit) in enumerate(bad.items()):
        with pytest.raises(ValueError, match=message) as err:
            Trace.load(_rewrite(path, tmp_path / f"{i}.zip", edit))
        assert "\n" not in str(err.value)
    # a trace written before views existed has no "views" key: one view on its grid
    old = Trace.load(_rewrite(path, tmp_path / "old.zip", lambda doc: doc.pop("views")))
    assert old.views is None and old.layout == Views.from_shapes([("base", 1, 52, False)])


def _rewrite(src, dst, edit):
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w") as out:
        for info in z.infolist():
            data = z.read(info)
            if info.filename == "trace.json":
                doc = json.loads(data)
                edit(doc)
                data = json.dumps(doc).encode()
            out.writestr(info.filename, data)
    return dst


def test_grounding_reads_each_view_through_its_own_geometry(bb, tmp_path):
    """A map hot on one hi-res cell is hottest, at the original size, inside that cell's box; ``ground``
    runs on a two-view layout and names it."""
    from adapt.eval.grounding import ground

    size = (160, 96)
    grid = bb.prepare(_image(size), "describe").span.grid
    geo = bb.layout_geometry(size, grid)
    hires = grid[1]
    flat = np.ones(grid.n)
    cell = hires.start + 2 * hires.stride + 5  # row 2, column 5
    flat[cell] = 50.0
    pixels = geo.to_image(flat)
    x0, y0, x1, y1 = geo.cell_boxes()["hires"][2, 5]
    yy, xx = np.unravel_index(int(np.nanargmax(pixels)), pixels.shape)
    assert x0 <= xx + 0.5 <= x1 and y0 <= yy + 0.5 <= y1
    cfg = AdaptConfig().replace(**{"anchor.num_noise": 0, "anchor.k": 2})
    boxes = [(0, 0, 80, 96), (80, 0, 160, 96)]
    out = ground(bb, _image(size, 2), "where is the dog ?", boxes, boxes[0], cfg)
    assert [g[0] for g in out["grid"]] == ["base", "hires"] and set(out["picks"]) >= {"anchor", "fused"}


def test_onevision_loads_its_hub_folder_without_torchvision(folders, bbs):
    """The stock processor builds a video processor (torchvision); the image-only subclass loads the folder
    with the processor's settings, and the hi-res grid is down-sampled as the model does (anyres_max_1)."""
    from transformers import AutoProcessor, LlavaOnevisionProcessor

    with pytest.raises(ImportError, match="orchvision"):
        AutoProcessor.from_pretrained(folders["llava_onevision"])
    bb = bbs["llava_onevision"]
    assert isinstance(bb.processor, LlavaOnevisionProcessor)
    assert (bb.processor.num_image_tokens, bb.processor.vision_aspect_ratio) == (16, "anyres_max_1")
    # 40 × 24: the 4 × 8 un-padded grid (LLaVA-NeXT's) holds 2 base grids' cells: r = √2, down to 2 × 5
    assert bbs["llava_next"].views_for((40, 24))[1].signature == ("hires", 4, 8, True)
    assert bb.views_for((40, 24))[1].signature == ("hires", 2, 5, True)
    # a down-sampled view covers the canvas region of the grid it came from
    assert bb.view_geometries((40, 24))["hires"] == bbs["llava_next"].view_geometries((40, 24))["hires"]


def test_anchor_export_batches_several_views_as_the_single_run(bb):
    """The export's and the preference pairs' batched anchor-only path gives a two-view image the
    single run's per-view W (the dataset schema: tests/test_export_views.py)."""
    from adapt.anchor.build import probe_anchor
    from adapt.export.anchors import NoiseMaps, anchor_batch

    cfg = AdaptConfig().replace(**{"anchor.num_noise": 0, "anchor.k": 2})
    images = [_image((40, 24)), _image((40, 24), seed=3)]
    anchors, grid = anchor_batch(bb, images, ["describe"] * 2, cfg, NoiseMaps(bb, cfg, None))
    assert isinstance(grid, Views) and [v.name for v in grid] == ["base", "hires"]
    for image, a in zip(images, anchors):
        np.testing.assert_allclose(a.anchor, probe_anchor(bb, image, "describe", cfg)[0].anchor, atol=1e-6)
