"""ADAPT as a whole, chosen as a whole (issue 24): the joint rule on a hand-built sweep folder."""

import json

import pytest

from adapt.train import joint
from adapt.train.report import stage_a

N = 200  # scenes; each has 5 present objects


def _items(n_halluc: int, n_missed: int, pope_right: int | None = None) -> list[dict]:
    """N scenes: ``n_halluc`` of them name one absent object, ``n_missed`` leave one present object out;
    with ``pope_right``, that many scenes answer their one adversarial question right."""
    out = []
    for i in range(N):
        truth = ["a", "b", "c", "d", "e"]
        mentioned = truth[:4] if i < n_missed else list(truth)
        if i >= N - n_halluc:
            mentioned.append("z")
        it = {"index": i, "seed": i, "is_trap": False, "truth": truth, "absent_partners": [], "description": "x y",
              "mentioned": mentioned, "info": {"tokens": 3}, "seconds": 0.1, "pope": []}
        if pope_right is not None:
            it["pope"] = [{"kind": k, "category": "z", "label": "no", "pred": "no" if i < pope_right else "yes"}
                          for k in ("random", "popular", "adversarial")]
        out.append(it)
    return out


def _run(folder, name, method, items, gamma=None):
    d = folder / name
    d.mkdir(parents=True)
    cfg = {"asi": {"gamma": gamma}} if gamma is not None else {}
    (d / "run.json").write_text(json.dumps({"config": {"methods": {method: cfg}}}))
    (d / f"items-{method}.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items))


def _recipe(sweep, name, objective, **kw):
    d = sweep / name
    d.mkdir()
    (d / "train_config.json").write_text(json.dumps({"objective": objective, "lr": 1e-4, "sft_weight": 1.0,
                                                     "data": "world:1500:500", **kw}))
    return d


@pytest.fixture
def sweep(tmp_path):
    s = tmp_path / "whole"
    r0 = s / "R0"
    # base greedy: 100 hallucinated of 1000 + 100 mentions; recall 1.0; POPE adversarial 120 / 200 right
    _run(r0, "val-greedy", "greedy", _items(100, 0, 120))
    _run(r0, "val-tf", "adapt-tf", _items(70, 4))  # −30 %, recall −0.4 points: passes
    r1 = _recipe(s, "R1", "vag-dpo")
    _run(r1, "val-greedy", "greedy", _items(80, 0, 150))  # −20 %: the tuned model alone
    _run(r1, "val-tf", "adapt-tf", _items(40, 8))  # −60 %, −0.8 points: passes, the lowest that does
    _run(r1, "val-tf-g075", "adapt-tf", _items(20, 30), gamma=0.75)  # −80 % but −3 recall points: fails
    r2 = _recipe(s, "R2", "dpo")
    _run(r2, "val-greedy", "greedy", _items(100, 0, 120))  # no change: the interval is not below zero
    return s


def test_the_rule_picks_the_lowest_chair_i_inside_the_recall_budget(sweep):
    combos, base = joint.combinations(sweep)
    by = {c.label: c for c in combos}
    assert base["hallucinated_mentions"] == 100 and base["recall"] == 1.0
    assert set(by) == {"R0 greedy", "R0 adapt-tf", "R1 greedy", "R1 adapt-tf", "R1 adapt-tf γ0.75", "R2 greedy"}
    whole = by["R1 adapt-tf"]
    assert (whole.hallucinated, whole.mentions) == (40, 1000 - 8 + 40)
    assert whole.recall == pytest.approx(1 - 8 / 1000)
    assert whole.recall_diff == pytest.approx(-0.8)
    assert whole.passes and not by["R1 adapt-tf γ0.75"].passes and not by["R2 greedy"].passes
    picks = {row: joint.pick([c for c in combos if keep(c)]) for row, keep in joint.SETS.items()}
    assert picks["ADAPT as a whole"] is whole
    assert picks["tuned model alone"] is by["R1 greedy"]
    assert picks["DPO"] is None
    assert picks["ADAPT-TF"] is by["R0 adapt-tf"]
    # POPE: measured on greedy decodings; R1 answers 30 more adversarial questions right (+15 points)
    assert by["R1 greedy"].pope["adversarial"] == pytest.approx(150 / 200)
    assert by["R1 greedy"].pope["adversarial_diff"][0] == pytest.approx(0.15)
    assert by["R1 adapt-tf"].pope == {}
    # the frontier holds what nothing beats on both axes: the γ 0.75 point stays on it
    assert {c.label for c in joint.frontier(combos)} >= {"R1 adapt-tf γ0.75", "R1 adapt-tf", "R0 greedy"}


def test_a_tie_goes_to_the_higher_recall(sweep):
    combos, _ = joint.combinations(sweep)
    a = next(c for c in combos if c.label == "R1 adapt-tf")
    twin = joint.Combination(**{**a.__dict__, "recipe": "R9", "chair_i": a.chair_i + 0.0005, "recall": a.recall + 0.001})
    assert joint.pick([a, twin]) is twin
    far = joint.Combination(**{**twin.__dict__, "chair_i": a.chair_i + 0.002})
    assert joint.pick([a, far]) is a


def test_the_command_writes_the_table_and_names_the_picks(sweep, tmp_path, capsys):
    assert joint.main(["--sweep", str(sweep), "--out", str(tmp_path / "out" / "joint")]) == 0
    data = json.loads((tmp_path / "out" / "joint.json").read_text())
    assert data["picks"] == {"ADAPT as a whole": "R1 adapt-tf", "tuned model alone": "R1 greedy", "DPO": None,
                             "ADAPT-TF": "R0 adapt-tf"}
    md = (tmp_path / "out" / "joint.md").read_text()
    assert "**R1 adapt-tf** (VAG-DPO enhanced/noise, lr 0.0001, sft 1)" in md and "DPO: none passes" in md
    assert (tmp_path / "out" / "joint.png").stat().st_size > 1000


def test_no_base_run_is_one_line(tmp_path, capsys):
    assert joint.main(["--sweep", str(tmp_path), "--out", str(tmp_path / "j")]) == 2
    assert "holds no greedy run of the base model" in capsys.readouterr().err


def test_rule_a_picks_the_hue_keeping_mode_with_the_lowest_chair_i(tmp_path):
    for mode, halluc in (("paper", 10), ("background", 60), ("blur", 50), ("luminance", 52)):
        (tmp_path / f"items-adapt-tf:enhanced-{mode}.jsonl").write_text(
            "".join(json.dumps(it) + "\n" for it in _items(halluc, 0 if mode != "blur" else 20)))
    mode, figures = stage_a(tmp_path)
    # paper is lowest but is not a hue-keeping mode; blur (50 / 1 030) and luminance (52 / 1 052) tie within 0.001 of
    # CHAIR_i, and luminance recalls more
    assert set(figures) == {"paper", "background", "blur", "luminance"}
    assert mode == "luminance"


def test_the_whole_reading_is_the_picked_decoding():
    from adapt.methods import get_method

    m = get_method("adapt-tf:whole")
    assert m.cfg.asi.gamma == 0.75 and m.cfg.asi.operator == "mass-aware"  # only γ departs from the defaults


def test_the_test_table_gives_paired_recall_and_pope_changes(tmp_path):
    from adapt.train.report import compare, markdown

    base, new = tmp_path / "base.jsonl", tmp_path / "new.jsonl"
    base.write_text("".join(json.dumps(it) + "\n" for it in _items(100, 0, 120)))
    new.write_text("".join(json.dumps(it) + "\n" for it in _items(40, 8, 150)))
    table = compare([("greedy", base), ("whole", new)])
    w = table["whole"]
    assert w["chair_i_change"] == pytest.approx(40 / 1032 / (100 / 1100) - 1)
    assert w["recall_diff"] == pytest.approx(-0.008) and w["pope_adversarial_acc_diff"] == pytest.approx(0.15)
    row = markdown(table).splitlines()[-1]
    assert "| -0.8 (" in row and "| +15.0 (" in row
