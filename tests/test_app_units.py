"""App pieces without a server: figures from a Trace, token alignment, the job runner."""

import json
import time

import numpy as np
import pytest

pytest.importorskip("plotly")

from app import figures as F  # noqa: E402
from app import jobs as J  # noqa: E402
from app_helpers import selftest_kind, synthetic_trace  # noqa: E402


@pytest.fixture(scope="module")
def trace():
    return synthetic_trace()


def test_overlays_and_galleries(trace):
    layers = F.layer_gallery(trace)
    assert len(layers) == trace.num_layers and all(img.dtype == np.uint8 and img.ndim == 3 for img, _ in layers)
    assert sum("★" in cap for _, cap in layers) == 1
    maps = [cap for _, cap in F.anchor_gallery(trace)]
    assert maps[0].startswith("bias map") and maps[-1].startswith("debiased anchor")
    trace_nb = synthetic_trace()
    trace_nb.bias = trace_nb.debias_mask = None
    assert len(F.anchor_gallery(trace_nb)) == 2
    # every heat map carries its colour scale (and the galleries their titles) under the image
    base = F.display_image(trace.image)
    plain = F.overlay(base, trace.bias)
    tile, title = F.anchor_gallery(trace, base)[0]
    assert tile.shape[0] > plain.shape[0] and tile.shape[1] == plain.shape[1]
    np.testing.assert_array_equal(tile[: plain.shape[0]], plain)
    strip = tile[plain.shape[0]:]
    assert (strip.reshape(-1, 3).std(0) > 20).all()  # a coloured bar, not a blank strip
    assert F.step_map(trace, "steered", 0)[0].shape[0] > base.shape[0]
    assert F.enlarged(trace.image).size == (288, 288)  # a 96 px scene is not shown at 96 px
    tile, caption = F.step_map(trace, "steered", 999, layer=1)
    assert tile is not None and "past its end" in caption and "layer 1" in caption
    assert F.overlay(np.zeros((10, 12, 3), np.uint8), np.full((4, 4), np.nan)).shape == (10, 12, 3)


def test_charts_mark_threshold_and_interventions(trace):
    fig = F.amc_figure(trace)
    names = [t.name for t in fig.data]
    assert any(n.startswith("ASI intervention") for n in names)
    means = [i for i, n in enumerate(names) if n.endswith(": mean of monitored layers")]
    assert [names[i].split(":")[0] for i in means] == ["ADAPT-TF", "greedy"]  # greedy drawn last: on top
    greedy = fig.data[means[1]]
    assert greedy.line.dash == "dash" and greedy.line.color != fig.data[means[0]].line.color
    # the trigger is a legend entry, not a label on the data; the anchor phase (steps < K) is shaded
    trigger = next(t for t in fig.data if (t.name or "").startswith("trigger τ·S_ref"))
    assert trigger.y[0] == pytest.approx(0.012) and not fig.layout.annotations
    assert any("anchor phase: steps 0–2 (K=3)" in (n or "") for n in names)
    shade = [sh for sh in fig.layout.shapes if sh.type == "rect"]
    assert len(shade) == 1 and shade[0].x0 == -0.5 and shade[0].x1 == 2.5
    assert fig.layout.legend.y < 0  # under the axes, clear of the title
    # a trigger that does not read AMC gets no threshold line, and the legend says what it reads
    import copy

    by_mass = copy.copy(trace)  # the fixture is shared by the module: change a copy
    by_mass.config = {**trace.config, "asi": {**trace.config.get("asi", {}), "trigger": "mass", "mass_tau": 0.8}}
    mass = [t.name or "" for t in F.amc_figure(by_mass).data]
    assert "trigger: image mass < 0.8·M_ref (the anchor phase's), see the signals chart" in mass
    assert not any(n.startswith("trigger τ") for n in mass)
    one = F.amc_figure(trace, layer=2, step=3)
    assert any("layer 2" in (t.name or "") for t in one.data)
    assert F.criteria_figure(trace).layout.legend.y < 0
    sig = F.signals_figure(trace)
    assert len([t for t in sig.data if t.name in ("greedy", "ADAPT-TF")]) == 6
    crit = F.criteria_figure(trace)
    assert {t.name for t in crit.data} >= {"λ_l (right axis)", "fused c_l"}


