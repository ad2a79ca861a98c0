"""Every registered task through the runner, and the lmms-eval adapter's request handling, on every
registered family (tiny random checkpoints saved like hub folders: ``tests/families.py``, and LLaVA from
``adapt.testing``), with ``greedy`` and ``adapt-tf``: the records and summaries exist, count what was
asked, hold no NaN, rates stay in [0, 1], the questions reach the model as asked, grounding's maps cover
the image through the family's own geometry, and a continuation's log-probability equals generation's."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adapt.anchor import BiasCache
from adapt.backbones import FAMILIES, load_backbone
from adapt.config import AdaptConfig
from adapt.eval import grounding
from adapt.eval.runner import run_task
from adapt.eval.tasks import TASKS, get_task
from adapt.integrations.lmms_core import Answerer
from adapt.methods import get_method, get_methods
from adapt.testing import tiny_llava

from adapt.hooks import Views
from families import checkpoint

DATA = Path(__file__).parent / "data"
METHODS = ["greedy", "adapt-tf"]
# a short anchor (K = 2 of 6 tokens) and one noise image: ASI still monitors and may steer
CFG = AdaptConfig().replace(**{"anchor.k": 2, "anchor.num_noise": 1, "max_new_tokens": 6})
# items run per task (AMBER: its two generative queries and one yes/no query)
LIMIT = {"amber": 3}
# cropping processors leave pixels the model never saw (LLaVA's centre crop); the others see all of it
CROPS = {"llava"}
RATES = ("chair_s", "chair_i", "recall", "accuracy", "precision", "f1", "yes_ratio", "cover", "hal", "cog",
         "chance_acc", "chance_miou", "pope_random_acc", "pope_adversarial_acc", "fire_rate")


pytestmark = pytest.mark.usefixtures("one_thread")


def llava_checkpoint(path) -> str:
    path = Path(path)
    if not (path / "config.json").exists():
        model, processor = tiny_llava()
        model.save_pretrained(path)
        processor.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    root = tmp_path_factory.mktemp("family-checkpoints")
    folders = {"llava": llava_checkpoint(root / "llava")}
    folders.update({f: checkpoint(f, root / f) for f in FAMILIES if f != "llava"})
    assert set(folders) == set(FAMILIES)  # a new family gets a checkpoint here, or this test fails
    return {f: load_backbone(folders[f], dtype=torch.float32) for f in FAMILIES}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """The images the fixture files name: noise, so a random model's maps are not flat."""
    d = tmp_path_factory.mktemp("task-images")
    names = [f"COCO_val2014_000000000{i}.jpg" for i in (101, 202, 303)] + ["AMBER_1.jpg", "AMBER_2.jpg",
                                                                          "COCO_train2014_000000000101.jpg"]
    names += [f"fx{i:02d}.jpg" for i in range(8)]
    for k, name in enumerate(names):
        Image.fromarray((np.random.default_rng(k).random((24, 32, 3)) * 255).astype("uint8")).save(d / name)
    return d


def _params(task: str, images: Path, cache: BiasCache) -> dict:
    return {
        "world": dict(split="validation", limit=2, describe_tokens=6, batch_size=2),
        "world-grounding": dict(split="validation", scenes=1, config=CFG, cache=cache),
        "pope": dict(questions=[str(DATA / "pope" / "coco_pope_random.jsonl")], images=str(images), max_new_tokens=4),
        "chair-coco": dict(annotations=str(DATA / "coco" / "annotations"), images=str(images), sample=2,
                           max_new_tokens=6),
        "amber": dict(queries=str(DATA / "amber" / "query_all.json"), annotations=str(DATA / "amber" / "annotations.json"),
                      association=str(DATA / "amber" / "relation.json"), safe_words=str(DATA / "amber" / "safe_words.txt"),
                      images=str(images), max_new_tokens=6, yes_no_tokens=4),
        "refcoco": dict(items=str(DATA / "refcoco" / "items.jsonl"), images=str(images), config=CFG, cache=cache),
        "mmhal": dict(questions=str(DATA / "mmhal" / "response_template.json"), images=str(images), max_new_tokens=6),
    }[task]


def _numbers(x):
    if isinstance(x, dict):
        for v in x.values():
            yield from _numbers(v)
    elif isinstance(x, list):
        for v in x:
            yield from _numbers(v)
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        yield x


def test_every_task_is_covered():
    assert set(TASKS) == {"world", "world-grounding", "pope", "chair-coco", "amber", "refcoco", "mmhal"}


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_task_runs_on_family(family, task, backbones, images, tmp_path):
    bb = backbones[family]
    cache = BiasCache(tmp_path / "cache")
    limit = LIMIT.get(task, 2)
    out = tmp_path / "run"
    summary = run_task(bb, get_task(task, **_params(task, images, cache)), get_methods(METHODS, CFG, cache), out,
                       limit=limit)
    assert list(summary) == METHODS
    on_disk = json.loads((out / "summary.json").read_text())  # strict JSON would refuse NaN; so does this check
    assert all(math.isfinite(v) for v in _numbers(on_disk)), on_disk
    for m in METHODS:
        s = summary[m]
        assert s["n"] == limit, (m, s)
        for key in RATES:
            if s.get(key) is not None:
                assert 0.0 <= s[key] <= 1.0, (m, key, s[key])
        records = [json.loads(x) for x in (out / f"items-{m}.jsonl").read_text().splitlines()]
        assert len(records) == limit and len({r["id"] for r in records}) == limit
        assert all(math.isfinite(v) for v in _numbers(records))
        for r in records:
            infos = [r["info"]] + [p["info"] for p in r.get("pope", [])] if "info" in r else []
            for info in infos:
                assert 0 <= info["tokens"] <= 8, info  # the longest answer asked for: 8 tokens (world POPE)
                if m == "adapt-tf" and info["tokens"] > CFG.anchor.k:
                    assert info["monitored"] > 0 and 0 <= info["fired"] <= info["monitored"], info
        if task in ("world-grounding", "refcoco"):
            _check_grounding(bb, family, records, task, images)
    if task == "pope":  # the question reaches the model as asked: the records equal the method's own answers
        recs = [json.loads(x) for x in (out / "items-greedy.jsonl").read_text().splitlines()]
        qs = [json.loads(x) for x in (DATA / "pope" / "coco_pope_random.jsonl").read_text().splitlines()][:limit]
        own = get_method("greedy").answer_batch(bb, [Image.open(images / q["image"]) for q in qs],
                                                [q["text"] for q in qs], 4)
        assert [r["answer"] for r in recs] == [a.text for a in own]


