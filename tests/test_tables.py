"""The evaluation tables: results with methods as rows (paper Table 1), cost against greedy (Table 2b)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adapt.eval.runner import run_task
from adapt.eval.tables import efficiency_table, ratio_line, results_table
from adapt.eval.tasks import get_task
from adapt.methods.base import Answer
from runner_helpers import NoBackbone, ScriptedMethod

DATA = Path(__file__).parent / "data"

SUMMARY = {
    "greedy": {"chair_i": 0.08, "recall": 0.93, "n": 1000, "seconds_per_answer": 0.2, "tokens_per_answer": 60.0,
               "answers": 1000},
    "adapt-tf": {"chair_i": 0.06, "recall": 0.91, "n": 1000, "seconds_per_answer": 0.25, "tokens_per_answer": 58.0,
                 "answers": 1000, "chair_i_change_vs_greedy": -0.25, "chair_i_change_vs_greedy_ci_low": -0.31,
                 "chair_i_change_vs_greedy_ci_high": -0.19, "pope_adversarial_acc_diff_vs_greedy": 0.012,
                 "pope_adversarial_acc_diff_vs_greedy_ci_low": -0.004, "pope_adversarial_acc_diff_vs_greedy_ci_high": 0.03},
}


def test_results_table_has_methods_as_rows_and_intervals():
    lines = results_table(SUMMARY, ("chair_i", "recall", "n")).splitlines()
    assert lines[0] == ("| method | chair_i | recall | n | CHAIR_i vs greedy (95 % CI) | "
                        "POPE adversarial acc vs greedy (95 % CI) |")
    assert lines[2] == "| greedy | 0.0800 | 0.9300 | 1000 |  |  |"
    assert lines[3] == "| adapt-tf | 0.0600 | 0.9100 | 1000 | -25.0% [-31.0%, -19.0%] | +1.2 [-0.4, +3.0] pts |"


def test_efficiency_table_is_measured_against_greedy():
    table = efficiency_table(SUMMARY).splitlines()
    assert table[2] == "| greedy | 0.2000 | 1.00× | 60.0 | 1000 |"
    assert table[3] == "| adapt-tf | 0.2500 | 1.25× | 58.0 | 1000 |"
    assert ratio_line(SUMMARY) == "methods vs greedy: adapt-tf 1.25x"


class SlowScripted(ScriptedMethod):
    """Answers every question with ``words`` words after sleeping ``delay`` seconds per answer."""

    def __init__(self, name, words, delay):
        super().__init__(lambda q, im: "Yes " * words, name=name)
        self.words, self.delay = words, delay

    def _answer_group(self, backbone, images, questions, max_new_tokens, **kw):
        time.sleep(self.delay * len(questions))
        return [Answer("Yes " * self.words, list(range(self.words)), {}) for _ in questions]


def test_runner_times_every_method_on_the_same_items(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    for i in (101, 202, 303):
        Image.fromarray(np.full((8, 8, 3), i % 255, np.uint8)).save(d / f"COCO_val2014_000000000{i}.jpg")
    task = get_task("pope", questions=[str(DATA / "pope" / "coco_pope_random.jsonl")], images=str(d))
    fast, slow = SlowScripted("greedy", 2, 0.0), SlowScripted("slow", 5, 0.03)
    summary = run_task(NoBackbone(), task, [fast, slow], tmp_path / "run", batch_size=4)
    assert summary["greedy"]["answers"] == summary["slow"]["answers"] == 6
    assert summary["greedy"]["tokens_per_answer"] == 2 and summary["slow"]["tokens_per_answer"] == 5
    assert summary["slow"]["seconds_per_answer"] >= 0.03 > summary["greedy"]["seconds_per_answer"]
    eff = (tmp_path / "run" / "efficiency.md").read_text()
    ratio = summary["slow"]["seconds_per_answer"] / summary["greedy"]["seconds_per_answer"]
    assert f"| slow | {summary['slow']['seconds_per_answer']:.4f} | {ratio:.2f}× | 5.0 | 6 |" in eff
    assert (tmp_path / "run" / "table.md").read_text().splitlines()[2].startswith("| greedy | ")
    assert json.loads((tmp_path / "run" / "progress.json").read_text()) == {"done": 12, "total": 12, "stage": "done"}


def test_summary_plot_draws_each_figure_and_the_cost(tmp_path):
    from adapt.eval.plots import _interval, summary_plot

    path = summary_plot(SUMMARY, ("chair_i", "recall", "n"), tmp_path / "s.png")
    assert path.stat().st_size > 5000
    assert _interval(SUMMARY, "adapt-tf", "chair_i", "greedy") == (pytest.approx(0.08 * 0.69), pytest.approx(0.08 * 0.81))
    assert summary_plot({"a": {"n": 3}}, ("n",), tmp_path / "none.png") is None


def test_a_comparison_without_an_interval_is_shown_plain_and_drawn_without_bars(tmp_path):
    from adapt.eval.plots import summary_plot

    s = {"greedy": {"chair_i": 0.0, "n": 2},
         "pai": {"chair_i": 0.0, "n": 2, "chair_i_change_vs_greedy": None, "chair_i_change_vs_greedy_ci_low": None,
                 "chair_i_change_vs_greedy_ci_high": None, "pope_random_acc_diff_vs_greedy": 0.02,
                 "pope_random_acc_diff_vs_greedy_ci_low": None, "pope_random_acc_diff_vs_greedy_ci_high": None}}
    assert results_table(s, ("chair_i",)).splitlines()[3] == "| pai | 0.0000 |  | +2.0 pts |"
    assert summary_plot(s, ("chair_i",), tmp_path / "p.png").exists()
