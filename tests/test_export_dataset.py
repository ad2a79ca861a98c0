"""``export-anchors`` at scale: Hugging Face datasets in and out, sharded processes, resume, refusals,
the names rule (CLI and app alike) and bad inputs, on the embedded model with tiny images."""

import io
import json
import os
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adapt.backbones import EMBEDDED_DIR
from adapt.cli import main

ROOT = Path(__file__).resolve().parents[1]
Q = "describe the image"
NEW = ["row_id", "anchor_guided", "anchor", "views", "grid", "size", "status", "error"]

pytestmark = pytest.mark.skipif(not (EMBEDDED_DIR / "config.json").exists(), reason="assets/embedded not present")


def _png(seed: int, size=(40, 32)) -> bytes:
    rng = np.random.RandomState(seed)
    buf = io.BytesIO()
    Image.fromarray((rng.rand(size[1], size[0], 3) * 255).astype("uint8")).save(buf, format="PNG")
    return buf.getvalue()


def _hub_layout(root: Path, rows: list[dict], shards: int = 2) -> Path:
    """``rows`` written with datasets as parquet shards under ``root/data/train-*`` (the Hub's layout)."""
    from datasets import Dataset, Features, Image as ImageF, Value

    features = Features({"id": Value("string"), "image": ImageF(), "question": Value("string"),
                         "extra": Value("int64")})
    (root / "data").mkdir(parents=True)
    per = -(-len(rows) // shards)
    for i in range(shards):
        part = rows[i * per:(i + 1) * per]
        ds = Dataset.from_list(part, features=features) if part else \
            Dataset.from_dict({k: [] for k in features}, features=features)
        ds.to_parquet(str(root / "data" / f"train-{i:05d}-of-{shards:05d}.parquet"))
    return root


@pytest.fixture(scope="module")
def bb():
    from adapt.backbones import load_backbone

    return load_backbone("embedded")


@pytest.fixture
def dataset(tmp_path):
    rows = [{"id": f"r{i}", "image": {"bytes": _png(i), "path": None}, "question": Q, "extra": i} for i in range(5)]
    rows.append({"id": "r1", "image": {"bytes": _png(9), "path": None}, "question": Q, "extra": 5})  # same id again
    rows.append({"id": "bad", "image": {"bytes": b"\x89PNG not really", "path": None}, "question": Q, "extra": 6})
    rows.append({"id": "noq", "image": {"bytes": _png(7), "path": None}, "question": "", "extra": 7})
    return _hub_layout(tmp_path / "in", rows), rows


def _load(out: Path, tmp_path: Path):
    from datasets import load_dataset

    return load_dataset(str(out), split="train", cache_dir=str(tmp_path / "hf-cache"))


def _table(out: Path) -> dict:
    """Every row of ``out`` by row_id, read straight from the shards."""
    from adapt.export import read_rows

    import pyarrow.parquet as pq

    cols = pq.read_schema(next((out / "data").glob("*.parquet"))).names
    return {r["row_id"]: r for r in read_rows(out, cols)}


def _args(src, out, cache, *extra):
    return ["export-anchors", "--input", str(src), "--out", str(out), "--cache-dir", str(cache), *extra]


def test_parquet_in_parquet_out_every_column(bb, dataset, tmp_path, capsys):
    from adapt.config import AdaptConfig
    from adapt.enhance import enhance
    from adapt.anchor.build import probe_anchor

    src, rows = dataset
    out = tmp_path / "out"
    assert main(_args(src, out, tmp_path / "cache", "--batch-size", "4")) == 3  # two rows failed
    printed = capsys.readouterr().out
    assert "exported 6, already done 0, errors 2" in printed and "holds 8 rows (6 ok, 2 errors)" in printed
    ds = _load(out, tmp_path)
    assert len(ds) == len(rows) == 8
    assert list(ds.features) == ["id", "image", "question", "extra"] + NEW
    assert type(ds.features["anchor_guided"]).__name__ == "Image" and type(ds.features["image"]).__name__ == "Image"
    got = {r["row_id"]: r for r in ds}
    assert sorted(got) == ["bad", "noq", "r0", "r1", "r1-2", "r2", "r3", "r4"]  # the repeated id kept apart
    cfg = AdaptConfig()
    for row_id, inp in zip(["r0", "r1", "r2", "r3", "r4", "r1-2"], rows):
        r = got[row_id]
        assert (r["id"], r["question"], r["extra"], r["status"], r["error"]) == (inp["id"], Q, inp["extra"], "ok", None)
        original = Image.open(io.BytesIO(inp["image"]["bytes"])).convert("RGB")
        assert np.array_equal(np.asarray(r["image"].convert("RGB")), np.asarray(original))  # the input kept
        h, w = r["grid"]
        assert r["views"] == [{"name": "image", "offset": 0, "rows": h, "cols": w, "newline": False}]
        assert r["size"] == [40, 32]
        anchor = np.array(r["anchor"], dtype=np.float64).reshape(h, w)
        # the batched anchor-only path gives the one-image anchor run's W, and the enhancement of it
        single, grid = probe_anchor(bb, original, Q, cfg)
        assert tuple(grid) == (h, w) and np.allclose(anchor, single.anchor, atol=1e-5)
        assert anchor.min() >= 0 and abs(anchor.sum() - 1) < 1e-4 and anchor.std() > 0
        expected = np.asarray(enhance(original, anchor, cfg.enhance, geometry=bb.input_geometry(original.size)))
        assert np.abs(np.asarray(r["anchor_guided"], dtype=int) - expected.astype(int)).max() <= 1
    assert got["bad"]["status"] == "error" and "not a readable image" in got["bad"]["error"]
    assert got["noq"]["status"] == "error" and "no question" in got["noq"]["error"]
    for r in (got["bad"], got["noq"]):
        assert r["anchor_guided"] is None and r["anchor"] is None and r["extra"] in (6, 7)
    card = (out / "README.md").read_text()
    assert "data/train-*.parquet" in card and "embedded (llava)" in card and "rows: 8 (6 ok, 2 with" in card
    assert str(ROOT) not in card
    assert "export-anchors" in card and '"k": 5' in card
    assert not (out / "manifest.jsonl").exists() and not (out / "images").exists()  # the folder format only
    assert main(_args(src, out, tmp_path / "cache")) == 0  # a rerun: everything already there
    assert "exported 0, already done 8, errors 0" in capsys.readouterr().out


def test_two_processes_give_the_dataset_of_one(bb, dataset, tmp_path):
    """Simulated ranks in this process and real ones under ``accelerate launch`` both write the rows of
    one process, split by id hash."""
    from adapt.export import Dist, ExportOptions, export_dataset, open_source, shard_of

    src, _ = dataset
    cache = tmp_path / "cache"
    one, two = tmp_path / "one", tmp_path / "two"
    opts = ExportOptions(batch_size=1)
    export_dataset(bb, open_source(src), one, None, None, opts)
    for rank in (1, 0):  # the main process last: it merges once every share is written
        export_dataset(bb, open_source(src), two, None, None, opts, dist=Dist(rank, 2))
    a, b = _table(one), _table(two)
    assert a == b and len(a) == 8
    assert {p.name.split("-")[1] for p in (two / "data").glob("*.parquet")} == {"r000", "r001"}
    assert {shard_of(i, 2) for i in a} == {0, 1}
    port = _free_port()
    three = tmp_path / "three"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    # accelerate's "--multi_gpu" launcher is torchrun: on a machine without GPUs it starts CPU processes
    r = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                        "--main_process_port", str(port), "-m", "adapt", *_args(src, three, cache, "--batch-size", "1")],
                       env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    assert "(process 1 of 2)" in r.stdout and "holds 8 rows (6 ok, 2 errors)" in r.stdout, r.stderr[-3000:]
    _same(_table(three), a)  # another thread count: anchors agree to float precision


