"""VAG-DPO / DPO (adapt/train): Eq. 12 against a hand computation, the reference, the loaders and the
pair builder on fixture files in RLAIF-V's and RLHF-V's formats, kill-and-resume, the world's own
pairs, the CLI's errors, and a 2-process ``accelerate launch`` equal to one process."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adapt.anchor import BiasCache
from adapt.backbones import EMBEDDED_DIR, load_backbone
from adapt.cli import main
from adapt.train.config import TrainConfig, TrainError
from adapt.train.data import RecordError, decode_row, load_public
from adapt.train.loss import dpo_loss, sequence_logps
from adapt.train.pairs import ListSource, RawSource, build_pairs, load_pairs
from adapt.train.trainer import answer_logps, latest_checkpoint, prepare_model, sample_indices, train_loop

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data" / "train"
RLAIF = f"rlaif-v:{DATA / 'rlaif_v.parquet'}"
RLHF = f"rlhf-v:{DATA / 'rlhf_v.json'}"

pytestmark = pytest.mark.skipif(not (EMBEDDED_DIR / "config.json").exists(), reason="assets/embedded not present")


# --- Eq. 12 --------------------------------------------------------------------------------------------

def test_loss_matches_a_hand_computation():
    pc, pr = torch.tensor([-10.0, -4.0]), torch.tensor([-12.0, -3.0])
    rc, rr = torch.tensor([-11.0, -4.5]), torch.tensor([-11.0, -3.5])
    out = dpo_loss(pc, pr, rc, rr, beta=0.1)
    # row 0: 0.1·[(−10 + 11) − (−12 + 11)] = 0.2; row 1: 0.1·[(−4 + 4.5) − (−3 + 3.5)] = 0
    expect = [-math.log(1 / (1 + math.exp(-0.2))), math.log(2)]
    assert out.losses.tolist() == pytest.approx(expect, abs=1e-6)
    assert out.loss.item() == pytest.approx(sum(expect) / 2, abs=1e-6)
    assert out.chosen_rewards.tolist() == pytest.approx([0.1, 0.05]) and out.margins.tolist() == pytest.approx([0.2, 0.0])
    assert out.accuracies.tolist() == [1.0, 0.0]


def test_preferring_the_chosen_lowers_the_loss():
    ref = torch.zeros(1)
    pc = torch.zeros(1, requires_grad=True)
    pr = torch.zeros(1, requires_grad=True)
    dpo_loss(pc, pr, ref, ref, 0.1).loss.backward()
    assert pc.grad.item() < 0 < pr.grad.item()  # descent raises log π(y_w) and lowers log π(y_l)
    losses = [dpo_loss(torch.tensor([d]), torch.tensor([0.0]), ref, ref, 0.1).loss.item() for d in (-1.0, 0.0, 1.0)]
    assert losses[0] > losses[1] > losses[2]
    assert math.isfinite(dpo_loss(torch.tensor([-1e4]), torch.tensor([0.0]), ref, ref, 0.1).loss.item())


def test_answer_log_probs_mask_the_prompt():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [1 / 3, 1 / 3, 1 / 3]]]))
    labels = torch.tensor([[-100, -100, 1, 2]])  # prompt, prompt, answer, answer
    s, n = sequence_logps(logits, labels)
    assert n.tolist() == [2] and s.item() == pytest.approx(math.log(0.8) + math.log(0.6), abs=1e-6)


def test_config_defaults_and_sides():
    c = TrainConfig()
    assert (c.beta, c.noise_step, c.sides()) == (0.1, 500, ("enhanced", "noise"))
    assert TrainConfig(objective="dpo").sides() == ("original", "original")
    assert TrainConfig(chosen_image="original", rejected_image="noise").sides() == ("original", "noise")
    with pytest.raises(TrainError, match="--beta"):
        TrainConfig(beta=0).validate()


def test_data_order_is_a_function_of_the_position():
    full = sample_indices(5, 3, 0, 12)
    assert sorted(full[:5]) == list(range(5)) and sorted(full[5:10]) == list(range(5))
    assert sample_indices(5, 3, 7, 5) == full[7:12]  # a resumed run / another process reads the same stream


# --- loaders and the pair builder ----------------------------------------------------------------------

def test_rlaif_v_loader_reads_the_fixture_and_flags_broken_records():
    raw = load_public(RLAIF)
    assert len(raw) == 5
    r = decode_row(raw, 0)
    assert r.image.size == (96, 96) and r.question == "describe the image in detail." and r.chosen
    assert r.rejected.endswith("a tiny red moon at the bottom.") and r.meta["origin_dataset"] == "world"
    with pytest.raises(RecordError, match="cannot be read"):
        decode_row(raw, 3)
    with pytest.raises(RecordError, match="empty chosen"):
        decode_row(raw, 4)


def test_rlhf_v_loader_reads_the_text_column():
    raw = load_public(RLHF)
    r = decode_row(raw, 1)
    assert r.question == "what do you see in this image?" and r.image.size == (96, 96)
    assert r.rejected.endswith("a small blue ring on the left.")
    with pytest.raises(RecordError, match="not JSON"):
        decode_row(raw, 2)
    with pytest.raises(RecordError, match="no such file"):
        decode_row(raw, 3)


@pytest.fixture(scope="module")
def backbone():
    torch.set_num_threads(1)
    return load_backbone("embedded")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory, backbone):
    root = tmp_path_factory.mktemp("pairs")
    return build_pairs(backbone, RawSource(load_public(RLAIF)), root / "rlaif", RLAIF,
                       cache=BiasCache(str(root / "cache")))


def test_pair_builder_skips_broken_records_and_keeps_the_others(pairs, backbone, tmp_path):
    assert [p["id"] for p in pairs.pairs] == ["rlaif-v-0", "rlaif-v-1", "rlaif-v-2"]
    assert {s["index"]: s["reason"] for s in pairs.skipped} == {3: "image cannot be read (UnidentifiedImageError)",
                                                                4: "empty chosen answer"}
    p = pairs.pairs[0]
    orig, enh, noise = (pairs.image(p, s) for s in ("original", "enhanced", "noise"))
    assert orig.size == enh.size == noise.size == (96, 96)
    import numpy as np

    o, e, n = (np.asarray(x, dtype=float) for x in (orig, enh, noise))
    assert e.mean() > o.mean()             # low-anchor regions fade toward white
    assert np.abs(n - o).mean() > 20        # step 500 of 1 000: heavily noised
    # built once: a second call reads the manifest and runs nothing
    mtime = (pairs.root / "manifest.jsonl").stat().st_mtime_ns
    again = build_pairs(backbone, RawSource(load_public(RLAIF)), pairs.root, RLAIF)
    assert [x["id"] for x in again.pairs] == [x["id"] for x in pairs.pairs]
    assert (pairs.root / "manifest.jsonl").stat().st_mtime_ns == mtime
    with pytest.raises(TrainError, match="another data"):
        build_pairs(backbone, RawSource(load_public(RLHF)), pairs.root, RLHF)
    # a set whose every record is broken is one readable error
    raw = load_public(RLAIF)
    raw.rows = raw.rows[3:]
    with pytest.raises(TrainError, match="no usable preference pairs: all 2 records were skipped"):
        build_pairs(backbone, RawSource(raw), tmp_path / "empty", "x", cache=BiasCache(str(tmp_path / "c")))


# --- the reference and training ----------------------------------------------------------------------

def _rows(pairs, side="original"):
    ps = pairs.pairs
    return [pairs.image(p, side) for p in ps], [p["question"] for p in ps], [p["chosen"] for p in ps]


def test_reference_equals_the_base_with_adapters_disabled(pairs):
    bb = load_backbone("embedded")
    imgs, qs, ans = _rows(pairs)
    with torch.no_grad():
        base, _ = answer_logps(bb.model, bb, imgs, qs, ans, "cpu")
    model = prepare_model(bb, TrainConfig(lora=True))
    with torch.no_grad():  # move the adapters off zero, as training does
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
        tuned, _ = answer_logps(model, bb, imgs, qs, ans, "cpu")
        with model.disable_adapter():
            ref, _ = answer_logps(model, bb, imgs, qs, ans, "cpu")
    assert torch.allclose(ref, base, atol=1e-5)
    assert (tuned - base).abs().max() > 1e-2


def _accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


def test_a_few_steps_lower_the_loss(pairs, tmp_path):
    bb = load_backbone("embedded")
    cfg = TrainConfig(objective="vag-dpo", lr=2e-3, steps=8, batch=3, warmup_steps=1, save_every=100)
    res = train_loop(bb, pairs, cfg, tmp_path, _accelerator(), show_bar=False)
    log = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 9)) and not res.stopped
    assert log[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy = reference at the start
    assert log[-1]["loss"] < log[0]["loss"] - 0.05 and log[-1]["margin"] > 0
    assert json.loads((tmp_path / "progress.json").read_text()) == {"done": 8, "total": 8, "stage": "train"}


def test_kill_and_resume_continue_from_the_saved_step(pairs, tmp_path):
    cfg = TrainConfig(objective="dpo", lr=1e-3, steps=4, batch=2, warmup_steps=1, save_every=2)
    full = train_loop(load_backbone("embedded"), pairs, cfg, tmp_path / "full", _accelerator(), show_bar=False)
    # "killed" after step 2: the loop checkpoints and returns
    out = tmp_path / "killed"
    first = train_loop(load_backbone("embedded"), pairs, cfg, out, _accelerator(), should_stop=lambda s: s == 2,
                       show_bar=False)
    assert first.stopped and first.steps_done == 2 and latest_checkpoint(out).name == "step-2"
    assert json.loads((out / "progress.json").read_text())["stage"] == "stopped"
    saved = torch.load(latest_checkpoint(out) / "optimizer.pt", weights_only=True)
    seen = {}

    def check(step):
        if step == 3:
            seen["ok"] = True
        return False
    bb = load_backbone("embedded")
    resumed = train_loop(bb, pairs, cfg, out, _accelerator(), resume=True, should_stop=check, show_bar=False)
    assert resumed.steps_done == 4 and not resumed.stopped and seen
    # the optimizer state restored at step 2 is the saved one (step counts and both Adam moments)
    restored = torch.load(out / "checkpoints" / "step-2" / "optimizer.pt", weights_only=True)
    for k, st in saved["state"].items():
        for name in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(torch.as_tensor(st[name]), torch.as_tensor(restored["state"][k][name]))
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    full_log = [json.loads(x) for x in (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert [r["loss"] for r in log] == pytest.approx([r["loss"] for r in full_log], abs=1e-6)
    assert [r["lr"] for r in log] == pytest.approx([r["lr"] for r in full_log])
    a = {n: p for n, p in full.model.named_parameters() if p.requires_grad}
    b = {n: p for n, p in resumed.model.named_parameters() if p.requires_grad}
    assert all(torch.allclose(a[n], b[n], atol=1e-6) for n in a)


# --- the world's own pairs ---------------------------------------------------------------------------

def test_world_pairs_come_from_training_scenes_and_differ_by_one_object():
    from adapt.world import read_objects
    from adapt.train.world_pairs import WorldPairSpec, world_records, world_scenes

    spec = WorldPairSpec(scenes=30, inserted=1.0, omitted=1.0, yesno=1.0)
    scenes = world_scenes(spec)
    assert all(s.split == "train" and not s.is_trap for s in scenes)
    from adapt.train.world_pairs import FORBIDDEN_SEEDS, WORLD_SPLIT

    assert WORLD_SPLIT == "train" and {("validation", 1), ("test", 11)} <= FORBIDDEN_SEEDS
    # the model "hallucinated" an absent shape on the first scene
    from adapt.world import CATEGORIES

    fake = next(c for c in CATEGORIES if c not in scenes[0].categories)
    texts = [f"there is a red {fake} at the top."] + [s.description() for s in scenes[1:]]
    recs = world_records(scenes, texts, spec)
    kinds = {r.kind for r in recs}
    assert kinds == {"own", "inserted", "omitted", "yesno"}
    own = [r for r in recs if r.kind == "own"]
    assert len(own) == 1 and own[0].rejected == texts[0]
    for r in recs:
        s = scenes[int(r.id.split("-")[1])]
        if r.kind == "inserted":
            extra = set(read_objects(r.rejected)) - set(s.categories)
            assert len(read_objects(r.rejected)) == len(read_objects(r.chosen)) + 1 and len(extra) == 1
            if r.id.startswith("world-0-"):
                assert extra == {fake}  # the model's own hallucination is the one inserted
        if r.kind == "omitted":
            assert len(read_objects(r.rejected)) == len(read_objects(r.chosen)) - 1
        if r.kind in ("inserted", "omitted"):
            assert sorted(read_objects(r.chosen)) == sorted(o.category for o in s.objects)
    yes = [r for r in recs if r.kind == "yesno"]
    assert sum(r.chosen == "no." for r in yes) == sum(r.chosen == "yes." for r in yes)


# --- the command line ----------------------------------------------------------------------------------

def _cli(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    return code, [l for l in err.splitlines() if l.strip() and "Loading weights" not in l and "it/s]" not in l
                  and "item/s]" not in l]


@pytest.mark.parametrize("data, expect", [
    (f"rlaif-v:{DATA / 'missing.parquet'}", "no such file"),
    (f"rlaif-v:{DATA / 'bad.parquet'}", "cannot be read as parquet"),
    (f"rlhf-v:{DATA / 'bad.json'}", "not valid JSON"),
    ("coco:somewhere", "expected world, rlaif-v:PATH or rlhf-v:PATH"),
])
def test_bad_data_is_one_line_and_exit_2(data, expect, tmp_path, capsys):
    code, lines = _cli(["train", "dpo", "--out", str(tmp_path / "o"), "--data", data, "--steps", "1", "--no-bar"], capsys)
    assert code == 2 and len(lines) == 1 and expect in lines[0] and "Traceback" not in lines[0], lines


def test_a_set_with_no_usable_record_is_one_line(tmp_path, capsys):
    import shutil

    d = tmp_path / "d"
    d.mkdir()
    rows = json.loads((DATA / "rlhf_v.json").read_text())[2:]
    (d / "set.json").write_text(json.dumps(rows))
    shutil.copytree(DATA / "images", d / "images")
    code, lines = _cli(["train", "dpo", "--out", str(tmp_path / "o"), "--data", f"rlhf-v:{d / 'set.json'}",
                        "--steps", "1", "--no-bar", "--cache-dir", str(tmp_path / "c")], capsys)
    assert code == 2 and len(lines) == 1 and "no usable preference pairs: all 2 records were skipped" in lines[0], lines


def test_two_accelerate_processes_equal_one(tmp_path, pairs):
    """The CLI end to end: one process with a global batch of 2, then two processes with 1 each on the
    same pairs; the loss curves agree within float noise, and the saved model loads."""
    base = ["-m", "adapt", "train", "vag-dpo", "--data", RLAIF, "--pairs", str(pairs.root), "--steps", "3",
            "--lr", "1e-3", "--warmup-steps", "1", "--save-every", "2", "--threads", "1", "--no-bar"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ADAPT_CACHE": str(tmp_path / "cache")}
    one = subprocess.run([sys.executable, *base, "--batch", "2", "--out", str(tmp_path / "one"),
                          "--model-out", str(tmp_path / "shipped")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=200)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                          "--main_process_port", "29533", *base, "--batch", "1", "--out", str(tmp_path / "two")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert two.returncode == 0, two.stderr[-2000:]
    logs = [[json.loads(x) for x in (tmp_path / d / "train_log.jsonl").read_text().splitlines()] for d in ("one", "two")]
    assert [r["step"] for r in logs[0]] == [r["step"] for r in logs[1]] == [1, 2, 3]
    for key in ("loss", "margin", "accuracy", "lr"):
        assert [r[key] for r in logs[0]] == pytest.approx([r[key] for r in logs[1]], abs=1e-5), key
    s = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert s["processes"] == 2 and s["pairs"] == 3
    assert json.loads((tmp_path / "one" / "progress.json").read_text()) == {"done": 3, "total": 3, "stage": "done"}
    assert (tmp_path / "one" / "training_curves.png").stat().st_size > 1000
    assert (tmp_path / "one" / "adapter" / "adapter_config.json").exists()
    report = json.loads((tmp_path / "shipped" / "train_report.json").read_text())
    assert report["command"].startswith("python -m adapt train vag-dpo") and report["sides"] == ["enhanced", "noise"]
    bb = load_backbone(str(tmp_path / "shipped"))
    assert bb.model.dtype == torch.float32 and bb.generate(bb.prepare(pairs.image(pairs.pairs[0], "original"),
                                                                      "describe the image in detail."), 8).text
