"""Tests of the synthetic world, its metrics and the embedded model (fast: < 60 s)."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from adapt.eval.metrics import chair, grounding_accuracy, iou, parse_yes_no, pope_metrics
from adapt.world import (
    CATEGORIES,
    IMAGE_SIZE,
    PAIRS,
    make_split,
    read_objects,
    training_example,
)
from adapt.world.datasets import scene_seed

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets" / "embedded"


# ---------------------------------------------------------------------------------- world
def test_deterministic_per_seed():
    a = make_split("test", 6, seed=3)
    b = make_split("test", 6, seed=3)
    assert [s.objects for s in a] == [s.objects for s in b]
    assert [s.description() for s in a] == [s.description() for s in b]
    assert np.array_equal(np.asarray(a[1].image()), np.asarray(b[1].image()))
    c = make_split("test", 6, seed=4)
    assert [s.objects for s in a] != [s.objects for s in c]


def test_splits_disjoint():
    seeds = {name: {s.seed for s in make_split(name, 50)} for name in ("train", "validation", "test")}
    assert not seeds["train"] & seeds["validation"]
    assert not seeds["train"] & seeds["test"]
    assert not seeds["validation"] & seeds["test"]
    assert scene_seed("test", 0, 1) != scene_seed("test", 0, 0)


def test_boxes_inside_and_disjoint():
    for s in make_split("train", 150) + make_split("test", 150):
        assert 1 <= len(s.objects) <= 9
        for o in s.objects:
            x0, y0, x1, y1 = o.box
            assert 0 <= x0 < x1 <= IMAGE_SIZE and 0 <= y0 < y1 <= IMAGE_SIZE
        for i, o in enumerate(s.objects):
            for p in s.objects[i + 1 :]:
                assert iou(o.box, p.box) == 0.0
                assert o.position != p.position
        im = s.image()
        assert im.size == (IMAGE_SIZE, IMAGE_SIZE) and im.mode == "RGB"


def test_trap_scenes_and_prior():
    test = make_split("test", 40)
    traps = [s for s in test if s.is_trap]
    assert len(traps) == 20
    for s in traps:
        assert s.absent_partners, s
        assert any(c in PAIRS for c in s.categories)
    train = make_split("train", 600)
    with_a = [s for s in train for a in PAIRS if a in s.categories]
    both = [s for s in train for a, b in PAIRS.items() if a in s.categories and b in s.categories]
    assert len(both) / len(with_a) > 0.8  # strong co-occurrence prior in training


def test_descriptions_mention_exactly_the_objects():
    for s in make_split("test", 60):
        truth = Counter(o.category for o in s.objects)
        for k in range(3):
            text = s.description(random.Random(k))
            assert Counter(read_objects(text)) == truth, text


def test_read_objects_synonyms_plurals_order():
    text = "a red disk at the top, two blocks, a crescent and three pluses; a rhombus, donuts."
    assert read_objects(text) == ["circle", "square", "moon", "cross", "diamond", "ring"]
    assert read_objects("nothing here") == []


def test_pope_sets_balanced_and_adversarial_partners():
    absent_partner_seen = 0
    for s in make_split("test", 40):
        present = set(s.categories)
        for kind in ("random", "popular", "adversarial"):
            qs = s.pope_questions(kind)
            labels = Counter(q["label"] for q in qs)
            assert labels["yes"] == labels["no"] >= 1
            for q in qs:
                assert (q["category"] in present) == (q["label"] == "yes")
                assert q["question"].startswith("is there")
        adv = [q for q in s.pope_questions("adversarial") if q["label"] == "no"]
        if s.absent_partners:
            assert all(q["category"] in s.absent_partners for q in adv)
            absent_partner_seen += 1
    assert absent_partner_seen >= 20


def test_grounding_items():
    for s in make_split("validation", 20):
        for it in s.grounding_items():
            assert it["box"] == list(s.objects[it["target"]].box)
            assert it["box"] in it["candidates"]
            assert it["category"] in it["expression"]


def test_training_examples_tokenize_without_unknowns():
    from adapt.world.model import build_tokenizer

    tok = build_tokenizer()
    rng = random.Random(0)
    kinds = Counter()
    for s in make_split("train", 60):
        for _ in range(4):
            q, a, k = training_example(s, rng)
            kinds[k] += 1
            assert tok.unk_token_id not in tok(q + " " + a)["input_ids"], (q, a)
    assert set(kinds) == {"describe", "exist", "attribute"}


def test_training_conversations_match_the_chat_template_and_label_only_answers():
    from adapt.world import read_objects, training_conversation
    from adapt.world.model import build_tokenizer
    from adapt.world.train import encode_conversation

    tok = build_tokenizer()
    image_id = tok.convert_tokens_to_ids("<image>")
    rng = random.Random(3)
    for s in make_split("train", 30):
        turns = training_conversation(s, rng, turns=5)
        assert 1 <= len(turns) <= 5
        exist = [read_objects(q)[0] for q, _ in turns if q.startswith(("is there", "does the", "can you"))]
        assert len(exist) == len(set(exist))  # no category is asked about twice
        ids, labels = encode_conversation(tok, image_id, 64, turns)
        msgs = []
        for k, (q, a) in enumerate(turns):
            msgs.append({"role": "user", "content": ([{"type": "image"}] if k == 0 else []) + [{"type": "text", "text": q}]})
            msgs.append({"role": "assistant", "content": [{"type": "text", "text": a}]})
        full = tok(tok.apply_chat_template(msgs, tokenize=False), add_special_tokens=False)["input_ids"]
        i = full.index(image_id)
        assert ids == full[:i] + [image_id] * 64 + full[i + 1:]
        answers = tok.decode([t for t in labels if t != -100], skip_special_tokens=True)
        assert answers.split() == " ".join(a for _, a in turns).split()
        assert labels.count(tok.eos_token_id) == len(turns)


# -------------------------------------------------------------------------------- metrics
def test_diagnosis_separation_is_the_roc_auc():
    from adapt.eval.diagnose import separation

    correct = np.array([0.6, 0.5, 0.4])
    assert separation(correct, np.array([0.1, 0.2]), side=-1) == 1.0  # every hallucination lower: perfect
    assert separation(correct, np.array([0.1, 0.2]), side=1) == 0.0
    # 0.45 is below 2 of 3 correct values, 0.5 below 1 and tied with 1 → (2 + 1.5) / 6
    assert separation(correct, np.array([0.45, 0.5]), side=-1) == pytest.approx(3.5 / 6)
    assert separation(correct, np.array([]), side=-1) is None


def test_chair_i_change_with_a_paired_bootstrap_interval():
    from adapt.eval.metrics import chair_i_change

    truths = [["circle"]] * 4
    base = [["circle", "star"]] * 4  # CHAIR_i 0.5 on every image
    same = chair_i_change(base, base, truths)
    assert same == {"change": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    fixed = chair_i_change(base, [["circle"]] * 4, truths)  # every hallucination gone
    assert fixed == {"change": -1.0, "ci_low": -1.0, "ci_high": -1.0}
    # half the images fixed: CHAIR_i 0.5 -> 2/6; resamples spread around it
    half = chair_i_change(base, [["circle"], ["circle"], ["circle", "star"], ["circle", "star"]], truths)
    assert half["change"] == pytest.approx(2 / 6 / 0.5 - 1)
    assert -1.0 <= half["ci_low"] < half["change"] < half["ci_high"] <= 0.0
    assert chair_i_change([["circle"]] * 4, base, truths)["change"] is None  # nothing to change from
    with pytest.raises(ValueError):
        chair_i_change(base, base[:3], truths)


def test_chair_hand_made():
    m = chair([["star", "moon"], ["circle"], []], [["star"], ["circle", "square"], ["ring"]])
    assert m["chair_s"] == pytest.approx(1 / 3)
    assert m["chair_i"] == pytest.approx(1 / 3)  # 1 hallucinated of 3 mentioned
    assert m["recall"] == pytest.approx(2 / 4)
    assert m["n"] == 3
    # repeats count once per response
    assert chair([["star", "star", "moon"]], [["star"]])["chair_i"] == pytest.approx(0.5)


def test_pope_metrics_and_parsing():
    assert parse_yes_no("Yes, there is a star.") == "yes"
    assert parse_yes_no("no.") == "no"
    assert parse_yes_no("there is not a star") == "no"
    assert parse_yes_no("yes. no idea") == "yes"  # only the first sentence counts
    assert parse_yes_no("No, there is no moon.") == "no"
    m = pope_metrics(["yes", "yes", "no", "no", "yes"], ["yes", "no", "no", "yes", "yes"])
    assert m["acc"] == pytest.approx(3 / 5)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["yes_ratio"] == pytest.approx(3 / 5)


def test_iou():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (10, 10, 20, 20)) == 0.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    g = grounding_accuracy([(0, 0, 10, 10), (0, 0, 4, 4)], [(0, 0, 10, 10), (0, 0, 10, 10)])
    assert g["acc"] == 0.5 and g["mean_iou"] == pytest.approx((1 + 0.16) / 2)


# ---------------------------------------------------------------------------------- model
def test_tiny_training_lowers_loss_and_embeds_path_matches():
    import torch

    from adapt.world.model import ModelSpec, build_model, build_processor, build_tokenizer
    from adapt.world.train import normalise, render_pool, train_language, vision_features

    torch.manual_seed(0)
    spec = ModelSpec(vision_hidden=32, vision_layers=1, vision_heads=2, vision_mlp=64,
                     text_hidden=64, text_layers=2, text_heads=4, text_kv_heads=2, text_mlp=128)
    tok = build_tokenizer()
    proc = build_processor(tok, spec)
    model = build_model(tok, spec, seed=0)
    scenes = make_split("train", 16)
    imgs, _, _ = render_pool(scenes, spec.patch_size)
    px = normalise(imgs, proc)
    ref = proc.image_processor(images=[scenes[0].image()], return_tensors="pt")["pixel_values"]
    assert torch.allclose(ref, px[:1], atol=1e-4)
    feats = vision_features(model, px)
    assert feats.shape == (16, 64, 32)
    hist = train_language(model, tok, scenes, feats, steps=40, batch=8, lr=5e-3, seed=0, log=lambda *_: None)
    assert sum(hist[-5:]) / 5 < sum(hist[:5]) / 5 - 0.5

    # the cached-feature training path equals the ordinary pixel path of the model
    from adapt.world.quality import chat_prompt

    text = chat_prompt(proc, "describe the image in detail.")
    assert text == "<s>user: <image> describe the image in detail. assistant:"
    inputs = proc(images=scenes[0].image(), text=text, return_tensors="pt")
    with torch.no_grad():
        a = model(**inputs).logits
        ids = inputs["input_ids"]
        x = model.get_input_embeddings()(ids)
        img = model.model.multi_modal_projector(feats[:1])
        x = x.masked_scatter((ids == model.config.image_token_id).unsqueeze(-1), img)
        b = model(inputs_embeds=x, attention_mask=inputs["attention_mask"]).logits
    assert torch.allclose(a, b, atol=1e-4)
    assert int((ids == model.config.image_token_id).sum()) == 64


@pytest.mark.skipif(not (ASSETS / "config.json").exists(), reason="assets/embedded not present")
def test_shipped_model_loads_offline_and_describes():
    code = r"""