def _same(a: dict, b: dict) -> None:
    """Two exports hold the same rows: every column exactly, W to float precision, pixels within 1."""
    assert sorted(a) == sorted(b)
    for k in a:
        ra, rb = dict(a[k]), dict(b[k])
        wa, wb = ra.pop("anchor"), rb.pop("anchor")
        ga, gb = ra.pop("anchor_guided"), rb.pop("anchor_guided")
        assert ra == rb and (wa is None) == (wb is None) and (ga is None) == (gb is None)
        if wa is not None:
            assert np.allclose(wa, wb, atol=1e-5)
            pa, pb = (np.asarray(Image.open(io.BytesIO(g["bytes"])), dtype=int) for g in (ga, gb))
            assert np.abs(pa - pb).max() <= 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_killed_export_resumes_to_the_same_dataset(bb, dataset, tmp_path):
    from adapt.export import ExportOptions, export_dataset, open_source

    src, _ = dataset
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    opts = ExportOptions(batch_size=2, shard_rows=2)
    export_dataset(bb, open_source(src), whole, None, None, opts)

    def killed(done, total, name):
        if done == 5:  # like a kill: no flush, no card, the rows after the last whole shard are lost
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_dataset(bb, open_source(src), cut, None, None, opts, progress=killed)
    kept = len(_table(cut))
    assert kept == 4 and not (cut / "README.md").exists()
    r = export_dataset(bb, open_source(src), cut, None, None, opts)
    assert r.skipped == kept and r.ok + r.error == 8 - kept
    _same(_table(whole), _table(cut))  # batches of another make-up: W agrees to float precision


