"""``export-anchors`` and the pair builder on images laid out as several views (issue 21): LLaVA-NeXT
(base + hi-res with newline columns) and InternVL (tiles + thumbnail; a one-tile image is one plain
grid, so its datasets mix one-grid and multi-view rows), on tiny random checkpoints."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from adapt.anchor.build import probe_anchor
from adapt.backbones import load_backbone
from adapt.cli import main
from adapt.config import AdaptConfig
from adapt.enhance import enhance
from adapt.hooks import Views

from families import checkpoint, noise_image

pytestmark = pytest.mark.usefixtures("one_thread")

Q = "describe the image"
# LLaVA-NeXT: every image is base + hi-res (two hi-res shapes here); InternVL: 32 × 32 is one tile (one plain
# grid), 64 × 32 and 50 × 20 two tiles + thumbnail (one batch), 40 × 24 six tiles + thumbnail
SIZES = {"llava_next": [(40, 24), (24, 40), (50, 20)], "internvl": [(32, 32), (64, 32), (40, 24), (50, 20)]}


@pytest.fixture(scope="module")
def bbs(tmp_path_factory):
    root = tmp_path_factory.mktemp("views")
    return {f: load_backbone(checkpoint(f, root / f), dtype=torch.float32) for f in SIZES}


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _dataset(root, sizes):
    from datasets import Dataset, Features, Image as ImageF, Value

    rows = [{"id": f"r{i}", "image": {"bytes": _png(noise_image(s, seed=i)), "path": None}, "question": Q}
            for i, s in enumerate(sizes)]
    features = Features({"id": Value("string"), "image": ImageF(), "question": Value("string")})
    (root / "data").mkdir(parents=True)
    Dataset.from_list(rows, features=features).to_parquet(str(root / "data" / "train-00000-of-00001.parquet"))
    return root


def _listed(views) -> list[dict]:
    """The ``views`` column the backbone's layout should give (one plain grid: the view ``image``)."""
    if views.plain:
        return [{"name": "image", "offset": 0, "rows": views[0].h, "cols": views[0].w, "newline": False}]
    out, at = [], 0
    for v in views:
        out.append({"name": v.name, "offset": at, "rows": v.h, "cols": v.w, "newline": v.newline})
        at += v.cells
    return out


@pytest.mark.parametrize("family", list(SIZES))
def test_several_views_export_as_the_single_run_computes_them(bbs, family, tmp_path, capsys):
    """Per row: the views listed are the backbone's layout, each view's grid read back from ``anchor`` is
    that view of the one-image anchor run's W (:func:`probe_anchor`: per-view fusion and debiasing with
    the noise images), newline columns carry weight 0, and ``anchor_guided`` is ``enhance`` through the
    layout's geometry; rows of one-grid and multi-view layouts sit in one dataset."""
    from datasets import load_dataset

    bb = bbs[family]
    src = _dataset(tmp_path / "in", SIZES[family])
    out = tmp_path / "out"
    args = ["export-anchors", "--input", str(src), "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
            "--batch-size", "4", "--overlays"]
    assert main([*args, "--backbone", bb.name]) == 0
    assert f"exported {len(SIZES[family])}, already done 0, errors 0" in capsys.readouterr().out
    ds = load_dataset(str(out), split="train", cache_dir=str(tmp_path / "hf"))
    cfg = AdaptConfig()
    kinds = set()
    for r, size in zip(sorted(ds, key=lambda r: r["row_id"]), SIZES[family]):
        assert r["status"] == "ok" and r["error"] is None and r["size"] == list(size)
        original = r["image"].convert("RGB")
        views = bb.prepare(original, Q).span.views
        kinds.add(views.plain)
        assert r["views"] == _listed(views)
        single, grid = probe_anchor(bb, original, Q, cfg)
        # the reading example of docs/export.md: each view's rows × cols cells from its offset
        got = {v["name"]: np.array(r["anchor"][v["offset"]:v["offset"] + v["rows"] * v["cols"]]).reshape(
            v["rows"], v["cols"]) for v in r["views"]}
        flat = np.asarray(single.anchor).reshape(-1)
        if views.plain:
            assert r["grid"] == list(grid) and np.allclose(got["image"], single.anchor, atol=1e-6)
        else:
            assert isinstance(grid, Views) and grid == views and r["grid"] == [1, len(r["anchor"])]
            assert len(r["anchor"]) == sum(v.cells for v in views)
            for v in views:
                assert np.allclose(got[v.name], v.take(flat), atol=1e-6)
            assert np.all(flat[~views.cell_mask()] == 0)
        # and docs/export.md's W over the model's image tokens (newline tokens 0) is the flat W
        keys = np.concatenate([np.pad(g, ((0, 0), (0, int(v["newline"])))).ravel()
                               for v, g in zip(r["views"], got.values())])
        assert np.allclose(keys, flat, atol=1e-6)
        assert abs(sum(r["anchor"]) - 1) < 1e-4 and np.std(r["anchor"]) > 0 and single.bias is not None
        expected = np.asarray(enhance(original, single.anchor, cfg.enhance,
                                      geometry=bb.layout_geometry(original.size, grid)), dtype=int)
        made = np.asarray(r["anchor_guided"].convert("RGB"), dtype=int)
        assert np.abs(made - expected).max() <= 1 and np.abs(made - np.asarray(original, dtype=int)).max() > 0
        assert r["overlay"].size[1] == size[1] and r["overlay"].size[0] > 3 * size[0]
    assert kinds == ({False} if family == "llava_next" else {True, False})
    if family == "llava_next":  # the hi-res view's rows end in image_newline keys, left out of `anchor`
        assert all(r["views"][1]["newline"] for r in ds)
    # a rerun resumes: nothing is reported as new
    assert main([*args, "--backbone", bb.name]) == 0
    assert f"exported 0, already done {len(SIZES[family])}" in capsys.readouterr().out


