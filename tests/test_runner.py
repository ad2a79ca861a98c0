"""The task runner: resume after an interruption, refusal of a changed configuration, the real-image tasks
on fixture data with scripted answers (hand-computed figures), the world task equal to the old
benchmark, a 2-process ``accelerate launch`` equal to one process, and ``python -m adapt score``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adapt.cli import main
from adapt.eval.formats import DataError
from adapt.eval.runner import Shard, run_task
from adapt.eval.tasks import get_task
from runner_helpers import NoBackbone, ScriptedMethod, Stop

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def images(tmp_path):
    """The fixture images the COCO/POPE/AMBER files name (plain colour squares)."""
    d = tmp_path / "images"
    d.mkdir()
    names = [f"COCO_val2014_000000000{i}.jpg" for i in (101, 202, 303)] + ["AMBER_1.jpg", "AMBER_2.jpg"]
    for k, n in enumerate(names):
        Image.fromarray(np.full((24, 32, 3), 40 * k, np.uint8)).save(d / n)
    return d


POPE_ANSWERS = {"Is there a dog in the image?": "Yes.", "Is there a person in the image?": "There is no dog",
                "Is there a cat in the image?": "No, there is not.", "Is there a kite in the image?": "",
                "Is there an elephant in the image?": "I cannot tell", "Is there a bus in the image?": "Yes, there is a cat."}


def pope_task(images, parser="original"):
    return get_task("pope", questions=[str(DATA / "pope" / "coco_pope_random.jsonl")], images=str(images),
                    parser=parser)


def test_pope_task_resumes_after_an_interruption(tmp_path, images):
    out = tmp_path / "run"
    first = ScriptedMethod(lambda q, im: POPE_ANSWERS[q], stop_after=2)
    with pytest.raises(Stop):
        run_task(NoBackbone(), pope_task(images), [first], out, batch_size=2)
    lines = (out / "items-scripted.jsonl").read_text().splitlines()
    assert len(lines) == 4                       # two batches written before the stop
    with (out / "items-scripted.jsonl").open("a") as f:
        f.write('{"id": "random/5", "answ')       # a line torn by the interruption
    again = ScriptedMethod(lambda q, im: POPE_ANSWERS[q])
    summary = run_task(NoBackbone(), pope_task(images), [again], out, batch_size=2)
    assert again.asked == ["Is there an elephant in the image?", "Is there a bus in the image?"]
    s = summary["scripted"]
    # original parser: preds y n n y y y vs labels y y n n y n (hand-computed in test_metrics_benchmarks)
    assert (s["accuracy"], s["precision"], s["recall"], s["yes_ratio"], s["n"]) == \
        (pytest.approx(0.5), pytest.approx(0.5), pytest.approx(2 / 3), pytest.approx(4 / 6), 6)
    run = json.loads((out / "run.json").read_text())
    assert run["task"] == "pope" and run["methods"] == ["scripted"] and len(run["config_hash"]) == 16
    assert run["config"]["task_params"]["parser"] == "original" and "commit" in run and "model_revision" in run
    assert "| accuracy | 0.5000 |" in (out / "summary.md").read_text()
    assert (out / "summary.csv").read_text().splitlines()[0] == "metric,scripted"


def test_a_changed_configuration_is_refused(tmp_path, images):
    out = tmp_path / "run"
    run_task(NoBackbone(), pope_task(images), [ScriptedMethod(lambda q, im: "Yes")], out)
    with pytest.raises(DataError, match="another configuration"):
        run_task(NoBackbone(), pope_task(images, parser="strict"), [ScriptedMethod(lambda q, im: "Yes")], out)


def test_shards_split_the_items_and_the_main_one_merges(tmp_path, images):
    out = tmp_path / "run"
    m1 = ScriptedMethod(lambda q, im: POPE_ANSWERS[q])
    # shard 1 first (it returns at once), then shard 0, which finds shard 1's marker and merges; in one
    # process the start barrier has nobody to wait for, so it is stubbed
    import adapt.eval.runner as runner
    runner._barrier, saved = (lambda: None), runner._barrier
    try:
        assert run_task(NoBackbone(), pope_task(images), [m1], out, shard=Shard(1, 2)) is None
        m0 = ScriptedMethod(lambda q, im: POPE_ANSWERS[q])
        summary = run_task(NoBackbone(), pope_task(images), [m0], out, shard=Shard(0, 2))
    finally:
        runner._barrier = saved
    assert len(m1.asked) == len(m0.asked) == 3          # items 1, 3, 5 and 0, 2, 4
    assert summary["scripted"]["accuracy"] == pytest.approx(0.5)
    ids = [json.loads(x)["id"] for x in (out / "items-scripted.jsonl").read_text().splitlines()]
    assert ids == [f"random/{i}" for i in range(1, 7)] and not list(out.glob("*.shard-*.jsonl"))


def test_chair_coco_task_writes_its_sample_and_scores(tmp_path, images):
    caps = {0: "A man and a dog next to two hot dogs and a cat.",
            40: "A toilet seat and a sink. The seat of the toilet is open.", 80: "A baby elephant and an elephant."}
    task = get_task("chair-coco", annotations=str(DATA / "coco" / "annotations"), images=str(images), sample=500)
    m = ScriptedMethod(lambda q, im: caps[int(np.asarray(im)[0, 0, 0])])
    s = run_task(NoBackbone(), task, [m], tmp_path / "run")["scripted"]
    assert m.asked == ["Please describe this image in detail."] * 3
    assert (tmp_path / "run" / "sample_ids.txt").read_text() == "101\n202\n303\n"
    assert (s["chair_i"], s["chair_s"], s["recall"]) == (pytest.approx(3 / 9), pytest.approx(2 / 3), pytest.approx(0.8))
    ids = tmp_path / "ids.txt"
    ids.write_text("303\n")
    task = get_task("chair-coco", annotations=str(DATA / "coco" / "annotations"), images=str(images), ids_file=str(ids))
    s = run_task(NoBackbone(), task, [ScriptedMethod(lambda q, im: "An elephant.")], tmp_path / "run2")["scripted"]
    assert (s["n"], s["chair_i"], s["recall"]) == (1, 0.0, 1.0)


def test_amber_task_scores_both_halves(tmp_path, images):
    d = DATA / "amber"
    responses = {r["id"]: r["response"] for r in json.loads((d / "responses.json").read_text())}
    queries = {(q["image"], q["query"]): q["id"] for q in json.loads((d / "query_all.json").read_text())}
    shade = {0: "COCO", 120: "AMBER_1.jpg", 160: "AMBER_2.jpg"}
    task = get_task("amber", queries=str(d / "query_all.json"), annotations=str(d / "annotations.json"),
                    association=str(d / "relation.json"), safe_words=str(d / "safe_words.txt"), images=str(images))
    m = ScriptedMethod(lambda q, im: responses[queries[(shade[int(np.asarray(im)[0, 0, 0])], q)]])
    s = run_task(NoBackbone(), task, [m], tmp_path / "run")["scripted"]
    assert (s["chair"], s["cover"], s["hal"], s["cog"]) == (0.25, 0.75, 0.5, pytest.approx(1 / 3))
    assert (s["accuracy"], s["f1"], s["amber_score"]) == (0.5, 0.5, pytest.approx(0.625))


def test_missing_image_is_one_readable_error(tmp_path):
    task = get_task("pope", questions=[str(DATA / "pope" / "coco_pope_random.jsonl")], images=str(tmp_path))
    with pytest.raises(DataError, match=r"COCO_val2014_000000000101.jpg: .*no such file"):
        run_task(NoBackbone(), task, [ScriptedMethod(lambda q, im: "Yes")], tmp_path / "run")


# --- the world and the embedded model ------------------------------------------------------------------

def _summary(path):
    s = json.loads(Path(path).read_text())
    for m in s.values():  # timings differ between runs
        m.pop("seconds_per_item", None)
        m.pop("seconds_per_answer", None)
    return s


def test_world_task_equals_the_world_benchmark(tmp_path):
    args = ["eval", "--split", "test", "--limit", "3", "--method", "greedy,pai", "--threads", "1"]
    assert main(args + ["--benchmark", "world", "--out", str(tmp_path / "old")]) == 0
    assert main(args + ["--task", "world", "--out", str(tmp_path / "new")]) == 0
    old, new = _summary(tmp_path / "old" / "summary.json"), _summary(tmp_path / "new" / "summary.json")
    assert new == old and old["greedy"]["n"] == 3 and "chair_i_change_vs_greedy" in old["pai"]


def test_two_accelerate_processes_equal_one(tmp_path):
    base = ["eval", "--task", "world", "--split", "test", "--limit", "4", "--method", "greedy", "--threads", "1",
            "--batch-size", "2"]
    assert main(base + ["--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # accelerate's "--multi_gpu" launcher is torchrun: on a machine without GPUs it starts CPU processes
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "--main_process_port", "29531", "-m", "adapt", *base, "--out", str(tmp_path / "two")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "two" / "run.json").read_text())["processes"] == 2
    assert _summary(tmp_path / "two" / "summary.json") == _summary(tmp_path / "one" / "summary.json")
    one = [json.loads(x) for x in (tmp_path / "one" / "items-greedy.jsonl").read_text().splitlines()]
    two = [json.loads(x) for x in (tmp_path / "two" / "items-greedy.jsonl").read_text().splitlines()]
    assert [r["description"] for r in one] == [r["description"] for r in two]


# --- python -m adapt score -----------------------------------------------------------------------------

def test_score_pope_prints_and_writes(tmp_path, capsys):
    out = tmp_path / "m.json"
    assert main(["score", "pope", "--questions", str(DATA / "pope" / "splits.jsonl"), "--answers",
                 str(DATA / "pope" / "splits_answers.jsonl"), "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert (m["accuracy"], m["per_split"]["adversarial"]["yes_ratio"], m["extra"]) == (0.75, 1.0, 1)
    assert "1 answers to unknown questions" in capsys.readouterr().out


def test_score_chair_prints_and_writes(tmp_path):
    out = tmp_path / "c.json"
    assert main(["score", "chair", "--captions", str(DATA / "coco" / "captions.jsonl"), "--annotations",
                 str(DATA / "coco" / "annotations"), "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert (m["chair_s"], m["chair_i"], m["recall"]) == (pytest.approx(2 / 3), pytest.approx(1 / 3), 0.8)
    assert [p["image_id"] for p in m["per_image"]] == [101, 202, 303]


@pytest.mark.parametrize("argv, message", [
    (["score", "chair", "--captions", str(DATA / "coco" / "captions_bad.jsonl"), "--annotations",
      str(DATA / "coco" / "annotations")], "captions_bad.jsonl, line 2: not valid JSON"),
    (["score", "chair", "--captions", str(DATA / "coco" / "captions.jsonl"), "--annotations", "/nonexistent"],
     "/nonexistent: no such annotation folder"),
    (["score", "pope", "--questions", str(DATA / "pope" / "coco_pope_random.jsonl"), "--answers",
      str(DATA / "pope" / "answers_bad.jsonl")], "answers_bad.jsonl, line 2"),
    (["eval", "--task", "pope", "--questions", "missing.jsonl", "--images", "x", "--out", "/tmp/never"],
     "missing.jsonl: no such POPE question file"),
    (["eval", "--task", "chair-coco", "--out", "/tmp/never"], "task chair-coco needs --annotations"),
    (["eval", "--task", "nope", "--out", "/tmp/never"], "unknown task 'nope'"),
])
def test_user_errors_are_one_line_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1
