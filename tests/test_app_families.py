"""The app on every model family (issue 21), each a tiny random checkpoint saved like a hub folder: what a
visitor does, through the Inspect tab's own functions. The operator offers the folders (``ADAPT_MODELS``),
the visitor picks one by its shown name, uploads a non-square image, compares ADAPT-TF with greedy and
with VCD, and gets every figure (maps over each view, the drift charts, the token table, the summary);
the trace saves and reopens drawing the same pictures. Then the tiles' mosaic with real numbers: a map
known per tile lands where that tile's cells lie in the image (the processor's geometry, Mllama's padding
included), and a reopened trace draws it in the same place."""

from __future__ import annotations

import re
import zipfile

import cv2
import numpy as np
import pytest

pytest.importorskip("gradio")

from adapt.backbones import FAMILIES  # noqa: E402
from app import figures as F  # noqa: E402
from app.figures.overlays import COLORMAP, VIEW_GAP, overlay_views, panel_maps, view_boxes, view_panels  # noqa: E402

from app_helpers import synthetic_trace, tiny_model_dir  # noqa: E402
from families import checkpoint, gemma3_checkpoint, noise_image  # noqa: E402

# each registered family's checkpoint under its model type's name, and Gemma 3 with pan-and-scan on
CASES = {**{f: f for f in FAMILIES}, "gemma3_crops": "gemma3"}
ALL = sorted(CASES)
TILED = ["gemma3_crops", "idefics3", "internvl", "mllama"]  # cases that cut SIZE into tiles or crops
# non-square: Idefics3 / SmolVLM 2 × 2 tiles + global, InternVL 2 × 3 tiles + thumbnail, Mllama 1 × 2 tiles (the
# second mostly padding), Gemma 3 with pan-and-scan base + crops, LLaVA-NeXT and LLaVA-OneVision base + hires,
# the others one grid
SIZE = (60, 36)
QUESTION = "describe the image"
BASELINE = "vcd"  # runs on every family (OPERA and PAI's text-only branch are refused on some: see below)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("app-families")
    built = {"llava": lambda path: tiny_model_dir(path),
             "gemma3_crops": lambda path: gemma3_checkpoint(path, pan_and_scan=True)}
    return {case: built.get(case, lambda path: checkpoint(case, path))(root / case) for case in ALL}


@pytest.fixture(scope="module")
def tab(folders, tmp_path_factory):
    """The Inspect tab of an app whose operator offers every family's folder (and nothing typed)."""
    import gradio as gr

    from adapt.anchor import BiasCache
    from app import analysis
    from app.models import ANY_MODEL_ENV, LEGACY_MODELS_ENV, MODELS_ENV
    from app.ui import App
    from app.ui.inspect import InspectTab

    scratch = tmp_path_factory.mktemp("scratch")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(MODELS_ENV, ",".join(folders.values()))
        mp.delenv(LEGACY_MODELS_ENV, raising=False)
        mp.delenv(ANY_MODEL_ENV, raising=False)
        mp.setattr(analysis, "_bias_cache", BiasCache(scratch / "cache"))
        mp.setattr("app.scratch.SCRATCH", scratch / "app")
        app = App(warm=False)
        with gr.Blocks():
            yield InspectTab(app)


@pytest.fixture(scope="module")
def upload(tmp_path_factory):
    path = tmp_path_factory.mktemp("upload") / "photo.png"
    noise_image(SIZE, 3).save(path)
    return str(path)


def _knobs():
    from app.knobs import Knobs

    knobs = Knobs.defaults()
    knobs.k, knobs.num_noise, knobs.max_new_tokens = 2, 1, 4
    return knobs


def _expected_panels(views) -> list[str]:
    """What the maps must show for these views: one picture for a plain grid; else the tiles as one mosaic
    (where the layout has tiles) and each other view beside it, in key order."""
    if views.plain:
        return [""]
    titles = []
    for v in views:
        title = "tiles" if re.fullmatch(r"tile \d+,\d+", v.name) else "crops" if re.fullmatch(r"crop \d+", v.name) \
            else v.name
        if title not in titles:
            titles.append(title)
    return titles


def _drawn_width(views, side: int) -> int:
    panels = len(_expected_panels(views))
    return panels * side + (panels - 1) * VIEW_GAP


