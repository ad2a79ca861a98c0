"""Grounding from the anchor (Table 3a): the scoring by hand, the refcoco task on RefCOCO-style items whose
images the processor centre-crops, the world's grounding items through the runner and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from adapt.anchor import BiasCache
from adapt.backbones import load_backbone
from adapt.cli import main
from adapt.eval import grounding, refcoco
from adapt.eval.runner import run_task
from adapt.eval.tasks import get_task
from adapt.methods import get_method
from adapt.world import make_split


@pytest.fixture(scope="module")
def one_thread():
    # the embedded model's ops are too small to split; two threads on a busy CPU only add waiting
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def embedded(one_thread):
    return load_backbone("embedded")


def test_box_mean_skips_cropped_pixels_and_a_box_outside_cannot_win():
    heat = np.full((10, 20), np.nan)
    heat[:, 5:15] = 0.0
    heat[2:4, 6:8] = 1.0
    assert refcoco.box_mean(heat, (0, 0, 8, 4)) == pytest.approx(4 / 12)  # 12 seen pixels, 4 of them hot
    assert refcoco.box_mean(heat, (0, 0, 4, 10)) == float("-inf")
    assert grounding.pick(heat, [(0, 0, 4, 10), (14, 0, 20, 10), (5, 1, 9, 5)]) == 2


def test_summary_by_hand():
    def rec(ious, chance):
        return {"picks": {k: {"index": 0, "iou": v} for k, v in ious.items()}, "chance": chance, "chance_iou": chance,
                "criterion_layers": {"spec": 1, "smooth": 2, "focus": 2}}

    recs = [rec({"anchor": 0.8, "last_layer": 0.4}, 0.25), rec({"anchor": 0.5, "last_layer": 0.6}, 0.5),
            rec({"anchor": 0.1, "last_layer": 0.0}, 0.0)]
    s = grounding.summarise(recs)
    assert s["acc_anchor"] == pytest.approx(2 / 3) and s["miou_anchor"] == pytest.approx(1.4 / 3)
    assert s["acc_last_layer"] == pytest.approx(1 / 3) and s["miou_last_layer"] == pytest.approx(1.0 / 3)
    assert s["chance_acc"] == pytest.approx(0.25) and s["layers_smooth"] == {2: 3} and s["n"] == 3
    assert "acc_spec" not in s  # no record has it


def test_candidate_maps_pick_each_criterions_own_layer():
    from adapt.anchor import Fusion
    from adapt.anchor.build import Anchor

    layers = np.arange(4 * 2 * 2, dtype=float).reshape(4, 2, 2)
    fusion = Fusion(scores={"spec": np.array([0, 3, 1, 2.]), "smooth": np.array([5, 0, 0, 0.]),
                            "focus": np.array([0, 0, 1, 9.]), "fused": np.zeros(4)}, lam=np.full(4, .25),
                    fused=np.eye(2))
    a = Anchor(layer_maps=layers, fusion=fusion, target_entropy=0.6, bias=None, debias_mask=None, anchor=-np.eye(2),
               cache_hit=False, seconds_bias=0.0)
    m = grounding.candidate_maps(a)
    assert np.array_equal(m["spec"], layers[1]) and np.array_equal(m["smooth"], layers[0])
    assert np.array_equal(m["focus"], layers[3]) and np.array_equal(m["last_layer"], layers[3])
    assert np.array_equal(m["fused"], np.eye(2)) and np.array_equal(m["anchor"], -np.eye(2))


def test_refcoco_task_on_centre_cropped_images_equals_the_world_items(tmp_path, embedded):
    """A world scene pasted in the middle of a 160 × 96 canvas: the embedded model's processor (shortest
    edge 96, centre crop 96) sees exactly the scene, so every map must pick what it picks on the scene
    itself once the boxes are shifted, and a decoy box in the cropped-away strip is never picked.

    Without noise images: they are made at the image's size, so the canvas's bias map B is not the
    scene's (the noise-map cache keys the size; it used to serve whichever size came first)."""
    from adapt.config import AdaptConfig

    cache = BiasCache(tmp_path / "cache")
    cfg = AdaptConfig().replace(**{"anchor.num_noise": 0})
    scenes = make_split("test", 3)
    lines, world_items = [], []
    for i, scene in enumerate(scenes):
        canvas = Image.new("RGB", (160, 96), "white")
        canvas.paste(scene.image(), (32, 0))
        canvas.save(tmp_path / f"s{i}.png")
        for g in scene.grounding_items():
            boxes = [[b[0] + 32, b[1], b[2] - b[0], b[3] - b[1]] for b in g["candidates"]]  # COCO x, y, w, h
            lines.append({"id": f"{i}/{g['target']}", "image": f"s{i}.png", "expression": g["expression"],
                          "candidates": boxes + [[0, 0, 30, 96]], "gold": g["target"]})
            world_items.append(g)
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    task = get_task("refcoco", items=str(tmp_path / "items.jsonl"), images=str(tmp_path),
                    prompt="where is {expression}?", config=cfg, cache=cache)
    method = get_method("greedy")
    recs = run_task(embedded, task, [method], tmp_path / "run")["greedy"]
    items = [json.loads(x) for x in (tmp_path / "run" / "items-greedy.jsonl").read_text().splitlines()]
    world = get_task("world-grounding", split="test", scenes=3, config=cfg, cache=cache)
    wrecs = world.run_batch(embedded, method, world.items())
    assert len(items) == len(wrecs) == len(world_items) >= 9
    for r, w in zip(items, wrecs):
        assert r["question"] == w["question"]
        for name in grounding.MAP_SOURCES:
            # equal picks also mean the decoy (index n_candidates) was never taken
            assert r["picks"][name] == w["picks"][name], (r["id"], name)
    for name in grounding.MAP_SOURCES:
        assert recs[f"acc_{name}"] == pytest.approx(grounding.summarise(wrecs)[f"acc_{name}"])
    # the decoy is a candidate a random pick could take: chance is lower than on the scene alone
    assert recs["chance_acc"] < grounding.summarise(wrecs)["chance_acc"]


