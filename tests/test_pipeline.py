"""One analysis → one Trace; the Trace round-trips; the CLI and the export work end to end."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adapt.anchor import BiasCache
from adapt.backbones import LlavaBackbone
from adapt.cli import main
from adapt.config import AdaptConfig
from adapt.pipeline import analyse
from adapt.testing import tiny_llava
from adapt.trace import Trace


@pytest.fixture(scope="module")
def tiny():
    return LlavaBackbone(*tiny_llava(layers=3), "tiny")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_model")
    model, proc = tiny_llava(layers=3)
    model.save_pretrained(d)
    proc.save_pretrained(d)
    return d


def test_analyse_fills_every_part_of_the_trace(tiny, rand_image, tmp_path):
    cfg = AdaptConfig().replace(**{"max_new_tokens": 12, "anchor.k": 5})  # K inside the 12 steps
    cache = BiasCache(tmp_path)
    t = analyse(tiny, rand_image, "describe the image", cfg, bias_cache=cache)
    L, (h, w) = 3, t.grid
    assert t.layer_maps.shape == (L, h, w) and t.lam.shape == (L,) and t.lam.sum() == pytest.approx(1, abs=1e-5)
    assert set(t.scores) == {"spec", "smooth", "focus", "fused"}
    for m in (t.fused, t.bias, t.debias_mask, t.anchor):
        assert m.shape == (h, w) and m.sum() == pytest.approx(1, abs=1e-5)
    assert t.enhanced_image.size == rand_image.size
    for a in (t.unsteered, t.steered):
        T = len(a.token_ids)
        assert a.maps.shape == (T, L, h * w) and a.amc.shape == (T, L) and a.steered.shape == (T, L)
        assert a.similarity.shape == a.change.shape == a.mass.shape == (T, L)
        assert np.all(a.change[0] == 0) and np.all((a.mass > 0) & (a.mass <= 1 + 1e-6))
    # the image mass is the post-softmax mass eager attention gives (same weights), at the first step
    # (never steered) of both answers
    eager_bb = LlavaBackbone(*tiny_llava(layers=3, attn="eager"), "tiny-eager")
    p = tiny.prepare(rand_image, "describe the image")
    with torch.no_grad():
        att = eager_bb.model(**p.inputs, output_attentions=True).attentions
    pos = p.span.positions[0]
    eager = np.array([float(a[0, :, -1, pos].sum(-1).mean()) for a in att])
    assert eager.min() < 0.9  # not a trivial all-image row
    for a in (t.unsteered, t.steered):
        np.testing.assert_allclose(a.mass[0], eager, rtol=1e-5)
    assert not t.unsteered.steered.any() and t.steered.image_used == "original"  # enhance.enabled is off
    on = analyse(tiny, rand_image, "describe the image", cfg.replace(**{"enhance.enabled": True}), bias_cache=cache)
    assert on.steered.image_used == "enhanced" and np.array_equal(np.asarray(on.enhanced_image),
                                                                  np.asarray(t.enhanced_image))
    # the K anchor steps of the unsteered run are A_l
    np.testing.assert_allclose(t.layer_maps.reshape(L, -1), t.unsteered.maps[:cfg.anchor.k].mean(0), rtol=1e-5)
    assert not t.bias_cache_hit
    again = analyse(tiny, rand_image, "describe the image", cfg, bias_cache=cache)
    assert again.bias_cache_hit and np.allclose(again.bias, t.bias)


def test_steering_off_equals_plain_answer(tiny, rand_image):
    cfg = AdaptConfig().replace(**{"enhance.enabled": False, "asi.trigger": "amc", "asi.tau": 0.0,
                                   "max_new_tokens": 10})
    t = analyse(tiny, rand_image, "describe the image", cfg)
    assert t.steered.token_ids == t.unsteered.token_ids and t.steered.num_interventions == 0
    np.testing.assert_allclose(t.steered.maps, t.unsteered.maps, rtol=1e-5, atol=1e-7)
    # τ = 0 can never fire (AMC < 0·S_ref); a trigger that fires after the anchor phase must show
    # in the same comparison, or the one above proves nothing
    fires = analyse(tiny, rand_image, "describe the image", cfg.replace(**{"asi.tau": 100.0, "asi.alpha": 2.0}))
    assert fires.steered.num_interventions > 0
    assert not np.allclose(fires.steered.maps, fires.unsteered.maps, rtol=1e-5, atol=1e-7)


def test_trace_round_trips(tiny, rand_image, tmp_path):
    t = analyse(tiny, rand_image, "is there a star?", AdaptConfig().replace(max_new_tokens=8),
                meta={"objects": ["star"]})
    path = t.save(tmp_path / "t.zip")
    back = Trace.load(path)
    assert back.question == t.question and back.grid == t.grid and back.meta == {"objects": ["star"]}
    assert back.config == t.config and back.asi_layers == t.asi_layers
    for name in ("layer_maps", "lam", "fused", "bias", "debias_mask", "anchor", "threshold"):
        np.testing.assert_array_equal(getattr(back, name), getattr(t, name))
    for k in t.scores:
        np.testing.assert_array_equal(back.scores[k], t.scores[k])
    for a, b in ((back.unsteered, t.unsteered), (back.steered, t.steered)):
        assert a.text == b.text and a.tokens == b.tokens and a.token_ids == b.token_ids
        np.testing.assert_array_equal(a.maps, b.maps)
        np.testing.assert_array_equal(a.steered, b.steered)
    assert np.asarray(back.image).tobytes() == np.asarray(t.image).tobytes()
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not an adapt trace"):
        Trace.load(tmp_path / "bad.zip")


def test_cli_run_writes_trace_and_images(tiny_dir, rand_image, tmp_path, capsys):
    rand_image.save(tmp_path / "in.png")
    code = main(["run", "--backbone", str(tiny_dir), "--image", str(tmp_path / "in.png"), "--question",
                 "describe the image", "--out", str(tmp_path / "out"), "--max-new-tokens", "8",
                 "--cache-dir", str(tmp_path / "cache")])
    out = capsys.readouterr().out
    assert code == 0 and "unsteered:" in out and "ADAPT-TF:" in out and "interventions" in out
    assert Trace.load(tmp_path / "out" / "trace.zip").grid == (4, 4)
    assert Image.open(tmp_path / "out" / "enhanced.png").size == rand_image.size


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    code = main(["run", "--image", str(tmp_path / "broken.png"), "--question", "q", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and "not a readable image" in err
    code = main(["run", "--backbone", str(tmp_path / "missing"), "--image", str(tmp_path / "broken.png"),
                 "--question", "q", "--out", str(tmp_path)])
    assert code == 2


def test_export_anchors_reports_bad_files_and_resumes(tiny_dir, rand_image, tmp_path, capsys):
    src = tmp_path / "imgs"
    src.mkdir()
    rand_image.save(src / "a.png")
    rand_image.rotate(90, expand=True).save(src / "b.jpg")
    (src / "c.png").write_bytes(b"corrupt")
    rand_image.resize((2600, 300)).save(src / "d.png")  # wider than MAX_SIDE: the model reads a smaller copy
    args = ["export-anchors", "--backbone", str(tiny_dir), "--input", str(src), "--question", "describe the image",
            "--out", str(tmp_path / "exp"), "--overlays", "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 3  # one bad file
    lines = [json.loads(l) for l in (tmp_path / "exp" / "manifest.jsonl").read_text().splitlines()]
    status = {l["id"]: l["status"] for l in lines}
    assert status == {"a": "ok", "b": "ok", "c": "error", "d": "ok"}
    for name in ("b.jpg", "d.png"):  # exported at the original's size
        rec = next(l for l in lines if l["id"] == name.split(".")[0])
        assert Image.open(tmp_path / "exp" / rec["output"]).size == Image.open(src / name).size == tuple(rec["size"])
    b = next(l for l in lines if l["id"] == "b")
    assert (tmp_path / "exp" / b["overlay"]).exists()
    main(args)
    assert "exported 0, already done 4" in capsys.readouterr().out


def test_model_intrinsic_target_entropy_comes_from_the_question_tokens(tiny, rand_image):
    from adapt.anchor import entropy

    cfg = AdaptConfig().replace(**{"anchor.target_entropy": "model", "max_new_tokens": 6})
    t = analyse(tiny, rand_image, "what colour is the star ?", cfg)
    p = tiny.prepare(rand_image, "what colour is the star ?")
    g = tiny.generate(p, max_new_tokens=1, capture_prefill=True)
    expected = np.mean([entropy(m) for m in g.prefill_maps.numpy()])
    assert t.target_entropy == pytest.approx(expected, rel=1e-5)
    assert t.target_entropy != AdaptConfig().anchor.h_focused


def test_analyse_on_a_rectangular_qwen_grid(rand_image):
    from adapt.backbones import Qwen2_5_VLBackbone
    from adapt.testing import tiny_qwen2_5_vl

    bb = Qwen2_5_VLBackbone(*tiny_qwen2_5_vl(layers=2), "tiny-qwen")
    wide = rand_image.resize((150, 50))
    t = analyse(bb, wide, "describe the image", AdaptConfig().replace(max_new_tokens=6))
    h, w = t.grid
    assert h != w and t.anchor.shape == (h, w) and t.bias.shape == (h, w)
    assert t.steered.maps.shape[-1] == h * w and t.enhanced_image.size == wide.size


@pytest.mark.skipif(not (Path(__file__).resolve().parents[1] / "assets/embedded/config.json").exists(),
                    reason="assets/embedded not present")
def test_cli_on_the_embedded_model(tmp_path, capsys):
    """run, eval and diagnose through the command line on the shipped model and world scenes."""
    from adapt.world import make_split

    scene = make_split("test", 2)[1]
    scene.image().save(tmp_path / "scene.png")
    cache = ["--cache-dir", str(tmp_path / "cache"), "--threads", "1"]
    assert main(["run", "--image", str(tmp_path / "scene.png"), "--question", "describe the image in detail.",
                 "--out", str(tmp_path / "run"), "--max-new-tokens", "48", *cache]) == 0
    out = capsys.readouterr().out
    assert "grid 8x8, 6 layers" in out and "ADAPT-TF:" in out
    assert Trace.load(tmp_path / "run" / "trace.zip").anchor.shape == (8, 8)

    assert main(["eval", "--split", "test", "--limit", "2", "--method", "greedy,adapt-tf", "--out",
                 str(tmp_path / "eval"), *cache]) == 0
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    for method in ("greedy", "adapt-tf"):
        s = summary[method]
        assert s["n"] == 2 and 0 <= s["chair_i"] <= 1 and 0 <= s["pope_random_acc"] <= 1
        assert {"pope_adversarial_f1", "yes_ratio", "trap_chair_i", "nontrap_chair_i", "seconds_per_item"} <= set(s)
    assert {"chair_i_change_vs_greedy", "chair_i_change_vs_greedy_ci_low"} <= set(summary["adapt-tf"])
    assert "chair_i_change_vs_greedy" not in summary["greedy"]

    assert main(["diagnose", "--limit", "3", "--out", str(tmp_path / "diag"), *cache]) == 0
    diag = json.loads((tmp_path / "diag" / "diagnosis.json").read_text())
    rows = [json.loads(l) for l in (tmp_path / "diag" / "mentions.jsonl").read_text().splitlines()]
    assert diag["correct"]["n"] + diag["hallucinated"]["n"] == len(rows) > 0
    for r in rows:
        assert 0 <= r["on_objects"] <= 1 and 0 < r["image_mass"] <= 1 and 0 <= r["would_steer"] <= 1
    assert all(v is None or 0 <= v <= 1 for v in diag["separation"].values())
    assert diag["anchor_first_density"] > 0 and "AUC halluc." in capsys.readouterr().out


def test_thread_policy_small_models_on_one_thread(tiny, monkeypatch):
    import torch

    from adapt import threads

    before = torch.get_num_threads()
    monkeypatch.delenv("ADAPT_TORCH_THREADS", raising=False)
    try:
        monkeypatch.delattr(tiny, "_adapt_threads", raising=False)
        assert threads.use_threads(tiny) == 1 == torch.get_num_threads()
        assert threads.use_threads(tiny, requested=2) == 2 and threads.use_threads(tiny) == 2  # remembered

        class Opaque:  # no parameters to count: treated as a large checkpoint
            __slots__ = ()

        assert threads.use_threads(Opaque()) == threads._DEFAULT_THREADS
        monkeypatch.setenv("ADAPT_TORCH_THREADS", "3")
        monkeypatch.delattr(tiny, "_adapt_threads")
        assert threads.use_threads(tiny) == 3
    finally:
        torch.set_num_threads(before)