def _images(out) -> list[np.ndarray]:
    """Every map picture of what the tab shows (status, trace, then ``render``'s outputs): the anchor maps
    and the per-layer maps."""
    shown = out[2:]
    return [img for img, _ in shown[10]] + [img for img, _ in shown[13]]


@pytest.mark.parametrize("case", ALL)
def test_a_visitor_analyses_compares_draws_and_reopens(case, folders, tab, upload):
    from adapt.trace import Trace
    from app.names import model_name
    from app.ui.views import step_views

    shown = model_name(folders[case])
    assert shown == case and (shown, shown) in tab.app.backbone_choices()  # offered by its folder's name
    knobs = _knobs()
    out = tab.analysis(upload, QUESTION, shown, *knobs.values(), "greedy")
    trace = out[1]
    bb = tab.app.models.get(shown)
    assert bb.family == CASES[case]
    views = bb.prepare(trace.image, QUESTION).span.views
    assert trace.image.size == SIZE and trace.meta["model"] == case
    assert trace.layout == views and trace.num_layers == bb.num_layers
    # ADAPT-TF against greedy, both answered with every step's maps over the n image keys
    for a in (trace.unsteered, trace.steered):
        assert a is not None and len(a.tokens) == np.asarray(a.maps).shape[0] <= knobs.max_new_tokens
        assert np.asarray(a.maps).shape[1:] == (bb.num_layers, views.n)
    # every figure: maps over each view, the drift charts, the token table, the summary
    side = F.display_image(trace.image).shape[1]
    width = _drawn_width(views, side)
    if views.plain:
        assert trace.views is None
    else:
        assert [title for title, _ in view_panels(trace)] == _expected_panels(views)
    pictures = _images(out)
    assert len(out[2 + 13]) == bb.num_layers and len(out[2 + 10]) == 2 + 2 * (trace.bias is not None)
    assert all(img.ndim == 3 and img.shape[1] == width for img in pictures)
    last = max(0, len(trace.steered.tokens) - 1)
    base = F.display_image(trace.image)
    for run in ("unsteered", "steered"):
        img, caption = F.step_map(trace, run, last, layer=bb.num_layers - 1)
        assert img.shape[1] == width and f"step {last}" in caption
        if views.plain:  # one grid: the plain overlay, as before views existed (the embedded model's figures)
            flat = np.asarray(getattr(trace, run).maps)[last, -1]
            np.testing.assert_array_equal(img[:base.shape[0]], F.overlay(base, flat.reshape(trace.grid)))
    align, *_, amc, signals = step_views(trace, last, "mean")
    assert all(f">{t.strip()}<" in align for t in trace.steered.tokens if t.strip().isalnum())
    assert amc.data and signals.data
    summary = F.summary_markdown(trace)
    assert f"**Backbone** `{case}`" in summary  # its folder's name, not the server's path
    if views.plain:
        assert f"grid {views[0].h}×{views[0].w}" in summary
    else:  # each view named with its shape, tiles (and crops) of one shape counted in one phrase
        tiles = [v for v in views if v.name.startswith("tile ")]
        crops = [v for v in views if v.name.startswith("crop ")]
        rows, cols = (len({v.name.split(",")[0] for v in tiles}), len({v.name.split(",")[1] for v in tiles}))
        if len(tiles) > 1:
            assert f"{len(tiles)} tiles ({rows} × {cols}) of {tiles[0].h}×{tiles[0].w}" in summary
        if len(crops) > 1:
            assert f"{len(crops)} crops of {crops[0].h}×{crops[0].w}" in summary
        assert all(f"`{v.name}` {v.h}×{v.w}" in summary for v in views if v not in tiles + crops)
    # the same image against a baseline other than greedy
    shown_vs = tab.analysis(upload, QUESTION, shown, *knobs.values(), BASELINE)
    vs = shown_vs[1]
    assert F.compared_method(vs) == BASELINE and F.run_label(vs, "unsteered") == BASELINE
    assert vs.unsteered.tokens and vs.steered.tokens == trace.steered.tokens  # ADAPT-TF's answer is the same
    img, caption = F.step_map(vs, "unsteered", 0)  # VCD decodes two branches and records no attention
    assert img is None and caption == f"{BASELINE}: no attention recorded (the method does not capture it)"
    assert F.step_map(vs, "steered", 0)[0].shape[1] == width and f">{BASELINE}<" in shown_vs[2 + 3]
    # saved, reopened without the model: the same pictures, and the inputs back to what made it
    path = out[-1].value["path"]  # the download button hands the visitor this file
    again = tab.opened(path)
    back = again[1]
    assert isinstance(back, Trace) and back.layout == views
    for a, b in zip(pictures, _images(again)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(F.step_map(back, "steered", last)[0], F.step_map(trace, "steered", last)[0])
    assert again[-1] == case and again[-2] == "greedy"


def test_a_refused_method_is_one_line_in_the_status_and_keeps_the_results(tab, upload):
    """OPERA on Mllama's cross-attention cache is refused by the library: the page says so in one line."""
    run = tab._page(tab.analysis)
    before = tab.analysis(upload, QUESTION, "mllama", *_knobs().values(), "greedy")[1]
    out = run(upload, QUESTION, "mllama", *_knobs().values(), "opera", before)
    status = out[0]
    assert status.startswith("⚠️") and "OPERA is not supported on mllama" in status and "\n" not in status
    assert "results below are still those of the previous analysis" in status


def test_only_the_offered_folders_are_loaded(tab, folders, tmp_path):
    """A family's folder the operator did not list is refused with the list of choices, whatever it is."""
    from adapt.backbones import BackboneError

    unlisted = checkpoint("qwen2_vl", tmp_path / "qwen2_vl_unlisted")
    for name in (unlisted, "qwen2_vl_unlisted", "../qwen2_vl"):
        with pytest.raises(BackboneError, match="is not offered on this server; choose one of: .*internvl"):
            tab.app.models.get(name)


def test_a_load_option_in_the_operators_list_reaches_the_family(folders, tab, upload, monkeypatch):
    """``DIR?image_splitting=off`` in ADAPT_MODELS: offered under its own name (the option kept, the server's
    folders not), loaded with SmolVLM / Idefics3's splitting off (one grid), and named so in the trace."""
    from app.models import MODELS_ENV

    monkeypatch.setenv(MODELS_ENV, f"{folders['idefics3']}?image_splitting=off,{folders['idefics3']}")
    name = "idefics3?image_splitting=off"
    assert (name, name) in tab.app.backbone_choices()
    plain = tab.analysis(upload, QUESTION, name, *_knobs().values(), "greedy")[1]
    tiled = tab.analysis(upload, QUESTION, "idefics3", *_knobs().values(), "greedy")[1]
    assert plain.views is None and plain.meta["model"] == name and plain.grid == (4, 4)
    assert [v["name"] for v in tiled.views][-1] == "global"


# the mosaic ---------------------------------------------------------------------------------------

def _tiled_trace(rows: int, cols: int, side: int, boxes: dict | None):
    """A synthetic trace of ``rows × cols`` tiles of ``side²`` cells and a thumbnail over a 90 × 60 image."""
    from adapt.hooks import Views

    trace = synthetic_trace(layers=2, steps=3)
    views = Views.from_shapes([(f"tile {r},{c}", side, side, False) for r in range(rows) for c in range(cols)]
                              + [("thumbnail", side, side, False)])
    trace.views, trace.grid = views.to_list(), (1, views.n)
    trace.image = noise_image((90, 60))
    if boxes is not None:
        trace.meta["view_boxes"] = boxes
    return trace, views


def test_each_tiles_map_lands_in_its_region_of_the_mosaic():
    """2 × 3 tiles of 4 × 4 cells: tile k's map is k + 1 everywhere but one hot cell; the mosaic panel shows
    each tile's value over its sixth of the image and the hot cell inside its own cell's pixels, the
    thumbnail beside it over the whole image, on one colour scale; the drawn pixels are those values'
    colours blended over the image."""
    rows, cols, side = 2, 3, 4
    trace, views = _tiled_trace(rows, cols, side, None)
    flat = np.zeros(views.n)
    hot = {}
    for k, v in enumerate(views[:-1]):
        grid = np.full((side, side), k + 1.0)
        hot[v.name] = (k % side, (k * 3) % side)
        grid[hot[v.name]] = 20.0
        v.put(grid, flat)
    views[-1].put(np.full((side, side), 10.0), flat)
    size = (180, 120)  # display pixels: twice the image
    panels = panel_maps(trace, flat, size)
    assert [t for t, _, _ in panels] == ["tiles", "thumbnail"]
    (_, mosaic, placed), (_, thumb, _) = panels
    assert [name for name, _ in placed] == [v.name for v in views[:-1]]
    lo, hi = 1.0, 20.0
    tw, th = 60, 60
    for k, (name, box) in enumerate(placed):
        r, c = k // cols, k % cols
        assert box == (c * tw, r * th, (c + 1) * tw, (r + 1) * th)
        region = mosaic[r * th:(r + 1) * th, c * tw:(c + 1) * tw]
        hr, hc = hot[name]
        # 15 display pixels a cell: the hottest pixel is in the hot cell, every cell's middle pixel is its value
        yy, xx = np.unravel_index(int(np.argmax(region)), region.shape)
        assert (yy // 15, xx // 15) == hot[name]
        middles = region[7::15, 7::15]
        expect = np.full((side, side), (k + 1 - lo) / (hi - lo))
        expect[hot[name]] = 1.0
        np.testing.assert_allclose(middles, expect, atol=1e-5)
    np.testing.assert_allclose(thumb, (10.0 - lo) / (hi - lo), atol=1e-5)
    assert not np.isnan(mosaic).any()
    # the picture: the thumbnail's colour blended over the image, beside the mosaic
    base = F.display_image(trace.image)
    assert base.shape[:2] == (149, 224)
    drawn = overlay_views(base, trace, flat)
    assert drawn.shape == (149, 2 * 224 + VIEW_GAP, 3)
    values = panel_maps(trace, flat, (224, 149))
    level = np.uint8(round(float(values[1][1][70, 100]) * 255))
    colour = cv2.cvtColor(cv2.applyColorMap(np.full((1, 1), level, np.uint8), COLORMAP),
                          cv2.COLOR_BGR2RGB)[0, 0]
    expect = np.round(0.45 * base[70, 100].astype(float) + 0.55 * colour.astype(float))
    np.testing.assert_allclose(drawn[70, 224 + VIEW_GAP + 100], expect, atol=1)


def test_recorded_boxes_place_the_tiles_and_hostile_ones_fall_back_to_the_names():
    rows, cols, side = 1, 2, 2
    # as Mllama pads: the image fills 0.7 of the two tiles' width, tile 0,1 reaches past the image
    boxes = {"tile 0,0": [0, 0, 64.2857, 60], "tile 0,1": [64.2857, 0, 128.5714, 60], "thumbnail": [0, 0, 90, 60]}
    trace, views = _tiled_trace(rows, cols, side, boxes)
    assert view_boxes(trace) == [tuple(float(x) for x in b) for b in boxes.values()]
    flat = np.zeros(views.n)
    views[0].put(np.zeros((side, side)), flat)
    views[1].put(np.array([[1.0, 0.5], [1.0, 0.5]]), flat)  # tile 0,1: its second column lies in the padding
    (_, mosaic, placed), _ = panel_maps(trace, flat, (90, 60))
    assert placed == [("tile 0,0", (0, 0, 64, 60)), ("tile 0,1", (64, 0, 90, 60))]  # cut at the image's edge
    np.testing.assert_allclose(mosaic[:, :64], 0.0, atol=1e-6)
    np.testing.assert_allclose(mosaic[:, 64 + 16], 1.0, atol=0.01)  # the middle of tile 0,1's first column
    assert mosaic[:, 64:].min() > 0.8  # its second column (0.5) is not drawn: it is padding
    by_name = [(0.0, 0.0, 45.0, 60.0), (45.0, 0.0, 90.0, 60.0), (0.0, 0.0, 90.0, 60.0)]
    for bad in ({"tile 0,0": [0, 0, 1e12, 60]}, {"tile 0,0": ["0", 0, 1, 1]}, {"tile 0,0": [5, 5, 5, 9]},
                {"tile 0,0": [0, 0, 1, float("nan")]}, {"tile 0,0": [True, 0, 1, 1]}, ["not", "a", "dict"]):
        trace.meta["view_boxes"] = bad
        got = view_boxes(trace)
        assert got[0] == by_name[0] and got[2] == by_name[2]
        assert overlay_views(F.display_image(trace.image), trace, flat).shape[1] == 2 * 224 + VIEW_GAP
    # names alone can put a tile past the image's edge (a crafted trace): it is left out, nothing fails
    from adapt.hooks import Views

    far = Views.from_shapes([("tile 0,0", 2, 2, False), ("tile 0,99999", 2, 2, False)])
    trace.views, trace.grid, trace.meta = far.to_list(), (1, far.n), {}
    (_, values, placed), = panel_maps(trace, np.arange(far.n, dtype=float), (224, 149))
    assert placed == [("tile 0,0", (0, 0, 1, 149)), ("tile 0,99999", (224, 0, 224, 149))]
    assert not np.isnan(values[:, 0]).any() and np.isnan(values[:, 1:]).all()
    assert overlay_views(F.display_image(trace.image), trace, np.arange(far.n)).shape == (149, 224, 3)


def test_crops_without_boxes_lie_along_the_images_long_axis():
    """Gemma 3's pan-and-scan crops in a trace without recorded boxes: side by side on a wide image, stacked on
    a tall one; drawn as one "crops" mosaic beside the base view."""
    from adapt.hooks import Views

    trace = synthetic_trace(layers=2, steps=3)
    views = Views.from_shapes([("base", 2, 2, False)] + [(f"crop {i}", 2, 2, False) for i in range(3)])
    trace.views, trace.grid = views.to_list(), (1, views.n)
    assert [t for t, _ in view_panels(trace)] == ["base", "crops"]
    trace.image = noise_image((90, 60))
    assert view_boxes(trace) == [(0, 0, 90, 60), (0, 0, 30, 60), (30, 0, 60, 60), (60, 0, 90, 60)]
    trace.image = noise_image((60, 90))
    assert view_boxes(trace) == [(0, 0, 60, 90), (0, 0, 60, 30), (0, 30, 60, 60), (0, 60, 60, 90)]


@pytest.mark.parametrize("case", TILED)
def test_a_hot_cell_of_a_real_tile_lands_in_that_cells_pixels_after_reopening(case, folders, tab, upload, tmp_path):
    """On the family's own trace: the boxes recorded from the processor's geometry; a map hot on one cell of
    the last tile is drawn, by the reopened trace, inside that cell's box in the original image."""
    from adapt.trace import Trace

    trace = tab.analysis(upload, QUESTION, case, *_knobs().values(), "greedy")[1]
    bb = tab.app.models.get(case)
    geo = bb.layout_geometry(trace.image.size, trace.layout)
    expect = {name: list(g.visible_box()) for name, g in geo.geometries.items()}
    assert trace.meta["view_boxes"].keys() == expect.keys()
    for name, box in trace.meta["view_boxes"].items():
        np.testing.assert_allclose(box, expect[name], atol=1e-3)
    back = Trace.load(trace.save(tmp_path / "t.zip"))
    tile = [v for v in back.layout if v.name.startswith(("tile ", "crop "))][-1]
    r, c = tile.h - 1, tile.w - 1  # Mllama: that cell lies mostly in the padding, past the image's right edge
    flat = np.zeros(back.layout.n)
    flat[tile.start + r * tile.stride + c] = 1.0
    scale = 8  # display pixels per image pixel
    mosaic = next(values for title, values, _ in panel_maps(back, flat, (SIZE[0] * scale, SIZE[1] * scale))
                  if title in ("tiles", "crops"))
    # the hot pixels (over the half-way value between the cell and its cold neighbours) are that cell's
    yy, xx = np.nonzero(mosaic > 0.6)
    x0, y0, x1, y1 = geo.cell_boxes()[tile.name][r, c]
    assert len(xx) > scale and x1 - x0 > 1 and y1 - y0 > 1
    px = 1 / scale
    assert x0 - px <= (xx.min() + 0.5) / scale and (xx.max() + 0.5) / scale <= x1 + px
    assert y0 - px <= (yy.min() + 0.5) / scale and (yy.max() + 0.5) / scale <= y1 + px
    assert back.meta["view_boxes"] == trace.meta["view_boxes"]


def test_the_figures_download_of_a_tiled_trace(tab, upload, tmp_path):
    trace = tab.analysis(upload, QUESTION, "internvl", *_knobs().values(), "greedy")[1]
    F.figures_zip(trace, tmp_path / "figs.zip")
    names = zipfile.ZipFile(tmp_path / "figs.zip").namelist()
    assert "figures.html" in names and sum(n.startswith("layer_") for n in names) == trace.num_layers