def test_world_grounding_through_the_cli(tmp_path, capsys, one_thread):
    out = tmp_path / "wg"
    argv = ["eval", "--task", "world-grounding", "--split", "validation", "--scenes", "4", "--method", "greedy",
            "--threads", "1", "--out", str(out)]
    assert main(argv) == 0
    s = json.loads((out / "summary.json").read_text())["greedy"]
    n = sum(len(sc.grounding_items()) for sc in make_split("validation", 4))
    assert s["n"] == n and 0 <= s["acc_anchor"] <= 1 and s["chance_acc"] < 0.5
    assert "| acc_anchor |" in (out / "summary.md").read_text()
    recs = [json.loads(x) for x in (out / "items-greedy.jsonl").read_text().splitlines()]
    assert [r["id"] for r in recs] == [f"{i}/{g['target']}" for i, sc in enumerate(make_split("validation", 4))
                                       for g in sc.grounding_items()]
    assert main(argv) == 0  # a rerun resumes: nothing is answered twice
    assert len((out / "items-greedy.jsonl").read_text().splitlines()) == n


def test_refcoco_needs_its_items(capsys):
    assert main(["eval", "--task", "refcoco", "--images", "x", "--out", "/tmp/never"]) == 2
    err = capsys.readouterr().err
    assert "task refcoco needs --items" in err and err.count("\n") == 1


def test_refcoco_task_refuses_repeated_ids_and_a_prompt_without_the_expression(tmp_path):
    from adapt.eval.formats import DataError

    line = {"id": "a", "image": "x.png", "expression": "e", "candidates": [[0, 0, 2, 2]], "gold": 0}
    (tmp_path / "dup.jsonl").write_text(json.dumps(line) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(DataError, match="item ids repeat"):
        get_task("refcoco", items=str(tmp_path / "dup.jsonl"), images=str(tmp_path)).items()
    with pytest.raises(ValueError, match="{expression}"):
        get_task("refcoco", items=str(tmp_path / "dup.jsonl"), images=str(tmp_path), prompt="where?")