import json, torch
torch.set_num_threads(2)
from transformers import AutoProcessor, LlavaForConditionalGeneration, LlavaProcessor
from adapt.world import make_split, read_objects
path = "assets/embedded"
model = LlavaForConditionalGeneration.from_pretrained(path).eval()
proc = LlavaProcessor.from_pretrained(path)
proc2 = AutoProcessor.from_pretrained(path)
assert type(proc2).__name__ == "LlavaProcessor"
cfg = model.config
assert cfg.vision_feature_select_strategy == "default"
assert cfg.text_config.num_hidden_layers >= 4
assert cfg.text_config.num_key_value_heads < cfg.text_config.num_attention_heads
scenes = make_split("test", 4, seed=0)
hits = total = 0
n_img = None
for s in scenes:
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe the image in detail."}]}]
    text = proc.apply_chat_template(msgs, add_generation_prompt=True)
    inputs = proc(images=s.image(), text=text, return_tensors="pt")
    n_img = int((inputs["input_ids"] == cfg.image_token_id).sum())
    out = model.generate(**inputs, max_new_tokens=120, do_sample=False)
    said = set(read_objects(proc.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)))
    hits += len(said & set(s.categories)); total += len(set(s.categories))
print(json.dumps({"recall": hits / total, "n_img": n_img, "dtype": str(model.dtype)}))
"""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["n_img"] == 64
    assert res["recall"] >= 0.75, res


def test_sweep_selection_rule_and_one_small_run(tmp_path):
    from adapt.eval.sweep import Setting, collect, frontier, pareto, run_settings, select, write

    rows = [{"chair_i": 0.08, "time_ratio": 1.0}, {"chair_i": 0.05, "time_ratio": 1.2},
            {"chair_i": 0.06, "time_ratio": 1.3}, {"chair_i": 0.04, "time_ratio": 2.0}]
    assert pareto(rows) == [rows[0], rows[1], rows[3]]  # rows[2] is beaten by rows[1] on both
    g = {"method": "greedy", "chair_i": 0.08, "recall": 0.90, "uses_anchor": False, "ci_high": None}

    def row(chair_i, recall, ci_high, uses_anchor=True):
        return {"method": "adapt-tf", "chair_i": chair_i, "recall": recall, "ci_high": ci_high,
                "uses_anchor": uses_anchor}

    table = [g, row(0.04, 0.85, -0.3),  # lowest, but costs 5 recall points
             row(0.05, 0.89, 0.01),  # within budget, but its interval crosses zero
             row(0.06, 0.885, -0.05),  # the one the rule picks
             row(0.07, 0.90, -0.02),
             row(0.03, 0.90, -0.5, uses_anchor=False)]  # better, but PAI-like: never the ADAPT pick
    assert select(table) is table[3]
    assert select(table, uses_anchor=False) is table[5]
    assert select([g, row(0.09, 0.90, 0.2)]) is None  # more hallucination than greedy
    assert select([g, row(0.079, 0.899, 0.05)]) is None  # lower, but not distinguishable from noise
    assert frontier([{"chair_i": 0.05, "recall": 0.9}, {"chair_i": 0.06, "recall": 0.89},
                     {"chair_i": 0.04, "recall": 0.8}]) == [{"chair_i": 0.05, "recall": 0.9},
                                                             {"chair_i": 0.04, "recall": 0.8}]
    if not (ASSETS / "config.json").exists():
        pytest.skip("assets/embedded not present")
    from adapt.anchor import BiasCache
    from adapt.backbones import load_backbone

    settings = [Setting("lp", "adapt-tf", {"asi.operator": "logprior", "asi.alpha": 0.25}),
                Setting("ma", "adapt-tf", {"asi.operator": "mass-aware", "asi.trigger": "always"}),
                Setting("pai", "pai", {})]
    bb = load_backbone("embedded")
    for shard in ((0, 2), (1, 2)):  # two shards write one sweep
        run_settings(bb, tmp_path / "sweep", settings, seeds=[1, 2], per_seed=2, cache=BiasCache(tmp_path / "c"),
                     shard=shard)
    out = collect(tmp_path / "sweep", settings)
    assert [r["name"] for r in out] == ["greedy", "lp", "ma", "pai"]
    assert all(r["n"] == 4 for r in out)
    assert [r["uses_anchor"] for r in out] == [False, True, True, False]
    assert out[2]["fire_rate"] == 1.0 and out[1]["fire_rate"] is not None and out[3]["fire_rate"] is None
    for r in out[1:]:  # each setting's time against greedy's, not greedy's against itself
        assert r["time_ratio"] == pytest.approx(r["seconds_per_item"] / out[0]["seconds_per_item"])
    result = write(tmp_path / "sweep", out, {"seeds": [1, 2]})
    assert "recall is at most" in result["rule"] and (tmp_path / "sweep" / "sweep.png").exists()
