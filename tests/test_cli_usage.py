"""Every numeric flag and output path of every subcommand is checked while the command line is parsed:
a value out of range exits 2 with one line naming the flag, before a model loads or a file is written."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from adapt.argtypes import MAX_THREADS
from adapt.cli import main

BAD = Path(__file__).resolve().parent / "data" / "cli-bad"


def _refused(argv, capsys, *expect):
    """``main(argv)`` exits 2 with exactly one stderr line holding ``expect``, no traceback."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    lines = [l for l in captured.err.splitlines() if l.strip()]
    assert code == 2, (argv, lines)
    assert len(lines) == 1 and "Traceback" not in captured.err, (argv, lines)
    for e in expect:
        assert e in lines[0], (argv, lines[0])
    return lines[0]


# (extra arguments, words the one line must hold) for the flags every model subcommand shares
SHARED_BAD = [
    (["--threads", "100000"], ["--threads", f"1 … {MAX_THREADS}"]),
    (["--threads", "-3"], ["--threads"]),
    (["--threads", "0"], ["--threads"]),
    (["--threads", "two"], ["--threads", "whole number"]),
    (["--k", "100000"], ["--k", "2048"]),
    (["--k", "0"], ["--k"]),
    (["--alpha", "inf"], ["--alpha", "finite"]),
    (["--alpha", "nan"], ["--alpha", "finite"]),
    (["--alpha", "-1"], ["--alpha"]),
    (["--alpha", "1e9"], ["--alpha", "100"]),
    (["--tau", "nan"], ["--tau"]),
    (["--mass-tau", "-inf"], ["--mass-tau"]),
    (["--gamma", "inf"], ["--gamma"]),
    (["--num-noise", "17"], ["--num-noise", "16"]),
    (["--max-new-tokens", "0"], ["--max-new-tokens"]),
    (["--max-new-tokens", "100000"], ["--max-new-tokens", "2048"]),
]