def test_another_configuration_is_refused_in_one_line(dataset, tmp_path, capsys):
    src, _ = dataset
    out, cache = tmp_path / "out", tmp_path / "cache"
    main(_args(src, out, cache))
    before = sorted(p.name for p in (out / "data").iterdir())
    capsys.readouterr()
    assert main(_args(src, out, cache, "--k", "3")) == 2
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip() and "Loading" not in l]
    assert len(err) == 1 and "another configuration (anchor.k 5 → 3)" in err[0] and "--overwrite" in err[0]
    assert sorted(p.name for p in (out / "data").iterdir()) == before
    assert main(_args(src, out, cache, "--k", "3", "--overwrite")) == 3
    assert json.loads((out / "export.json").read_text())["config"]["anchor"]["k"] == 3
    assert len(_table(out)) == 8


def _folder(tmp_path: Path) -> Path:
    d = tmp_path / "pics"
    d.mkdir()
    (d / "a.png").write_bytes(_png(1))
    Image.open(io.BytesIO(_png(2))).save(d / "a.jpg")
    (d / "b.png").write_bytes(_png(3))
    return d


def test_a_rerun_with_another_question_or_k_never_skips(tmp_path, capsys):
    """Issue 20 item 6: the manifest names the question and configuration of every item; a rerun that
    asks another question (or K) into the same OUT is refused with one line, or redone with --overwrite."""
    src, out, cache = _folder(tmp_path), tmp_path / "out", tmp_path / "cache"
    assert main(_args(src, out, cache, "--question", Q)) == 0
    first = [json.loads(l) for l in (out / "manifest.jsonl").read_text().splitlines()]
    assert {m["question"] for m in first} == {Q} and len({m["config"] for m in first}) == 1
    stamp = {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    capsys.readouterr()
    assert main(_args(src, out, cache, "--question", "what colour is it?")) == 2
    captured = capsys.readouterr()
    err = [l for l in captured.err.splitlines() if l.strip() and "Loading" not in l]
    assert len(err) == 1 and "'describe the image'" in err[0] and "'what colour is it?'" in err[0]
    assert "skipped" not in captured.out and "already done" not in captured.out
    assert {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()} == stamp
    assert main(_args(src, out, cache, "--question", Q, "--k", "3")) == 2
    assert "anchor.k 5 → 3" in capsys.readouterr().err
    assert main(_args(src, out, cache, "--question", "what colour is it?", "--overwrite")) == 0
    again = [json.loads(l) for l in (out / "manifest.jsonl").read_text().splitlines()]
    assert {m["question"] for m in again} == {"what colour is it?"} and len(again) == 3
    assert all(stamp[p.name] != p.stat().st_mtime_ns for p in (out / "images").iterdir())


def test_names_follow_the_users_files_in_the_cli_and_the_app(bb, tmp_path, monkeypatch):
    """Issue 20 item 7: a.png + a.jpg → a-png.png / a-jpg.png in both; every report row and manifest
    line names the user's file; no server path anywhere; a zip member over the limit is skipped alone."""
    from app.batch import export_batch
    from app.knobs import Knobs

    src, out = _folder(tmp_path), tmp_path / "out"
    assert main(_args(src, out, tmp_path / "cache", "--question", Q)) == 0
    man = {m["source"]: m for m in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    assert {k: v["output"] for k, v in man.items()} == {"a.png": "images/a-png.png", "a.jpg": "images/a-jpg.png",
                                                        "b.png": "images/b.png"}
    assert sorted(p.name for p in (out / "images").iterdir()) == ["a-jpg.png", "a-png.png", "b.png"]
    assert str(tmp_path) not in (out / "manifest.jsonl").read_text() + (out / "README.md").read_text()

    # the app: uploads arrive under server paths of their own, a zip holds a member over the size limit
    import adapt.images

    up = tmp_path / "gradio-upload-scratch"
    for i, name in enumerate(["a.png", "a.jpg"]):
        (up / str(i)).mkdir(parents=True)
        (up / str(i) / name).write_bytes((src / name).read_bytes())
    big = _png(5, size=(200, 200))
    with zipfile.ZipFile(up / "more.zip", "w") as z:
        z.writestr("in/c.png", _png(4))
        z.writestr("in/huge.png", big)
        z.writestr("in/d.png", _png(6))
    monkeypatch.setattr(adapt.images, "MAX_BYTES", len(big) - 1)
    monkeypatch.setenv("ADAPT_CACHE", str(tmp_path / "app-cache"))
    paths = [str(up / "0" / "a.png"), str(up / "1" / "a.jpg"), str(up / "more.zip")]
    zpath, report, previews = export_batch(bb, paths, Q, "a.jpg: what colour is it?", Knobs.defaults())
    rows = {r[0]: r for r in report}
    assert {k: (v[2], v[3] if v[2] == "ok" else "") for k, v in rows.items()} == {
        "a.png": ("ok", "images/a-png.png"), "a.jpg": ("ok", "images/a-jpg.png"), "c.png": ("ok", "images/c.png"),
        "d.png": ("ok", "images/d.png"), "huge.png": ("skipped", "")}
    assert rows["a.jpg"][1] == "what colour is it?" and rows["a.png"][1] == Q
    assert "larger than" in rows["huge.png"][3]
    assert {name for _, name in previews} == {"a.png", "a.jpg", "c.png", "d.png"}
    with zipfile.ZipFile(zpath) as z:
        names = z.namelist()
        text = "".join(z.read(n).decode("utf-8", "replace") for n in names)
        manifest = [json.loads(l) for l in z.read("anchor-export/manifest.jsonl").decode().splitlines()]
    assert {m["source"] for m in manifest} == {"a.png", "a.jpg", "c.png", "d.png", "huge.png"}
    assert "anchor-export/images/a-png.png" in names and "anchor-export/images/a-jpg.png" in names
    assert any(n.startswith("anchor-export/data/train-") for n in names) and "anchor-export/README.md" in names
    assert str(up) not in text and str(tmp_path) not in text and "gradio-upload-scratch" not in text
    assert str(Path(zpath).parent) not in text  # nor the app's scratch folder
    assert not any(str(tmp_path) in " ".join(map(str, r)) for r in report)


def _one_line(code, capsys, *expect):
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip() and "Loading" not in l]
    assert code == 2 and len(err) == 1 and err[0].startswith("error:"), err
    for e in expect:
        assert e in err[0], err[0]


def test_bad_inputs_get_one_line_and_nothing_outside_out(dataset, tmp_path, capsys, monkeypatch):
    import adapt.images

    src, _ = dataset
    cache = tmp_path / "cache"
    monkeypatch.chdir(tmp_path)
    before = set(os.listdir(tmp_path))
    _one_line(main(_args(src, tmp_path / "o1", cache, "--image-column", "picture")), capsys,
              "no image column 'picture'", "columns: id, image, question, extra")
    _one_line(main(_args(src, tmp_path / "o2", cache, "--id-column", "key")), capsys, "no id column 'key'")
    _one_line(main(_args(src, tmp_path / "o3", cache, "--question-column", "prompt")), capsys,
              "no question column 'prompt'", "--question")
    _one_line(main(_args(src, tmp_path / "o4", cache, "--split", "test")), capsys, "no split 'test'", "train")
    empty = _hub_layout(tmp_path / "empty", [], shards=1)
    capsys.readouterr()  # the fixture's own progress bars
    _one_line(main(_args(empty, tmp_path / "o5", cache)), capsys, "has no rows")
    _one_line(main(_args(tmp_path / "missing", tmp_path / "o6", cache)), capsys, "no such file or folder")
    (tmp_path / "notes.txt").write_text("x")
    _one_line(main(_args(tmp_path / "notes.txt", tmp_path / "o7", cache)), capsys, "not a folder of images")
    (tmp_path / "mine" / "data").mkdir(parents=True)  # someone's own folder: refused even with --overwrite
    (tmp_path / "mine" / "data" / "keep.txt").write_text("mine")
    _one_line(main(_args(src, tmp_path / "mine", cache, "--overwrite")), capsys, "did not write")
    assert (tmp_path / "mine" / "data" / "keep.txt").read_text() == "mine"
    for argv in (["--batch-size", "0"], ["--workers", "-1"]):
        with pytest.raises(SystemExit) as exc:
            main(_args(src, tmp_path / "o8", cache, *argv))
        assert exc.value.code == 2
    capsys.readouterr()
    # per row: a row without a question but --question for it; an image over the pixel limit
    monkeypatch.setattr(adapt.images, "MAX_PIXELS", 40 * 32 - 1)
    assert main(_args(src, tmp_path / "o9", cache, "--question", "what is here?")) == 3
    t = _table(tmp_path / "o9")
    assert t["noq"]["question"] == "what is here?"
    assert all(r["status"] == "error" for r in t.values()) and "too large" in t["r0"]["error"]
    assert "not a readable image" in t["bad"]["error"]
    failed = [l for l in capsys.readouterr().out.splitlines() if l.startswith("failed:")]
    assert len(failed) == 8 and all(len(l.splitlines()) == 1 for l in failed)
    assert set(os.listdir(tmp_path)) - before - {"cache"} == {"o9", "empty", "notes.txt", "mine"}  # the refused: nothing


def test_the_pair_builder_makes_its_chosen_images_with_the_exporter(bb, tmp_path):
    """VAG-DPO's v_w is the export's anchor-guided image of the same (image, question), batched."""
    from adapt.export import ExportOptions, export_dataset, rows_source
    from adapt.train.data import PreferenceRecord
    from adapt.train.pairs import ListSource, build_pairs

    images = [_png(i) for i in range(3)]
    records = [PreferenceRecord(f"p{i}", Image.open(io.BytesIO(b)).convert("RGB"), Q, "a red circle", "a cat")
               for i, b in enumerate(images)]
    pairs = build_pairs(bb, ListSource(records), tmp_path / "pairs", "fixture", batch_size=2)
    export_dataset(bb, rows_source([{"file_name": f"p{i}.png", "image": b, "question": Q}
                                    for i, b in enumerate(images)]), tmp_path / "exp", opts=ExportOptions())
    exported = _table(tmp_path / "exp")
    assert [p["id"] for p in pairs.pairs] == ["p0", "p1", "p2"]
    for i, p in enumerate(pairs.pairs):
        mine = np.asarray(pairs.image(p, "enhanced"), dtype=int)
        theirs = np.asarray(Image.open(io.BytesIO(exported[f"p{i}"]["anchor_guided"]["bytes"])), dtype=int)
        assert np.abs(mine - theirs).max() <= 1 and np.abs(mine - np.asarray(records[i].image, dtype=int)).max() > 20


def test_stop_ends_an_export_between_batches_and_a_rerun_finishes_it(bb, tmp_path):
    """The app's Stop button: ``should_stop`` is read between batches; what is done is kept."""
    from adapt.export import ExportOptions, export_dataset, rows_source
    from app.batch import export_batch
    from app.knobs import Knobs

    rows = [{"file_name": f"x{i}.png", "image": _png(i), "question": Q} for i in range(6)]
    seen, checks = [], []
    r = export_dataset(bb, rows_source(rows), tmp_path / "out", opts=ExportOptions(batch_size=1, workers=1),
                       progress=lambda done, total, name: seen.append(name),
                       should_stop=lambda: checks.append(1) or len(checks) >= 2)  # Stop after the first window
    assert r.cancelled and r.ok == 4 and seen == ["x0.png", "x1.png", "x2.png", "x3.png"]
    again = export_dataset(bb, rows_source(rows), tmp_path / "out", opts=ExportOptions(batch_size=1))
    assert again.skipped == r.ok and again.ok == 6 - r.ok and len(_table(tmp_path / "out")) == 6
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "a.png").write_bytes(_png(1))
    _, report, _ = export_batch(bb, [str(tmp_path / "up" / "a.png")], Q, "", Knobs.defaults(),
                                should_stop=lambda: True)
    assert report == []  # stopped before the first batch: nothing reported as exported


