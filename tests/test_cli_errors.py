"""The command line fed the bad inputs of ``tests/data/cli-bad/``: every user error exits 2 with one
readable line and no traceback; ``export-anchors`` never lets two inputs share one output."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adapt.backbones import EMBEDDED_DIR
from adapt.cli import main
from adapt.prompts import MAX_QUESTION_CHARS, QuestionError, clean_question

ROOT = Path(__file__).resolve().parents[1]
BAD = Path(__file__).resolve().parent / "data" / "cli-bad"

needs_model = pytest.mark.skipif(not (EMBEDDED_DIR / "config.json").exists(), reason="assets/embedded not present")


def _run(argv, capsys):
    """``python -m adapt`` in-process: (exit code, stderr lines that are not progress bars)."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip() and "Loading weights" not in l and "it/s]" not in l]
    return code, lines


def _one_line_error(code, lines, *expect):
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0] and 'File "' not in lines[0]
    for e in expect:
        assert e in lines[0], lines[0]
    return lines[0]


def _run_args(tmp_path, *extra, question="describe the image"):
    return ["run", "--image", str(BAD / "ok.png"), "--question", question, "--out", str(tmp_path / "out"),
            "--max-new-tokens", "6", "--cache-dir", str(tmp_path / "cache"), *extra]


def test_config_that_is_not_json(tmp_path, capsys):
    line = _one_line_error(*_run(_run_args(tmp_path, "--config", str(BAD / "config-not-json.json")), capsys),
                           "config-not-json.json", "not valid JSON", "line 1")
    assert line.startswith("error:")
    _one_line_error(*_run(_run_args(tmp_path, "--config", str(BAD / "config-not-object.json")), capsys),
                    "JSON object")
    _one_line_error(*_run(_run_args(tmp_path, "--config", str(tmp_path / "missing.json")), capsys), "no such file")


def test_model_folder_with_a_malformed_config(tmp_path, capsys):
    _one_line_error(*_run(_run_args(tmp_path, "--backbone", str(BAD / "model-bad-config")), capsys),
                    "could not load the model", "malformed", "line 3")


def test_world_seed_out_of_range_and_the_range_in_help(tmp_path, capsys):
    for seed in ("1000", "-1", "many"):
        _one_line_error(*_run(["eval", "--benchmark", "world", "--seed", seed, "--limit", "1", "--out",
                               str(tmp_path / "e")], capsys), "--seed", "0 … 999")
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    assert "0 … 999" in capsys.readouterr().out
    assert not (tmp_path / "e").exists()  # refused before anything ran


def test_other_usage_errors_are_one_line(tmp_path, capsys):
    _one_line_error(*_run(_run_args(tmp_path, "--dtype", "float8"), capsys), "--dtype", "float16")
    _one_line_error(*_run(["eval", "--benchmark", "coco", "--out", str(tmp_path / "e")], capsys), "coco", "world")
    _one_line_error(*_run(["run", "--image", str(BAD / "not-an-image.png"), "--question", "q", "--out",
                           str(tmp_path / "o")], capsys), "not-an-image.png", "not a readable image")


def test_one_question_limit_for_the_cli_and_the_app(tmp_path, capsys):
    long = "describe " * (MAX_QUESTION_CHARS // 9 + 1)
    line = _one_line_error(*_run(_run_args(tmp_path, question=long), capsys), f"at most {MAX_QUESTION_CHARS}")
    assert not (tmp_path / "out").exists()
    with pytest.raises(QuestionError) as info:
        clean_question(long)
    assert str(info.value) in line  # the same sentence the app shows
    from app.ui.errors import question_error  # the app asks the same function

    assert question_error(long) == str(info.value)
    _one_line_error(*_run(["export-anchors", "--input", str(BAD / "collide"), "--question", long, "--out",
                           str(tmp_path / "x")], capsys), f"at most {MAX_QUESTION_CHARS}")


def test_special_tokens_are_removed_from_user_text():
    class Tok:  # what a processor exposes: its placeholder and the tokenizer's special tokens
        image_token = "<image>"
        all_special_tokens = ["<s>", "</s>", "<unk>", "a"]

    assert clean_question("what <image> is  <image>here</s>?", Tok()) == "what is here ?"
    assert clean_question("is there a star?", Tok()) == "is there a star?"  # a word is never a token
    with pytest.raises(QuestionError):
        clean_question("<image> <image>", Tok())
    with pytest.raises(QuestionError):
        clean_question("   ")


@needs_model
def test_image_token_in_a_question_runs_as_a_process(tmp_path):
    """The whole process, as a user runs it: no transformers error, the token reported and dropped."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), ADAPT_CACHE=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, "-m", "adapt", *_run_args(tmp_path, question="what <image> is this?")[:-2]],
                       cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "removed the model's special token(s) <image>" in r.stderr
    from adapt.trace import Trace

    assert Trace.load(tmp_path / "out" / "trace.zip").question == "what is this?"


@needs_model
def test_export_keeps_same_stem_files_apart_and_names_failures(tmp_path, capsys):
    out = tmp_path / "exp"
    args = ["export-anchors", "--input", str(BAD / "collide"), "--question", "describe the image", "--out", str(out),
            "--cache-dir", str(tmp_path / "cache")]
    code = main(args)
    printed = capsys.readouterr().out
    assert code == 3  # one file failed
    rows = [json.loads(l) for l in (out / "manifest.jsonl").read_text().splitlines()]
    ok = {Path(r["source"]).name: r["output"] for r in rows if r["status"] == "ok"}
    assert set(ok) == {"scene.png", "scene.jpg"} and len(set(ok.values())) == 2
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(Path(o).name for o in ok.values())
    assert "exported 2," in printed and "errors 1" in printed
    failed = [l for l in printed.splitlines() if l.startswith("failed:")]
    assert len(failed) == 1 and "broken.png" in failed[0] and "not a readable image" in failed[0]
    main(args)  # a rerun finds every row under the same names (the broken file's error is kept, not retried)
    assert "exported 0, already done 3, errors 0" in capsys.readouterr().out


@needs_model
def test_export_jsonl_questions_are_cleaned_or_refused_per_item(tmp_path, capsys):
    out = tmp_path / "exp"
    code = main(["export-anchors", "--input", str(BAD / "questions.jsonl"), "--out", str(out),
                 "--cache-dir", str(tmp_path / "cache")])
    printed = capsys.readouterr().out
    status = {r["id"]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    assert code == 3 and status["token"]["status"] == "ok"
    assert status["long"]["status"] == "error" and f"at most {MAX_QUESTION_CHARS}" in status["long"]["error"]
    assert status["text"]["status"] == "error"
    assert sum(l.startswith("failed:") for l in printed.splitlines()) == 2


def test_same_named_inputs_get_distinct_ids_by_one_rule():
    """``a.png`` + ``a.jpg`` are ``a-png`` / ``a-jpg`` wherever they come from (a folder, the app's
    uploads); names that reduce to one id get a counter."""
    from adapt.export import rows_source, unique_ids

    assert unique_ids([Path("a/scene.png"), Path("a/scene.jpg"), Path("a/x.png")]) == ["scene-png", "scene-jpg", "x"]
    assert unique_ids([Path("a b.png"), Path("a_b.png")]) == ["a_b-png", "a_b-png-2"]
    assert unique_ids(["x.png", "x.png"]) == ["x-png", "x-png-2"]
    src = rows_source([{"file_name": "a.png", "image": b"1"}, {"file_name": "a.jpg", "image": b"2"}], "q")
    assert [(r.row_id, r.name) for r in src.rows()] == [("a-png", "a.png"), ("a-jpg", "a.jpg")]