@pytest.mark.parametrize("command", [
    ["run", "--image", str(BAD / "ok.png"), "--question", "q", "--out", "OUT"],
    ["eval", "--limit", "1", "--out", "OUT"],
    ["eval", "--task", "world", "--limit", "1", "--out", "OUT"],
    ["sweep", "--out", "OUT"],
    ["diagnose", "--limit", "1", "--out", "OUT"],
    ["export-anchors", "--input", str(BAD / "collide"), "--question", "q", "--out", "OUT"],
])
def test_shared_flags_out_of_range_are_refused_by_every_subcommand(command, tmp_path, capsys):
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in command]
    for extra, expect in SHARED_BAD:
        _refused(argv + extra, capsys, *expect)
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_flags_of_each_subcommand(tmp_path, capsys):
    out = str(tmp_path / "o")
    cases = [
        (["eval", "--out", out, "--batch-size", "0"], ["--batch-size", "1 … 4096"]),
        (["eval", "--out", out, "--limit", "-1"], ["--limit", "at least 1"]),
        (["eval", "--out", out, "--limit", "0"], ["--limit"]),
        (["eval", "--out", out, "--method", ""], ["--method", "at least one method", "greedy"]),
        (["eval", "--out", out, "--method", " , "], ["--method", "at least one"]),
        (["eval", "--out", out, "--method", "greedy,nope"], ["--method", "unknown method 'nope'"]),
        (["eval", "--out", out, "--method", "greedy,greedy"], ["--method", "named twice"]),
        (["eval", "--out", out, "--seeds", "1,5000"], ["--seeds", "0 … 999"]),
        (["eval", "--out", out, "--seeds", "3,3"], ["--seeds", "twice"]),
        (["eval", "--out", out, "--seeds", ","], ["--seeds"]),
        (["eval", "--task", "chair-coco", "--out", out, "--sample", "0"], ["--sample"]),
        (["eval", "--task", "mmhal", "--out", out, "--judge-timeout", "inf"], ["--judge-timeout", "finite"]),
        (["eval", "--task", "world-grounding", "--out", out, "--scenes", "-2"], ["--scenes"]),
        (["diagnose", "--out", out, "--limit", "-3"], ["--limit", "at least 1"]),
        (["sweep", "--out", out, "--shard", "2/2"], ["--shard", "0 <= i < n"]),
        (["sweep", "--out", out, "--shard", "x"], ["--shard", "i/n"]),
        (["sweep", "--out", out, "--per-seed", "0"], ["--per-seed"]),
        (["sweep", "--out", out, "--batch-size", "-1"], ["--batch-size"]),
        (["sweep", "--out", out, "--seeds", "1,1"], ["--seeds"]),
        (["train", "dpo", "--out", out, "--steps", "0"], ["--steps"]),
        (["train", "dpo", "--out", out, "--lr", "nan"], ["--lr", "finite"]),
        (["train", "dpo", "--out", out, "--beta", "0"], ["--beta", "above 0"]),
        (["train", "dpo", "--out", out, "--lora-dropout", "1"], ["--lora-dropout"]),
        (["train", "dpo", "--out", out, "--noise-step", "1000"], ["--noise-step", "0 … 999"]),
        (["train", "dpo", "--out", out, "--batch", "0"], ["--batch"]),
        (["train", "dpo", "--out", out, "--limit", "-5"], ["--limit"]),
        (["train", "dpo", "--out", out, "--threads", "100000"], ["--threads"]),
        (["train", "dpo", "--out", out, "--sft-weight", "inf"], ["--sft-weight"]),
        (["train", "dpo", "--out", out, "--eval-scenes", "-1"], ["--eval-scenes"]),
        (["score", "pope", "--questions", "q", "--answers", "a", "--out", str(tmp_path)], ["--out", "is a folder"]),
        (["score", "chair", "--captions", "c", "--annotations", "a", "--out", str(BAD / "ok.png" / "m.json")],
         ["--out", "ok.png is a file"]),
    ]
    for argv, expect in cases:
        _refused(argv, capsys, *expect)
    assert not (tmp_path / "o").exists()


def test_an_output_path_that_is_a_file_is_refused(tmp_path, capsys):
    f = tmp_path / "a-file"
    f.write_text("mine")
    for argv in (["run", "--image", str(BAD / "ok.png"), "--question", "q", "--out", str(f)],
                 ["eval", "--out", str(f)], ["eval", "--out", str(f / "below")], ["sweep", "--out", str(f)],
                 ["diagnose", "--out", str(f)], ["train", "dpo", "--out", str(f)],
                 ["train", "dpo", "--out", str(tmp_path / "t"), "--pairs", str(f)],
                 ["train", "dpo", "--out", str(tmp_path / "t"), "--model-out", str(f)]):
        _refused(argv, capsys, "a-file", "is a file")
    assert f.read_text() == "mine" and not (tmp_path / "t").exists()


def test_train_never_writes_into_a_folder_of_other_files(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "cat.jpg").write_bytes(b"not ours")
    _refused(["train", "dpo", "--out", str(tmp_path / "t"), "--pairs", str(photos)], capsys,
             "--pairs", "holds other files")
    _refused(["train", "dpo", "--out", str(tmp_path / "t"), "--model-out", str(photos)], capsys,
             "--model-out", "holds other files")
    assert [p.name for p in photos.iterdir()] == ["cat.jpg"]
    from adapt.backbones import EMBEDDED_DIR

    before = sorted(p.name for p in EMBEDDED_DIR.iterdir())
    _refused(["train", "dpo", "--out", str(tmp_path / "t"), "--model-out", str(EMBEDDED_DIR)], capsys,
             "is the model being tuned")
    assert sorted(p.name for p in EMBEDDED_DIR.iterdir()) == before


