"""One rule for every run folder (adapt/eval/rundir.py): the same configuration resumes without
answering again, another is refused with one line naming what differs, ``--overwrite`` redoes it."""

import json
from pathlib import Path

import pytest

import adapt.eval.diagnose as diagnose
import adapt.eval.world_bench as world_bench
from adapt.cli import main
from adapt.eval.rundir import RunDirError, differences, open_run, record
from adapt.eval.runner import run_task
from adapt.eval.tasks import get_task
from runner_helpers import NoBackbone, ScriptedMethod

DATA = Path(__file__).parent / "data"


@pytest.fixture
def answered(monkeypatch):
    """Counts the scenes the world benchmark answers (both ``--benchmark world`` and ``--task world``)."""
    count = {"scenes": 0}
    real = world_bench.evaluate_scenes

    def counting(backbone, method, scenes, *args, **kw):
        count["scenes"] += len(scenes)
        return real(backbone, method, scenes, *args, **kw)

    monkeypatch.setattr(world_bench, "evaluate_scenes", counting)
    return count


def _main(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = [l for l in capsys.readouterr().err.splitlines()
           if l.strip() and "Loading weights" not in l and "it/s]" not in l and "s/it]" not in l]
    return code, err


WORLD = ["eval", "--split", "validation", "--no-pope", "--max-new-tokens", "10", "--threads", "1"]


@pytest.mark.parametrize("mode", [["--benchmark", "world"], ["--task", "world"]])
def test_world_eval_resumes_refuses_and_overwrites(mode, tmp_path, answered, capsys):
    out = tmp_path / "run"
    first = WORLD + mode + ["--method", "greedy", "--limit", "2", "--out", str(out)]
    assert _main(first, capsys)[0] == 0 and answered["scenes"] == 2
    items = out / "items-greedy.jsonl"
    before, recorded = items.read_bytes(), json.loads((out / "run.json").read_text())["config"]

    # the same configuration (batch size and threads may change): nothing is answered again
    assert _main(first + ["--batch-size", "1"], capsys)[0] == 0
    assert answered["scenes"] == 2 and items.read_bytes() == before

    # another configuration: refused, named, nothing touched
    code, err = _main(WORLD + mode + ["--method", "greedy", "--limit", "3", "--out", str(out)], capsys)
    assert code == 2 and len(err) == 1, err
    assert "another configuration" in err[0] and "per_seed: 2 → 3" in err[0] and "--overwrite" in err[0]
    assert answered["scenes"] == 2 and items.read_bytes() == before
    assert json.loads((out / "run.json").read_text())["config"] == recorded  # run.json not rewritten

    # --overwrite: redone with the new configuration
    assert _main(WORLD + mode + ["--method", "greedy", "--limit", "3", "--out", str(out), "--overwrite"],
                 capsys)[0] == 0
    assert answered["scenes"] == 2 + 3
    assert len(items.read_text().splitlines()) == 3
    assert json.loads((out / "summary.json").read_text())["greedy"]["n"] == 3


def test_a_method_setting_is_named_with_its_old_and_new_value(tmp_path, answered, capsys):
    out = tmp_path / "run"
    base = WORLD + ["--method", "greedy,adapt-tf", "--limit", "1", "--out", str(out)]
    assert _main(base + ["--alpha", "0.5"], capsys)[0] == 0
    code, err = _main(base + ["--alpha", "0.25", "--max-new-tokens", "12"], capsys)
    assert code == 2 and len(err) == 1
    assert "methods.adapt-tf.asi.alpha: 0.5 → 0.25" in err[0] and "describe_tokens: 10 → 12" in err[0]
    code, err = _main(WORLD + ["--method", "greedy", "--limit", "1", "--out", str(out)], capsys)
    assert code == 2 and "methods.adapt-tf: " in err[0] and "→ absent" in err[0]


def test_answers_without_a_run_record_are_not_reused(tmp_path, answered, capsys):
    out = tmp_path / "run"
    argv = WORLD + ["--method", "greedy", "--limit", "1", "--out", str(out)]
    assert _main(argv, capsys)[0] == 0
    run = json.loads((out / "run.json").read_text())
    # what the previous version wrote: the configuration not recorded as a whole
    (out / "run.json").write_text(json.dumps({"benchmark": "world", "split": "validation", "methods": ["greedy"]}))
    code, err = _main(argv, capsys)
    assert code == 2 and len(err) == 1 and "does not record its configuration" in err[0]
    (out / "run.json").unlink()
    code, err = _main(argv, capsys)
    assert code == 2 and "items-greedy.jsonl" in err[0] and "no run.json" in err[0]
    (out / "notes.txt").write_text("the user's own file")
    assert _main(argv + ["--overwrite"], capsys)[0] == 0
    assert json.loads((out / "run.json").read_text())["config"] == run["config"]
    assert (out / "notes.txt").read_text() == "the user's own file"  # --overwrite removes only the run's files


def test_task_runner_refuses_another_limit_and_names_it(tmp_path):
    task = get_task("pope", questions=[str(DATA / "pope" / "coco_pope_random.jsonl")], images=str(tmp_path))
    for i in (101, 202, 303):
        from PIL import Image

        Image.new("RGB", (8, 8)).save(tmp_path / f"COCO_val2014_000000000{i}.jpg")
    out = tmp_path / "run"
    first = ScriptedMethod(lambda q, im: "Yes")
    run_task(NoBackbone(), task, [first], out, limit=2)
    again = ScriptedMethod(lambda q, im: "Yes")
    run_task(NoBackbone(), task, [again], out, limit=2)
    assert len(first.asked) == 2 and again.asked == []
    with pytest.raises(RunDirError, match="limit: 2 → 4"):
        run_task(NoBackbone(), task, [ScriptedMethod(lambda q, im: "No")], out, limit=4)
    redo = ScriptedMethod(lambda q, im: "No")
    s = run_task(NoBackbone(), task, [redo], out, limit=4, overwrite=True)
    assert len(redo.asked) == 4 and s["scripted"]["n"] == 4 and s["scripted"]["yes_ratio"] == 0


def test_sweep_refuses_a_setting_folder_of_other_options(tmp_path, answered, capsys):
    out = tmp_path / "sweep"
    base = ["sweep", "--out", str(out), "--only", "pai", "--seeds", "1", "--threads", "1"]
    assert _main(base + ["--per-seed", "1"], capsys)[0] == 0
    assert answered["scenes"] == 2  # greedy and pai, one scene each
    assert _main(base + ["--per-seed", "1"], capsys)[0] == 0
    assert answered["scenes"] == 2
    code, err = _main(base + ["--per-seed", "2"], capsys)
    assert code == 2 and len(err) == 1 and "greedy" in err[0] and "per_seed: 1 → 2" in err[0]
    code, err = _main(base + ["--per-seed", "2", "--collect"], capsys)  # the table is never built from them
    assert code == 2 and "per_seed: 1 → 2" in err[0]
    assert _main(base + ["--per-seed", "2", "--overwrite"], capsys)[0] == 0
    assert answered["scenes"] == 2 + 4
    assert json.loads((out / "sweep.json").read_text())["rows"][0]["n"] == 2


def test_diagnose_refuses_another_configuration_and_returns_a_finished_one(tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    real = diagnose.mentions

    def counting(*a, **kw):
        calls["n"] += 1
        return real(*a, **kw)

    monkeypatch.setattr(diagnose, "mentions", counting)
    out = tmp_path / "d"
    argv = ["diagnose", "--out", str(out), "--limit", "1", "--threads", "1"]
    assert _main(argv, capsys)[0] == 0 and calls["n"] == 1
    first = (out / "diagnosis.json").read_text()
    assert _main(argv, capsys)[0] == 0 and calls["n"] == 1 and (out / "diagnosis.json").read_text() == first
    code, err = _main(argv + ["--tau", "0.3"], capsys)
    assert code == 2 and len(err) == 1 and "method_config.asi.tau: 0.6 → 0.3" in err[0] and calls["n"] == 1
    assert _main(argv + ["--tau", "0.3", "--overwrite"], capsys)[0] == 0 and calls["n"] == 2
    assert json.loads((out / "diagnosis.json").read_text())["tau"] == 0.3


def test_the_rule_itself(tmp_path):
    out = tmp_path / "r"
    config = {"a": 1, "m": {"x": {"alpha": 0.5}}, "seeds": [1, 2]}
    assert open_run(out, config) is False
    record(out, config, note="may change")
    assert open_run(out, json.loads(json.dumps(config))) is True
    assert differences(config, {"a": 1, "m": {"x": {"alpha": 0.25}, "y": {}}, "seeds": [1]}) == [
        "m.x.alpha: 0.5 → 0.25", "m.y: absent → {}", "seeds: [1, 2] → [1]"]
    with pytest.raises(RunDirError, match=r"a: 1 → 2"):
        open_run(out, {**config, "a": 2})
    assert open_run(out, {**config, "a": 2}, redo_changed=True) is False and not (out / "run.json").exists()
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(RunDirError, match="is a file"):
        open_run(f, config)


def test_world_resume_after_a_torn_line_answers_it_again(tmp_path, answered, capsys):
    out = tmp_path / "run"
    argv = WORLD + ["--method", "greedy", "--limit", "2", "--out", str(out)]
    assert _main(argv, capsys)[0] == 0
    items = out / "items-greedy.jsonl"
    first, second = items.read_text().splitlines()
    items.write_text(first + "\n" + second[:25])  # the second record cut mid-write, no newline
    assert _main(argv, capsys)[0] == 0 and answered["scenes"] == 3  # only the torn scene again
    assert json.loads((out / "summary.json").read_text())["greedy"]["n"] == 2


def test_a_moved_model_folder_is_the_same_model_and_retrained_weights_are_not(tmp_path):
    import shutil

    from adapt.backbones import EMBEDDED_DIR, load_backbone
    from adapt.eval.rundir import backbone_identity

    here = tmp_path / "a" / "embedded"
    shutil.copytree(EMBEDDED_DIR, here)
    shipped = backbone_identity(load_backbone("embedded"))
    assert backbone_identity(load_backbone(str(here))) == shipped  # same weights elsewhere: resumes
    with open(here / "model.safetensors", "r+b") as f:  # one byte of the weights differs
        f.seek(100_000)
        b = f.read(1)
        f.seek(100_000)
        f.write(bytes([b[0] ^ 1]))
    changed = backbone_identity(load_backbone(str(here)))
    assert differences(shipped, changed) == [f"files_sha256: {json.dumps(shipped['files_sha256'])[:37]}… → "
                                             f"{json.dumps(changed['files_sha256'])[:37]}…"]