def _check_grounding(bb, family, records, task, images):
    for r in records:
        assert set(r["picks"]) == set(grounding.MAP_SOURCES)
        assert all(0.0 <= p["iou"] <= 1.0 for p in r["picks"].values())
    if task != "refcoco":
        return
    # the record's grid is the one the model's processor gave this image, and through the family's geometry
    # every cell lands on the image (and every pixel on a cell, where nothing is cropped)
    items = [json.loads(x) for x in (DATA / "refcoco" / "items.jsonl").read_text().splitlines()]
    for r, it in zip(records, items):
        image = Image.open(images / it["image"])
        grid = bb.prepare(image, r["question"]).span.grid
        assert all(0 <= p["index"] < len(it["candidates"]) for p in r["picks"].values())
        if isinstance(grid, Views):  # several views: each view's pixels are checked in test_multiview.py
            assert r["grid"] == [[v.name, v.h, v.w, v.newline] for v in grid]
            continue
        assert tuple(r["grid"]) == grid
        cells = bb.input_geometry(image.size).to_image(np.arange(grid[0] * grid[1], dtype=float).reshape(grid))
        assert cells.shape == (image.size[1], image.size[0])
        seen = cells[np.isfinite(cells)]
        assert set(np.unique(seen).astype(int)) == set(range(grid[0] * grid[1])) or family in CROPS
        assert family in CROPS or seen.size == cells.size


# the lmms-eval adapter's request handling --------------------------------------------------------------

class Request:
    """What the adapter reads of lmms-eval's ``Instance``: its ``args``."""

    def __init__(self, *args):
        self.args = args


@pytest.mark.parametrize("family", list(FAMILIES))
def test_lmms_requests_on_family(family, backbones, images, tmp_path):
    bb = backbones[family]
    docs = {i: {"image": Image.open(images / f"fx{i:02d}.jpg").convert("RGB")} for i in range(3)}
    doc = lambda doc_id, task, split: docs[doc_id]  # noqa: E731
    visual = lambda d: [d["image"]]  # noqa: E731
    question = "what colour is the circle ?"
    for name in METHODS:
        method = get_method(name, CFG, BiasCache(tmp_path / "cache"))
        answerer = Answerer(bb, method, batch_size=2)
        reqs = [Request(f"<image>\n{question}", {"max_new_tokens": 6, "until": ["."]}, visual, i, "t", "test")
                for i in docs] + [Request(question, {"max_new_tokens": 6}, visual, 0, "t", "test")]
        got = answerer.generate_until(reqs, doc)
        own = method.answer_batch(bb, [d["image"] for d in docs.values()], [question] * 3, 6)
        assert got[:3] == [a.text.split(".")[0] for a in own] and got[3] == own[0].text
    # the log-probability of the greedy answer in one forward pass equals the one generation computed
    image = docs[0]["image"]
    prepared = bb.prepare(image, question)
    with torch.inference_mode():
        gen = bb.model.generate(**prepared.inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False,
                                output_logits=True, return_dict_in_generate=True)
    ids = gen.sequences[0, prepared.prompt_len:].tolist()
    expected = sum(float(torch.log_softmax(step[0].float(), -1)[i]) for step, i in zip(gen.logits, ids))
    # min_new_tokens may have held back an end token that the raw logits prefer
    argmax = all(int(step[0].argmax()) == i for step, i in zip(gen.logits, ids))
    lp, greedy = Answerer(bb, get_method("greedy")).continuation_logprob(image, question, ids)
    assert greedy == argmax and lp == pytest.approx(expected, abs=1e-4)
    other = [ids[0]] + [(i + 1) % len(bb.tokenizer) for i in ids[1:]]
    lp2, greedy2 = Answerer(bb, get_method("greedy")).continuation_logprob(image, question, other)
    assert not greedy2 and lp2 < lp - 1e-3
    # through a request: the context's "<image>" placeholder dropped, the text tokenized as the model reads it
    text = bb.tokenizer.decode(ids)
    [(lp3, greedy3)] = Answerer(bb, get_method("greedy")).loglikelihood(
        [Request(f"<image>\n{question}", text, visual, 0, "t", "test")], doc)
    assert (lp3, greedy3) == Answerer(bb, get_method("greedy")).continuation_logprob(
        image, question, bb.tokenizer(text, add_special_tokens=False)["input_ids"])