def test_answers_are_token_aligned_with_hallucinations(trace):
    assert F.hallucinated_objects(trace, "unsteered") == ["moon"]
    assert F.hallucinated_objects(trace, "steered") == []
    pairs = F.highlighted(trace, "unsteered")
    assert ("".join(p for p, _ in pairs)).strip() == trace.unsteered.text.replace(" ,", ",").replace(" .", ".")
    assert [p.strip() for p, lab in pairs if lab == "hallucinated"] == ["moon"]
    html = F.alignment_html(trace, step=3)
    assert html.count("<table>") == 2 and "class='hal" in html and "steer" in html and "sel" in html
    trace.meta = {}
    labels = [lab for _, lab in F.highlighted(trace, "unsteered")]
    assert F.UNVERIFIED in labels and set(labels) <= {None, F.UNVERIFIED}  # never "in the image" unchecked
    assert "class='obj" not in F.alignment_html(trace) and "not verified" in F.alignment_html(trace)


def test_a_compared_method_is_named_on_every_view(tmp_path):
    """With another method in the unsteered slot (meta["compare"]), every view names it instead
    of greedy, and a saved trace keeps the name."""
    from adapt.trace import Trace

    trace = synthetic_trace()
    other = synthetic_trace()
    other.meta[F.COMPARE_KEY] = "pai"
    assert F.run_label(trace, "unsteered") == "greedy" and F.run_label(other, "unsteered") == "pai"
    assert "<th class='run'>pai</th>" in F.alignment_html(other) and "<th class='run'>greedy</th>" not in \
        F.alignment_html(other)
    names = [t.name for t in F.amc_figure(other).data]
    assert "pai: mean of monitored layers" in names and not any(n and n.startswith("greedy") for n in names)
    assert {t.name for t in F.signals_figure(other).data} >= {"pai", "ADAPT-TF"}
    assert F.step_map(other, "unsteered", 1)[1].startswith("pai · step 1")
    summary = F.summary_markdown(other)
    assert "**`pai` hallucinates:** `moon`" in summary and "Greedy" not in summary
    from app.ui.views import answer_label

    assert answer_label(other, "unsteered") == "pai (compared with ADAPT-TF)"
    assert answer_label(trace, "unsteered") == "Greedy (unsteered)"
    assert F.run_label(Trace.load(other.save(tmp_path / "t.zip")), "unsteered") == "pai"


def test_knobs_carry_operator_and_trigger():
    """The operator and trigger knobs start at the library's defaults, reach the config, come back
    from a saved trace's config, and a bad name is refused with the choices."""
    from adapt.config import OPERATORS, TRIGGERS, AdaptConfig, ConfigError

    from app.knobs import Knobs
    from app.ui.inspect import operator_choices, trigger_choices

    d = Knobs.defaults()
    assert (d.operator, d.trigger) == (AdaptConfig().asi.operator, AdaptConfig().asi.trigger)
    assert [v for _, v in operator_choices()] == list(OPERATORS) and [v for _, v in trigger_choices()] == list(TRIGGERS)
    values = d.values()
    values[10:14] = ["logprior", "amc", 0.7, 2.0]
    cfg = Knobs(*values).config()
    assert (cfg.asi.operator, cfg.asi.trigger, cfg.asi.mass_tau, cfg.asi.gamma) == ("logprior", "amc", 0.7, 2.0)
    assert Knobs.from_config(cfg.to_dict()).values() == Knobs(*values).values()
    assert Knobs(*d.values()[:10]).operator == d.operator  # an old client's ten knobs: the defaults
    values[10] = "boost-everything"
    with pytest.raises(ConfigError, match="asi.operator must be one of"):
        Knobs(*values).config().validate()


def test_subword_object_tokens():
    from app.figures.answers import _token_categories

    cats = _token_categories(["the", " cres", "cent", " and", " two", " star", "s", "."])
    assert cats[1] == cats[2] == "moon" and cats[5] == "star"


def test_running_metric_figure():
    rows = {"items-greedy": [{"i": 0, "chair_s": 1, "recall": 0.5}, {"i": 1, "chair_s": 0, "recall": 1.0}],
            "items-adapt-tf": [{"i": 0, "chair_s": 0, "recall": 0.5}]}
    keys = F.numeric_keys(rows)
    assert keys == ["chair_s", "recall"] and F.default_metric(keys) == "chair_s"
    items = {"items-greedy": [{"index": 0, "truth": ["star", "circle"], "mentioned": ["star", "moon"],
                               "hallucinated": ["moon"], "pope": [{"label": "yes", "pred": "yes"}, {"label": "no", "pred": "yes"}],
                               "info": {"interventions": 3}, "seconds": 0.5},
                              {"index": 1, "truth": ["ring"], "mentioned": ["ring"], "hallucinated": [], "pope": []}]}
    assert F.numeric_keys(items)[:4] == ["chair_s", "chair_i", "recall", "pope_acc"]
    assert list(F.running_metric_figure(items, "chair_i").data[0].y) == [0.5, 1 / 3]
    assert list(F.running_metric_figure(items, "recall").data[0].y) == [0.5, 0.75]
    fig = F.running_metric_figure(rows, "chair_s")
    assert [t.name for t in fig.data] == ["greedy", "adapt-tf"] and list(fig.data[0].y) == [1.0, 0.5]