def test_k_that_takes_the_whole_answer_and_infinite_config_values(tmp_path, capsys):
    base = ["run", "--image", str(BAD / "ok.png"), "--question", "q", "--out", str(tmp_path / "o")]
    _refused(base + ["--k", "40", "--max-new-tokens", "30"], capsys, "K = 40", "30", "--max-new-tokens")
    _refused(base + ["--max-new-tokens", "5"], capsys, "K = 5")  # the default K: no step left to steer
    from adapt.cli import build_config, parser

    for ok in (["--max-new-tokens", "6"], ["--max-new-tokens", "5", "--second-pass", "short"],
               ["--max-new-tokens", "3", "--no-asi"]):
        build_config(parser().parse_args(base + ok))  # a step to steer, or steering from step 0, or none
    cfg = tmp_path / "c.json"
    cfg.write_text('{"asi": {"alpha": Infinity}}')  # what json.dumps(float("inf")) writes
    _refused(base + ["--config", str(cfg)], capsys, "asi.alpha", "finite")
    assert not (tmp_path / "o").exists()


def test_threads_beyond_the_ceiling_in_the_library_and_the_variable(monkeypatch):
    from adapt.threads import use_threads

    class Tiny:
        class model:
            @staticmethod
            def parameters():
                return []

    with pytest.raises(ValueError, match="threads"):
        use_threads(Tiny(), 100000)
    monkeypatch.setenv("ADAPT_TORCH_THREADS", "100000")
    assert use_threads(Tiny()) == MAX_THREADS


def test_mass_trigger_prints_the_threshold_it_reads(tmp_path, capsys):
    """``run --trigger mass`` printed "threshold per layer [0. 0.]" (the AMC threshold, NaN, shown as 0)."""
    out = tmp_path / "o"
    code = main(["run", "--image", str(BAD / "ok.png"), "--question", "describe the image", "--out", str(out),
                 "--max-new-tokens", "16", "--trigger", "mass", "--mass-tau", "0.9", "--cache-dir", str(tmp_path / "c")])
    printed = capsys.readouterr().out
    assert code == 0
    line = next(l for l in printed.splitlines() if l.startswith("AMC:"))
    assert "trigger mass: image-mass threshold per layer" in line and "AMC threshold" not in line
    shown = np.array([float(x) for x in re.search(r"image-mass threshold per layer \[([^\]]*)\]", line)[1].split()])
    from adapt.trace import Trace

    trace = Trace.load(out / "trace.zip")
    s, k = trace.steered, trace.config["anchor"]["k"]
    # the trigger's reading: 0.9 × each layer's mean image mass over the anchor phase (steps 0 … K−1)
    np.testing.assert_allclose(shown, 0.9 * s.mass[:k].mean(0), rtol=2e-3, atol=1e-4)
    assert np.isfinite(shown).all() and (shown > 0).all()
    # and it is what decided: after the anchor phase no ASI layer went unsteered below it
    after = s.mass[k:, trace.asi_layers]
    fired = s.steered[k:, trace.asi_layers]
    threshold = np.broadcast_to(0.9 * s.mass[:k].mean(0)[trace.asi_layers], after.shape)
    assert len(after) and (after[~fired] >= threshold[~fired] - 1e-6).all()
    code = main(["run", "--image", str(BAD / "ok.png"), "--question", "describe the image", "--out", str(out),
                 "--max-new-tokens", "8", "--trigger", "amc", "--cache-dir", str(tmp_path / "c")])
    amc_line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("AMC:"))
    assert "trigger amc: AMC threshold per layer" in amc_line and "nan" not in amc_line


def test_run_names_the_question_words_the_model_does_not_know(tmp_path, capsys):
    """The embedded model's word-level tokenizer reads "cat" as <unk>: the CLI says so, as the app does."""
    code = main(["run", "--image", str(BAD / "ok.png"), "--question", "is there a cat on the sofa?", "--out",
                 str(tmp_path / "o"), "--max-new-tokens", "8", "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 0
    note = [l for l in err.splitlines() if "does not know" in l]
    assert len(note) == 1 and "cat" in note[0] and "sofa" in note[0] and "there" not in note[0]