def test_a_hub_id_and_a_save_to_disk_folder_export_as_parquet_does(bb, tmp_path, monkeypatch):
    """A Hub id goes through ``datasets.load_dataset(..., streaming=True)`` (faked here: no network in
    tests) and a ``save_to_disk`` folder is memory-mapped: both give the dataset parquet input gives."""
    import datasets
    from datasets import Features, Image as ImageF, IterableDataset, Value

    from adapt.export import ExportOptions, export_dataset, open_source

    rows = [{"id": f"h{i}", "image": {"bytes": _png(i), "path": None}, "question": Q, "extra": i} for i in range(3)]
    features = Features({"id": Value("string"), "image": ImageF(), "question": Value("string"),
                         "extra": Value("int64")})
    asked = []

    def fake(name, split=None, streaming=False, **kw):
        asked.append((name, split, streaming))
        return IterableDataset.from_generator(lambda: iter(rows), features=features)

    from datasets import Dataset

    Dataset.from_list(rows, features=features).save_to_disk(str(tmp_path / "disk"))  # a save_to_disk folder too
    monkeypatch.setattr(datasets, "load_dataset", fake)
    src = open_source("someone/some-set", split="train")
    assert src.kind == "hub" and src.num_rows is None and asked == [("someone/some-set", "train", True)]
    export_dataset(bb, src, tmp_path / "hub", opts=ExportOptions())
    export_dataset(bb, open_source(_hub_layout(tmp_path / "in", rows, shards=1)), tmp_path / "pq", opts=ExportOptions())
    export_dataset(bb, open_source(tmp_path / "disk"), tmp_path / "disk-out", opts=ExportOptions())
    _same(_table(tmp_path / "hub"), _table(tmp_path / "pq"))
    _same(_table(tmp_path / "disk-out"), _table(tmp_path / "pq"))
    assert "someone/some-set (train)" in (tmp_path / "hub" / "README.md").read_text()