def test_trace_roundtrip_renders_the_same(trace, tmp_path):
    from adapt.trace import Trace

    back = Trace.load(trace.save(tmp_path / "t.zip"))
    assert F.summary_markdown(back) == F.summary_markdown(trace)
    F.figures_zip(back, tmp_path / "figs.zip")
    import zipfile

    names = zipfile.ZipFile(tmp_path / "figs.zip").namelist()
    assert "figures.html" in names and sum(n.startswith("layer_") for n in names) == trace.num_layers


# ----------------------------------------------------------------------------------------- jobs
@pytest.fixture
def runner(tmp_path):
    J.register_kind(selftest_kind())
    r = J.JobRunner(tmp_path / "jobs")
    yield r
    r.shutdown(cancel_running=True)


def _wait(runner, job_id, statuses, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = runner.get(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.1)
    raise AssertionError(runner.get(job_id))


def test_params_are_validated():
    kind = J.KINDS["world-eval"]
    assert kind.clean({})["split"] == "validation"
    assert kind.clean({"seed": "3", "limit": 2.0})["seed"] == 3
    for bad in ({"split": "train"}, {"seed": -1}, {"limit": 1.5}, {"methods": "greedy,beam"}, {"nope": 1}):
        with pytest.raises(J.JobError):
            kind.clean(bad)
    argv = kind.build(kind.clean({"limit": 4, "methods": "greedy"}), J.Path("/tmp/x"))
    assert argv[-6:] == ["--method", "greedy", "--out", "/tmp/x", "--limit", "4"]
    with pytest.raises(J.JobError):
        J.KINDS["export-anchors"].build(J.KINDS["export-anchors"].clean({}), J.Path("/tmp/x"))


def test_jobs_queue_finish_and_survive_a_restart(runner, tmp_path):
    a = runner.submit("selftest", {"items": 3, "delay": 0.05})
    b = runner.submit("selftest", {"items": 2, "delay": 0.05})
    assert runner.get(b.id).status in ("queued", "running", "finished")  # one at a time
    assert _wait(runner, a.id, ("finished",)).returncode == 0
    assert _wait(runner, b.id, ("finished",)).status == "finished"
    assert runner.summary(a.id) == {"demo": {"score": 1.0, "n": 3}}
    assert len(runner.rows(a.id)["items-demo"]) == 3 and "item 2" in runner.log_tail(a.id)
    # a "running" record whose process is gone (server restarted) is closed on the next start
    rec = runner.job_dir(a.id) / "job.json"
    doc = json.loads(rec.read_text())
    doc.update(status="running", pid=2 ** 22 + 12345, ended=None)
    rec.write_text(json.dumps(doc))
    again = J.JobRunner(runner.root)
    job = again.get(a.id)
    assert job.status == "finished" and "restarted" in job.message  # its summary.json exists
    assert {j.id for j in again.list()} == {a.id, b.id}


def test_cancel_running_and_queued(runner):
    long = runner.submit("selftest", {"items": 500, "delay": 0.2})
    waiting = runner.submit("selftest", {"items": 1, "delay": 0})
    _wait(runner, long.id, ("running",))
    assert runner.cancel(waiting.id).status == "cancelled"
    t0 = time.time()
    job = runner.cancel(long.id)
    assert job.status == "cancelled" and time.time() - t0 < 6
    assert not J._alive(job.pid, job.pid_start)
    with pytest.raises(J.JobError):
        runner.get("../etc")


def test_world_training_runs_as_a_job_with_live_loss_rows(runner):
    """The training pipeline through the admin runner, a few steps: progress, loss rows as it
    goes, a summary row, and a model folder the backbone interface loads."""
    job = runner.submit("world-train", {"steps": 3, "vision_steps": 2, "pool": 16, "eval_n": 2, "threads": 1})
    done = _wait(runner, job.id, ("finished", "failed"), timeout=240)
    assert done.status == "finished", runner.log_tail(job.id)
    rows = runner.rows(job.id)["train_log"]
    assert [r["stage"] for r in rows] == ["vision", "vision", "language", "language"]
    assert runner.progress(job.id)["stage"] == "done"
    summary = runner.summary(job.id)["embedded-model"]
    assert summary["n"] == 2 and 0 <= summary["recall"] <= 1 and summary["params"] > 1e6
    # trained on the job's prior, measured on the evaluation world the benchmark uses
    from dataclasses import asdict

    from adapt.world.scenes import WorldConfig

    report = json.loads((runner.out_dir(job.id) / "train_report.json").read_text())
    assert report["quality"]["world"] == json.loads(json.dumps(asdict(WorldConfig())))
    from adapt.backbones import load_backbone

    bb = load_backbone(str(runner.out_dir(job.id)))
    assert bb.family == "llava" and bb.num_layers == 6


# ------------------------------------------------------------------------------------ examples
def test_shipped_examples_are_trap_scenes_with_ground_truth():
    from adapt.world.datasets import make_split  # noqa: F401  (the world package is importable)
    from adapt.world.scenes import sample_scene

    from app.examples import load_presets
    from app.scenes import SceneRegistry, image_key
    from app.examples import register_presets
    from PIL import Image

    presets = load_presets()
    if not presets:
        pytest.skip("no example scenes shipped yet (python -m app.examples)")
    reg = SceneRegistry()
    register_presets(reg, presets)
    for e in presets:
        img = Image.open(e["path"]).convert("RGB")
        assert image_key(img) == e["sha1"]
        assert reg.lookup(img)["objects"] == e["objects"]
        scene = sample_scene(e["scene_seed"], trap=True, split=e["split"])
        assert scene.categories == e["objects"] and e["is_trap"]
        assert set(e["hallucinated"]["unsteered"]) - set(e["objects"])
        # what each run gets wrong is recorded and follows from the recorded answers
        from app.examples import outcome
        from app.scenes import answer_errors

        g, a = answer_errors(e["greedy"], e), answer_errors(e["adapt_tf"], e)
        assert e["outcome"] == outcome(g, a) and set(e["absent_partners"]) & set(g["objects"])
    # picked by the stated rule: the first trap scenes where greedy names the absent partner
    import json

    from app.examples import PRESETS

    doc = json.loads(PRESETS.read_text())
    assert doc["rule"].startswith(f"the first {len(presets)} trap scenes")
    assert sum(doc["outcomes"].values()) == len(presets)


def test_answer_errors_check_colours_and_places():
    from app.scenes import answer_errors, read_claims

    meta = {"objects": ["star", "ring"], "scene_objects": [{"category": "star", "colour": "purple", "position": "left"},
                                                           {"category": "ring", "colour": "blue", "position": "top"}]}
    claims = read_claims("there is a small purple star on the right and a blue ring at the top left.")
    assert [(c.category, c.colour, c.position) for c in claims] == [("star", "purple", "right"), ("ring", "blue", "top left")]
    errs = answer_errors("there is a purple star on the right. there is also a red ring at the top. "
                         "finally, there is a moon.", meta)
    assert errs == {"objects": ["moon"], "colour": ["ring: said red, is blue"],
                    "position": ["star: said right, is left"]}
    assert answer_errors("a purple star on the left and a blue ring at the top.", meta) == \
        {"objects": [], "colour": [], "position": []}


def test_examples_still_fool_the_embedded_model():
    """Greedy decoding of the shipped model still names an absent object on every example scene
    (when the model is retrained, regenerate them: python -m app.examples)."""
    from adapt.backbones import BackboneError, load_backbone
    from adapt.config import AdaptConfig
    from adapt.world.language import read_objects

    from app.examples import load_presets
    from PIL import Image

    presets = load_presets()
    try:
        bb = load_backbone("embedded")
    except BackboneError:
        pytest.skip("assets/embedded not present")
    if not presets:
        pytest.skip("no example scenes shipped yet")
    n = AdaptConfig().max_new_tokens
    for e in presets:
        gen = bb.generate(bb.prepare(Image.open(e["path"]).convert("RGB"), e["question"]), max_new_tokens=n,
                          capture=False)
        absent = set(read_objects(gen.text)) - set(e["objects"])
        assert absent, f"{e['file']}: greedy no longer hallucinates ({gen.text!r}); regenerate the examples"


def test_admin_tables_keep_their_headers():
    """summary.json as one row per metric (columns: the methods), and the items' first column
    naming the method, not 'file'."""
    from app.ui.admin import items_table, summary_table

    headers, rows = summary_table({"greedy": {"chair_i": 0.0781, "recall": 0.916, "pope_random_acc": 0.9},
                                   "adapt-tf": {"chair_i": 0.08, "recall": 0.911}})
    assert headers == ["metric", "greedy", "adapt-tf"]
    assert rows[0] == ["chair_i", 0.0781, 0.08] and rows[2] == ["pope_random_acc", 0.9, None]
    headers, rows = items_table({"items-greedy": [{"index": 0, "hallucinated": ["moon"]}],
                                 "items-adapt-tf": [{"index": 0, "hallucinated": []}]})
    assert headers[0] == "method" and {r[0] for r in rows} == {"greedy", "adapt-tf"}
    assert items_table({"train_log": [{"step": 1}]})[0][0] == "file"


# ---------------------------------------------------------------------------------- comparison
def _embedded():
    from adapt.backbones import BackboneError, load_backbone

    try:
        return load_backbone("embedded")
    except BackboneError:
        pytest.skip("assets/embedded not present")


def test_compare_with_pai_shows_pais_answer():
    """On a shipped trap scene where PAI and greedy write different descriptions, compare="pai"
    puts PAI's own answer (the registry's, word for word) in the unsteered slot, its absent objects
    recounted from its text; ADAPT-TF's answer is the same as beside greedy."""
    from adapt.images import load_image
    from adapt.methods import get_method
    from adapt.world.language import read_objects

    from app.analysis import analyse, compare_names
    from app.examples import load_presets, register_presets
    from app.knobs import Knobs
    from app.scenes import SceneRegistry

    presets = load_presets()
    if not presets:
        pytest.skip("no example scenes shipped yet")
    bb = _embedded()
    reg = SceneRegistry()
    register_presets(reg, presets)
    knobs = Knobs.defaults()
    pai = get_method("pai")
    for e in presets:
        img = load_image(e["path"])
        text = pai.answer(bb, img, e["question"], knobs.max_new_tokens).text
        if text != e["greedy"]:
            break
    else:
        raise AssertionError("PAI writes greedy's description on every shipped scene")
    base = analyse(bb, img, e["question"], knobs, meta=reg.lookup(img))
    vs_pai = analyse(bb, img, e["question"], knobs, meta=reg.lookup(img), compare="pai")
    assert vs_pai.unsteered.text == text != base.unsteered.text == e["greedy"]
    assert vs_pai.steered.text == base.steered.text
    absent = list(dict.fromkeys(c for c in read_objects(text) if c not in e["objects"]))
    assert F.hallucinated_objects(vs_pai, "unsteered") == absent
    assert F.hallucinated_objects(base, "unsteered") == e["hallucinated"]["unsteered"]
    assert vs_pai.meta["compare"] == "pai" and "compare" not in base.meta
    assert f"**Compared with** `pai`: {get_method('pai').description}" in F.summary_markdown(vs_pai)
    assert "Compared with" not in F.summary_markdown(base)
    # token-aligned against ADAPT-TF, with its attention recorded at every step
    assert vs_pai.unsteered.maps.shape[0] == len(vs_pai.unsteered.tokens) > 0
    assert "<th class='run'>pai</th>" in F.alignment_html(vs_pai)
    assert {"greedy", "pai", "image-boost", "adapt-tf:paper"} <= set(compare_names())
    assert "adapt-tf" not in compare_names()  # with the tab's knobs it is the steered run itself


def test_compare_with_a_method_that_records_no_attention():
    """greedy:sdpa captures nothing: the text is shown and aligned, every view still draws."""
    from adapt.config import ConfigError
    from adapt.world.datasets import make_split

    from app.analysis import analyse
    from app.knobs import Knobs
    from app.ui.views import render

    bb = _embedded()
    scene = make_split("test", 2)[-1]
    knobs = Knobs.defaults()
    knobs.max_new_tokens = 12
    trace = analyse(bb, scene.image(), "describe the image in detail.", knobs, compare="greedy:sdpa")
    assert trace.unsteered.maps.shape[0] == 0 and len(trace.unsteered.tokens) == len(trace.unsteered.token_ids) > 0
    assert "no attention recorded" in F.step_map(trace, "unsteered", 0)[1]
    views = render(trace)
    assert "greedy:sdpa" in views[3]
    with pytest.raises(ConfigError, match="unknown comparison method 'beam'; choose one of greedy"):
        analyse(bb, scene.image(), "describe the image in detail.", knobs, compare="beam")


# --------------------------------------------------------------------------- benchmark task jobs
def test_task_job_with_a_missing_path_is_refused_before_it_starts(runner, tmp_path):
    before = set(runner.root.iterdir())
    for params, message in (
            ({"task": "pope", "images": str(tmp_path)}, "task pope needs 'questions'"),
            ({"task": "pope", "questions": str(tmp_path / "coco_pope_random.json"), "images": str(tmp_path)},
             f"questions: '{tmp_path / 'coco_pope_random.json'}' does not exist on the server"),
            ({"task": "chair-coco", "annotations": str(tmp_path / "none"), "images": str(tmp_path)},
             "annotations: "),
            ({"task": "world", "images": str(tmp_path)}, "task world does not read 'images'"),
            ({"task": "coco-captions"}, "'coco-captions' is not one of world, "),
    ):
        with pytest.raises(J.JobError) as info:
            runner.submit("eval-task", params)
        assert message in str(info.value)
    assert set(runner.root.iterdir()) == before  # nothing was started or recorded
    (tmp_path / "q.json").write_text("")
    argv = J.KINDS["eval-task"].build(J.KINDS["eval-task"].clean(
        {"task": "pope", "questions": f"{tmp_path / 'q.json'}", "images": str(tmp_path), "methods": "greedy,pai",
         "parser": "strict", "model": "some/model"}), J.Path("/tmp/x"))
    assert argv[argv.index("--questions") + 1] == str(tmp_path / "q.json") and argv[argv.index("--parser") + 1] == "strict"
    assert argv[argv.index("--backbone") + 1] == "some/model" and "--split" not in argv


def test_world_task_runs_as_a_job_with_progress_and_results(runner):
    """The task runner through the admin runner: progress.json from the runner's own callback,
    one JSONL row per scene, summary.json as the results table."""
    from app.ui.admin import summary_table

    job = runner.submit("eval-task", {"task": "world", "methods": "greedy", "limit": 3, "pope": False,
                                      "max_new_tokens": 12})
    done = _wait(runner, job.id, ("finished", "failed"), timeout=120)
    assert done.status == "finished", runner.log_tail(job.id)
    assert runner.progress(job.id) == {"done": 3, "total": 3, "stage": "done"}
    rows = runner.rows(job.id)["items-greedy"]
    assert len(rows) == 3 and all(len(r["description"].split()) <= 12 for r in rows)
    summary = runner.summary(job.id)
    headers, table = summary_table(summary)
    assert headers == ["metric", "greedy"] and ["n", 3] in table
    found = [len(set(r["mentioned"]) & set(r["truth"])) for r in rows]
    truth = [len(set(r["truth"])) for r in rows]
    assert summary["greedy"]["recall"] == pytest.approx(sum(found) / sum(truth), abs=1e-3)  # pooled
    per_scene = sum(f / t for f, t in zip(found, truth)) / 3  # the live plot: running mean over scenes
    assert list(F.running_metric_figure(runner.rows(job.id), "recall").data[0].y)[-1] == pytest.approx(per_scene)


# ---------------------------------------------------------------------------------- training jobs
def test_training_log_rows_become_the_plot_points():
    rows = [{"step": 1, "loss": 0.69, "margin": 0.0, "accuracy": 0.0, "lr": 1e-6, "seconds": 0.5},
            {"step": 2, "loss": 0.65, "margin": 0.2, "accuracy": 0.5, "lr": 2e-6, "seconds": 1.0},
            {"step": 3, "loss": 0.50, "margin": 0.7, "accuracy": 1.0, "lr": 3e-6, "seconds": 1.5}]
    assert F.is_training_log(rows) and not F.is_training_log([{"index": 0, "chair_s": 1.0}])
    fig = F.training_figure(rows, smooth=2)
    assert {t.name for t in fig.data} == {"per step", "mean of 2"}  # one legend entry each for the panels
    assert [t.showlegend for t in fig.data] == [True, True, False, False, False, False]
    by_axis = {t.xaxis: t for t in fig.data if t.name.endswith("per step")}
    loss, margin, acc = (by_axis[a] for a in ("x", "x2", "x3"))
    assert list(loss.x) == [1, 2, 3] and list(loss.y) == [0.69, 0.65, 0.50]
    assert list(margin.y) == [0.0, 0.2, 0.7] and list(acc.y) == [0.0, 0.5, 1.0]
    mean = next(t for t in fig.data if t.name.endswith("mean of 2") and t.xaxis == "x")
    assert list(mean.y) == pytest.approx([0.69, 0.67, 0.575])
    assert [a.text for a in fig.layout.annotations] == ["loss", "reward margin", "accuracy (chosen reward > rejected)"]
    assert fig.layout.title.text == "training: step 3 · loss 0.5 · margin 0.7 · accuracy 1"
    # the world model's log: two stages that count from 1 each are two lines, not one zigzag
    staged = [{"stage": "vision", "step": 1, "loss": 2.0}, {"stage": "vision", "step": 2, "loss": 1.5},
              {"stage": "language", "step": 1, "loss": 4.0}]
    names = [t.name for t in F.training_figure(staged).data]
    assert names == ["vision: per step", "vision: mean of 10", "language: per step"]


@pytest.fixture
def fake_trainer(tmp_path):
    """The two training kinds with the stand-in trainer (the real ones are put back after)."""
    from app import trainjob
    from app_helpers import fake_train_command

    saved = {k: J.KINDS[k] for k in ("train-vag-dpo", "train-dpo")}
    trainjob.register(fake_train_command(tmp_path))
    yield
    J.KINDS.update(saved)


def test_training_job_progress_cancel_resume_and_tuned_model(runner, fake_trainer, monkeypatch, tmp_path):
    """Against the train CLI's file contract: live rows and progress, cancel (SIGTERM: the step in
    flight is checkpointed), resume in the same folder with --resume, and the finished model in
    the app's backbone choices."""
    from app import trainjob
    from app.ui.state import App

    monkeypatch.setenv("FAKE_TRAIN_DELAY", "0.3")
    job = runner.submit("train-vag-dpo", {"steps": 12, "lr": 1e-5, "beta": 0.1})
    assert job.argv[3:] == ["train", "vag-dpo", "--out", str(runner.out_dir(job.id)), "--data", "world", "--no-bar",
                            "--steps", "12", "--lr", "1e-05", "--beta", "0.1"]
    deadline = time.time() + 30
    while len(runner.rows(job.id).get("train_log", [])) < 3 and time.time() < deadline:
        time.sleep(0.1)
    with pytest.raises(J.JobError, match="is running: there is nothing to resume"):
        runner.resume(job.id)
    stopped = runner.cancel(job.id)
    assert stopped.status == "cancelled" and stopped.returncode == 130  # it stopped itself on SIGTERM
    ckpts = sorted((runner.out_dir(job.id) / "checkpoints").glob("step-*"))
    at = int(ckpts[-1].name.split("-")[1])
    assert 3 <= at < 12 and runner.progress(job.id)["done"] == at
    shipped = [("embedded-vagdpo (shipped VAG-DPO tuning of the embedded model)", "embedded-vagdpo")]
    assert trainjob.tuned_models(runner) == shipped  # the job has not finished: only the shipped model
    monkeypatch.setenv("FAKE_TRAIN_DELAY", "0.01")
    again = runner.resume(job.id)
    assert again.id == job.id and again.argv[-1] == "--resume" and again.status in ("queued", "running")
    done = _wait(runner, job.id, ("finished", "failed"))
    assert done.status == "finished", runner.log_tail(job.id)
    assert runner.summary(job.id) == {"objective": "vag-dpo", "steps": 12, "resumed_from": at}
    steps = [r["step"] for r in runner.rows(job.id)["train_log"]]
    assert steps == list(range(1, 13))  # the log continues, no step twice
    fig = F.training_figure(runner.rows(job.id)["train_log"])
    assert list(fig.data[0].y) == [round(0.7 / s, 6) for s in range(1, 13)]
    with pytest.raises(J.JobError, match="finished: there is nothing to resume"):
        runner.resume(job.id)
    # the tuned model joins the backbone choices by name; the name resolves to the job's folder
    assert trainjob.tuned_models(runner) == shipped + [(f"VAG-DPO-tuned embedded · job {job.id}", f"job:{job.id}")]
    app = App(admin_token="x", jobs_root=runner.root, warm=False)
    assert (f"VAG-DPO-tuned embedded · job {job.id}", f"job:{job.id}") in app.backbone_choices()
    assert app.resolve_backbone(f"job:{job.id}") == str(runner.out_dir(job.id) / "model")
    app.runner.shutdown()
    from adapt.backbones import BackboneError

    with pytest.raises(BackboneError, match="no job 'nope'"):
        app.resolve_backbone("job:nope")


def test_training_params_are_checked_before_the_job_starts(runner, tmp_path):
    before = set(runner.root.iterdir())
    for params, message in (({"data": f"rlaif-v:{tmp_path / 'missing.parquet'}"}, "does not exist on the server"),
                            ({"data": "coco"}, "is not world, rlaif-v:PATH or rlhf-v:PATH"),
                            ({"extra": "--out elsewhere"}, "may not set --out"),
                            ({"extra": "--sft-weight 1 --model-out=assets/embedded"}, "may not set --model-out"),
                            ({"extra": "--lora-r '16"}, "parameter 'extra': No closing quotation"),
                            ({"steps": 0}, "must be ≥ 1")):
        with pytest.raises(J.JobError, match=message):
            runner.submit("train-dpo", params)
    assert set(runner.root.iterdir()) == before
    with pytest.raises(J.JobError, match="cannot be resumed"):
        job = runner.submit("selftest", {"items": 1, "delay": 0})
        _wait(runner, job.id, ("finished",))
        doc = runner.get(job.id)
        doc.status = "failed"
        runner._write(doc)
        runner.resume(job.id)


def test_real_training_job_on_the_embedded_model(runner):
    """`python -m adapt train dpo` through the runner, a few steps on world pairs: its log rows
    are what the plot draws, and the tuned model loads through the app's backbone name."""
    pytest.importorskip("adapt.train.cli", reason="the train CLI (adapt/train) is not in this checkout")
    from adapt.backbones import load_backbone

    from app.trainjob import resolve, tuned_models

    job = runner.submit("train-dpo", {"world_scenes": 8, "steps": 3, "eval_scenes": 0, "threads": 1,
                                      "extra": "--log-every 1 --save-every 2"})
    done = _wait(runner, job.id, ("finished", "failed"), timeout=240)
    assert done.status == "finished", runner.log_tail(job.id)
    rows = runner.rows(job.id)["train_log"]
    assert [r["step"] for r in rows] == [1, 2, 3]
    fig = F.training_figure(rows)
    assert list(fig.data[0].y) == [r["loss"] for r in rows] and runner.progress(job.id)["stage"] == "done"
    assert runner.summary(job.id)["objective"] == "dpo"
    (value,) = [v for _, v in tuned_models(runner) if v == f"job:{job.id}"]
    bb = load_backbone(resolve(value, runner))
    assert bb.family == "llava" and bb.num_layers == 6


def test_task_job_resumes_after_a_cancel(runner):
    """A cancelled task job continues in its own folder: the items it had are not answered again."""
    job = runner.submit("eval-task", {"task": "world", "methods": "greedy", "limit": 24, "pope": False,
                                      "batch_size": 2})
    deadline = time.time() + 60
    while len(runner.rows(job.id).get("items-greedy", [])) < 4 and time.time() < deadline:
        time.sleep(0.05)
    runner.cancel(job.id)
    kept = [r["id"] for r in runner.rows(job.id)["items-greedy"]]
    assert 4 <= len(kept) < 24, "the job finished before it could be cancelled"
    assert runner.resume(job.id).argv == job.argv  # the same command: the runner skips what is on disk
    done = _wait(runner, job.id, ("finished", "failed"), timeout=120)
    assert done.status == "finished", runner.log_tail(job.id)
    ids = [r["id"] for r in runner.rows(job.id)["items-greedy"]]
    assert sorted(ids, key=int) == [str(i) for i in range(24)] and ids[:len(kept)] == kept
    assert runner.summary(job.id)["greedy"]["n"] == 24


def test_admin_detail_of_a_training_job(fake_trainer, monkeypatch, tmp_path):
    """What the Admin tab shows for a finished training job: the per-step plot of its log rows
    (the metric box hidden: it has no say there), the summary without server paths, and where
    its tuned model is offered."""
    import gradio as gr

    from app.ui.admin import AdminTab
    from app.ui.state import App

    monkeypatch.setenv("FAKE_TRAIN_DELAY", "0")
    app = App(admin_token="secret", jobs_root=tmp_path / "admin-jobs", warm=False)  # its own runner
    runner = app.runner
    with gr.Blocks():
        tab = AdminTab(app)
    job = runner.submit("train-dpo", {"steps": 4})
    assert _wait(app.runner, job.id, ("finished", "failed")).status == "finished"
    (runner.out_dir(job.id) / "summary.json").write_text(json.dumps({"model": str(runner.out_dir(job.id) / "model")}))
    info, log, fig, results, metric, items = tab.detail(job.id, None)
    assert f"Tuned model: **DPO-tuned embedded · job {job.id}**" in info
    loss = [t for t in fig.data if t.name == "per step" and t.xaxis == "x"][0]
    assert list(loss.x) == [1, 2, 3, 4] and list(loss.y) == [round(0.7 / s, 6) for s in range(1, 5)]
    assert metric.visible is False
    assert results.value["data"] == [["model", "model"]]
    app.runner.shutdown()