def test_an_export_of_the_one_grid_format_is_refused_not_extended(bbs, tmp_path, capsys):
    """An OUT written before views were exported (format /1: a views struct without ``newline``, multi-view
    rows as errors) is refused on a rerun with one line naming the format, never extended."""
    bb = bbs["internvl"]
    src = _dataset(tmp_path / "in", [(32, 32)])
    out = tmp_path / "out"
    args = ["export-anchors", "--input", str(src), "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
            "--backbone", bb.name, "--num-noise", "0"]
    assert main(args) == 0
    meta = json.loads((out / "export.json").read_text())
    meta["config"]["format"] = "adapt-anchor-export/1"
    (out / "export.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(args) == 2
    line = capsys.readouterr().err.splitlines()[-1]  # one line (after the weights' progress bar)
    assert line.startswith("error: ") and "another configuration (format 'adapt-anchor-export/1' → " \
        "'adapt-anchor-export/2'); give another --out, or --overwrite" in line


def test_the_original_geometry_of_a_fitted_copy_scales_each_view(bbs):
    """The model reads a copy of at most 2048 px (``fit``); the anchor is painted on the original through
    the views of the copy the model read, each view's cells scaled up with the image."""
    from adapt.backbones.geometry import LayoutGeometry
    from adapt.export import original_geometry

    bb = bbs["internvl"]
    views = bb.views_for((64, 32))
    geo = original_geometry(bb, (64, 32), (640, 320), views)
    read = bb.layout_geometry((64, 32), views)
    assert isinstance(geo, LayoutGeometry) and [v.name for v in geo.views] == [v.name for v in views]
    for name, boxes in geo.cell_boxes().items():
        assert np.allclose(boxes, read.cell_boxes()[name] * 10)
    assert original_geometry(bb, (64, 32), (64, 32), views) == read
    one = original_geometry(bb, (32, 32), (320, 320), (4, 4))  # a plain grid: its InputGeometry, scaled alike
    assert np.allclose(one.cell_boxes((4, 4)), bb.input_geometry((32, 32)).cell_boxes((4, 4)) * 10)


def test_pair_builder_makes_multi_view_records(bbs, tmp_path):
    """v_w of a multi-view record is its anchor-guided image through the layout's geometry; a record an
    earlier version skipped as "several views … not exported yet" is built on resume, not kept skipped."""
    from adapt.train.data import PreferenceRecord
    from adapt.train.pairs import ListSource, build_pairs

    bb = bbs["llava_next"]
    records = [PreferenceRecord(f"p{i}", noise_image(s, seed=10 + i), Q, "a scene", "a dog")
               for i, s in enumerate([(40, 24), (24, 40), (40, 24)])]
    out = tmp_path / "pairs"
    out.mkdir()
    old = "llava_next: anchors of images laid out as several views (base, hires) are not exported yet"
    (out / "skipped.jsonl").write_text(json.dumps({"index": 1, "reason": old}) + "\n")
    cfg = AdaptConfig()
    built = build_pairs(bb, ListSource(records), out, "test", adapt_cfg=cfg)
    assert [p["index"] for p in built.pairs] == [0, 1, 2] and built.skipped == []
    for p, rec in zip(built.pairs, records):
        single, grid = probe_anchor(bb, rec.image, Q, cfg)
        assert isinstance(grid, Views) and not grid.plain
        expected = np.asarray(enhance(rec.image, single.anchor, cfg.enhance,
                                      geometry=bb.layout_geometry(rec.image.size, grid)), dtype=int)
        assert np.abs(np.asarray(built.image(p, "enhanced"), dtype=int) - expected).max() <= 1
        assert np.abs(expected - np.asarray(rec.image, dtype=int)).max() > 0


@pytest.mark.parametrize("family", ["idefics3", "gemma3", "mllama"])
def test_the_other_tiled_families_batch_as_their_single_runs(family, tmp_path):
    """SmolVLM / Idefics3 tiles + global, Gemma 3 pan-and-scan crops (a 32-key sliding window: layers whose
    window lost the image are left out of the anchor, as in the single run) and Mllama's tiles: the
    export's batched path gives each image the single run's W and the dataset lists its views."""
    from families import gemma3_checkpoint

    from adapt.export import NoiseMaps, anchor_batch, anchor_columns

    folder = gemma3_checkpoint(tmp_path / family, pan_and_scan=True, sliding_window=32) if family == "gemma3" \
        else checkpoint(family, tmp_path / family)
    bb = load_backbone(folder, dtype=torch.float32)
    cfg = AdaptConfig()
    images = [noise_image((90, 30), seed=1), noise_image((90, 30), seed=2)]
    anchors, grid = anchor_batch(bb, images, [Q, Q], cfg, NoiseMaps(bb, cfg, None))
    assert isinstance(grid, Views) and len(grid) > 1 and grid == bb.prepare(images[0], Q).span.views
    for image, a in zip(images, anchors):
        single, _ = probe_anchor(bb, image, Q, cfg)
        assert np.allclose(a.anchor, single.anchor, atol=1e-6) and a.window_lost == single.window_lost
        cols = anchor_columns(a.anchor, grid)
        assert [v["name"] for v in cols["views"]] == [v.name for v in grid] and abs(sum(cols["anchor"]) - 1) < 1e-4
    if family == "gemma3":
        assert anchors[0].window_lost  # the case the export used to get wrong (no `keep`)
