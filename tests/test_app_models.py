"""Which models the public app loads (issue 20.3), what it says about what a model cannot know
(20.8), the examples' outcome labels (20.9) and the knobs a reopened trace restores (20.4).

Models are faked where only the cache's rules are under test (a loader that counts its calls or
waits for a signal); the embedded model is used where its tokenizer and context are the point."""

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adapt.backbones import EMBEDDED_DIR, BackboneError
from app.models import ANY_MODEL_ENV, MODELS_ENV, Models

needs_model = pytest.mark.skipif(not (EMBEDDED_DIR / "config.json").exists(), reason="assets/embedded not present")
PROBES = ["/etc", "../../etc/passwd", "/etc/passwd", "/no/such/folder", "some-org/some-model"]


class FakeLoader:
    """Stands in for load_backbone: records its calls; ``gate[name]`` (an Event) holds a load until set."""

    def __init__(self, fail=(), gate=None):
        self.calls, self.fail, self.gate = [], set(fail), dict(gate or {})
        self.entered = {name: threading.Event() for name in self.gate}

    def __call__(self, source):
        self.calls.append(source)
        if source in self.gate:
            self.entered[source].set()
            assert self.gate[source].wait(60), "the test never released the load"
        if source in self.fail:
            raise OSError(f"{source} is broken")
        return f"backbone<{source}>"


def _without_name(message: str, name: str) -> str:
    return message.replace(f"'{name}'", "'NAME'")


@pytest.fixture(autouse=True)
def _no_operator_env(monkeypatch):
    for var in (MODELS_ENV, "ADAPT_BACKBONES", ANY_MODEL_ENV, "ADAPT_MODEL"):
        monkeypatch.delenv(var, raising=False)


# ----------------------------------------------------------------------------------- allow-list
def test_names_not_offered_are_refused_alike_and_never_loaded(tmp_path):
    folder, file = tmp_path / "a-folder", tmp_path / "a-file"
    folder.mkdir()
    file.write_text("x")
    loader = FakeLoader()
    models = Models("embedded", loader=loader)
    messages = {}
    for name in PROBES + [str(folder), str(file)]:
        with pytest.raises(BackboneError) as info:
            models.get(name)
        messages[name] = _without_name(str(info.value), name)
    assert loader.calls == []  # nothing was even looked at
    assert len(set(messages.values())) == 1, messages  # the same line whether the path exists or not
    line = next(iter(messages.values()))
    assert "is not offered on this server; choose one of: embedded" in line
    for leak in ("directory", "file", "exist", "config.json", "hub"):
        assert leak not in line.replace("'NAME'", "")
    assert models.get("embedded") == "backbone<embedded>" and models.get("") == "backbone<embedded>"


def test_the_operator_list_and_the_default_are_offered(tmp_path, monkeypatch):
    monkeypatch.setenv(MODELS_ENV, f" {tmp_path / 'llava'} , org/model-a,")
    loader = FakeLoader()
    models = Models(str(tmp_path / "default-model"), capacity=8, loader=loader)
    for name in (str(tmp_path / "llava"), "org/model-a", str(tmp_path / "default-model"), "embedded"):
        assert models.get(name) == f"backbone<{name}>"
    with pytest.raises(BackboneError, match="not offered"):
        models.get(str(tmp_path / "llava") + "/")  # exactly the operator's spelling, nothing near it
    with pytest.raises(BackboneError, match="not offered") as info:
        models.get("org/model-b")
    # the choices by their shown names: a folder by its own name, never the server's path
    assert "choose one of: embedded, default-model, llava, org/model-a" in str(info.value)
    assert str(tmp_path) not in str(info.value)
    assert models.get("llava") == f"backbone<{tmp_path / 'llava'}>"  # the shown name stands for the folder
    assert loader.calls.count(str(tmp_path / "llava")) == 1


def test_free_text_only_when_the_operator_allows_it_and_then_without_leaks(tmp_path, monkeypatch):
    folder, file = tmp_path / "not-a-model", tmp_path / "weights.bin"
    folder.mkdir()
    file.write_text("x")
    monkeypatch.setenv(ANY_MODEL_ENV, "1")
    models = Models("embedded")  # the real loader: the folder, the file and the missing path all fail
    messages = {}
    for name in (str(folder), str(file), str(tmp_path / "missing"), "/etc"):
        with pytest.raises(BackboneError) as info:
            models.get(name)
        messages[name] = _without_name(str(info.value), name)
    assert len(set(messages.values())) == 1, messages
    assert "could not load the model 'NAME'" in next(iter(messages.values()))


def test_a_failed_load_is_answered_from_memory(monkeypatch):
    monkeypatch.setenv(MODELS_ENV, "org/broken")
    loader = FakeLoader(fail={"org/broken"})
    models = Models("embedded", loader=loader)
    for _ in range(3):
        with pytest.raises(BackboneError, match="could not load the model 'org/broken': OSError"):
            models.get("org/broken")
    assert loader.calls == ["org/broken"]  # no retry storm (a hub id retried for 23 s per click)


def test_an_offered_model_that_fails_says_why_without_the_server_path(tmp_path, monkeypatch):
    folder = tmp_path / "llava-broken"
    folder.mkdir()
    monkeypatch.setenv(MODELS_ENV, str(folder))
    with pytest.raises(BackboneError) as info:
        Models("embedded").get("llava-broken")  # the operator's folder, by the name the box shows
    line = str(info.value)
    assert "could not load the model 'llava-broken'" in line and "without a config.json" in line
    assert str(tmp_path) not in line


def test_a_slow_load_does_not_block_a_loaded_model():
    release = threading.Event()
    loader = FakeLoader(gate={"org/slow": release})
    models = Models("embedded", offered=lambda: ["embedded", "org/slow"], loader=loader)
    assert models.get("embedded") == "backbone<embedded>"
    results = []
    slow = [threading.Thread(target=lambda: results.append(models.get("org/slow"))) for _ in range(2)]
    for t in slow:
        t.start()
    assert loader.entered["org/slow"].wait(30)
    got = []
    fast = threading.Thread(target=lambda: got.append(models.get("embedded")))
    fast.start()
    fast.join(30)
    assert got == ["backbone<embedded>"] and not release.is_set()  # served while the slow load still waits
    assert not models.compute.locked()  # loading never takes the analyses' lock
    release.set()
    for t in slow:
        t.join(30)
    assert results == ["backbone<org/slow>"] * 2
    assert loader.calls == ["embedded", "org/slow"]  # two visitors, one load


def test_preload_starts_a_load_in_the_background_and_refuses_at_once():
    release = threading.Event()
    loader = FakeLoader(gate={"org/slow": release})
    models = Models("embedded", offered=lambda: ["embedded", "org/slow"], loader=loader)
    with pytest.raises(BackboneError, match="not offered"):
        models.preload("/etc")
    assert models.preload("org/slow") is True  # returns while the load waits
    assert loader.entered["org/slow"].wait(30) and not models.is_loaded("org/slow")
    assert models.preload("org/slow") is False  # already loading: not twice
    release.set()
    assert models.get("org/slow") == "backbone<org/slow>" and loader.calls == ["org/slow"]
    assert models.preload("org/slow") is False  # loaded


@needs_model
def test_a_slow_load_does_not_hold_up_an_analysis_on_a_loaded_model(monkeypatch, tmp_path):
    """Through the Inspect tab's own analysis: visitor A's model is still loading while visitor B's
    analysis on the loaded embedded model runs to its end."""
    import gradio as gr

    from adapt.backbones import load_backbone
    from app.knobs import Knobs
    from app.ui import App
    from app.ui.inspect import InspectTab

    monkeypatch.setenv(MODELS_ENV, "org/slow")
    app = App(warm=False)
    release, entered = threading.Event(), threading.Event()

    def loader(source):
        if source == "org/slow":
            entered.set()
            assert release.wait(120)
            return load_backbone("embedded")
        return load_backbone(source)

    app.models.loader = loader
    with gr.Blocks():
        tab = InspectTab(app)
    img = tmp_path / "img.png"
    Image.fromarray((np.random.RandomState(1).rand(40, 40, 3) * 255).astype("uint8")).save(img)
    knobs = Knobs.defaults()
    knobs.num_noise, knobs.max_new_tokens = 0, 6
    app.models.get("embedded")
    out = {}
    a = threading.Thread(target=lambda: out.setdefault("a", tab.analysis(str(img), "describe the image.",
                                                                          "org/slow", *knobs.values())))
    a.start()
    assert entered.wait(60)
    b = threading.Thread(target=lambda: out.setdefault("b", tab.analysis(str(img), "describe the image.",
                                                                          "embedded", *knobs.values())))
    b.start()
    b.join(120)
    try:
        assert "b" in out and not release.is_set() and "a" not in out
        assert out["b"][1].meta["model"] == "embedded"
    finally:
        release.set()
        a.join(120)
    assert out["a"][1].meta["model"] == "org/slow"


# ------------------------------------------------------------------ what a model cannot know
@needs_model
def test_unknown_words_and_the_context_limit_on_the_embedded_model():
    from adapt.prompts import check_context, context_limit, unknown_words

    bb = Models("embedded").get("embedded")
    assert unknown_words("Is there a cat, sleeping on the mat? describe the image.", bb.processor) == \
        ["cat", "sleeping", "mat"]
    assert unknown_words("is there a red star in the image?", bb.processor) == []
    assert context_limit(bb.model.config, bb.tokenizer) == (bb.model.config.text_config.max_position_embeddings,
                                                           "its max_position_embeddings")
    img = Image.new("RGB", (64, 64), "white")
    with pytest.raises(BackboneError) as info:
        bb.prepare(img, "there " * 333)  # under the 2 000-character limit, over the model's context
    line = str(info.value)
    assert "too long for this model" in line and "at most 320 tokens" in line and "64 of them the image" in line
    prepared = bb.prepare(img, "describe the image in detail.")
    room = 320 - prepared.prompt_len
    with pytest.raises(BackboneError, match=f"ask for at most {room} new tokens"):
        bb.generate(prepared, room + 1)
    assert bb.generate(prepared, 4).token_ids  # within the context it answers
    check_context(300, None, 10**6)  # no known limit: nothing to refuse


@needs_model
def test_the_cli_refuses_a_question_over_the_context(tmp_path, capsys):
    from adapt.cli import main

    bad = Path(__file__).resolve().parent / "data" / "cli-bad" / "ok.png"
    code = main(["run", "--image", str(bad), "--question", "there " * 333, "--out", str(tmp_path / "o"),
                 "--max-new-tokens", "6", "--cache-dir", str(tmp_path / "cache")])
    lines = [l for l in capsys.readouterr().err.splitlines() if l.strip() and "Loading weights" not in l
             and "it/s]" not in l]
    assert code == 2 and len(lines) == 1, lines
    assert "too long for this model" in lines[0] and "at most 320 tokens" in lines[0]


def test_the_note_says_what_the_embedded_model_knows_and_escapes_words():
    from adapt.world.scenes import CATEGORIES, COLOUR_NAMES
    from app.analysis import answer_note
    from app_helpers import synthetic_trace

    trace = synthetic_trace(objects=None)
    assert answer_note(trace) == ""
    trace.meta.update(world_model=True, unknown_words=["cat", "<img src=x onerror=alert(1)>", "**x**"])
    note = answer_note(trace)
    assert f"{len(CATEGORIES)} shapes ({', '.join(CATEGORIES)})" in note
    assert f"{len(COLOUR_NAMES)} colours" in note and "python -m app --model" in note
    assert "“cat”" in note and "<img" not in note and "&lt;img" in note and "&#42;&#42;x&#42;&#42;" in note
    trace.meta["objects"] = ["star"]  # a world scene: its answers are checked, no need to warn
    assert "synthetic world" not in answer_note(trace) and "“cat”" in answer_note(trace)


@needs_model
def test_the_embedded_model_is_recognised_as_a_world_model(tmp_path):
    from app.analysis import is_world_model
    from app_helpers import tiny_model_dir

    assert is_world_model(Models("embedded").get("embedded"))
    tiny = tiny_model_dir(tmp_path / "tiny")
    assert not is_world_model(Models(tiny).get(tiny))


# ---------------------------------------------------------------------------------- examples
def test_example_labels_keep_added_objects_apart_from_colours_and_places():
    from app.examples import LABEL_CHARS, load_presets, outcome_label

    def label(greedy, adapt_tf):
        errs = [dict({"objects": [], "colour": [], "position": []}, **x) for x in (greedy, adapt_tf)]
        return outcome_label({"file": "trap_09.png", "outcome": {"verdict": "both wrong", "greedy_errors": errs[0],
                                                                 "adapt_tf_errors": errs[1]}})

    place, colour = ["triangle: said top, is bottom left"], ["moon: said orange, is yellow"]
    # the case "greedy adds diamond · both wrong" hid: ADAPT-TF removed the diamond, a place stayed wrong
    assert label({"objects": ["diamond"], "position": place}, {"position": place}) == \
        "trap_09: ADAPT-TF drops diamond · places 1→1"
    assert label({"objects": ["diamond"], "colour": colour}, {"position": place}) == \
        "trap_09: ADAPT-TF drops diamond · colours 1→0 · places 0→1"
    assert label({"objects": ["moon"]}, {"objects": ["moon"]}) == "trap_09: both add moon"
    assert label({}, {"objects": ["ring"], "colour": colour}) == "trap_09: ADAPT-TF adds ring · colours 0→1"
    assert label({}, {}) == "trap_09: no absent object named"
    long = label({"objects": ["diamond", "moon"], "colour": colour * 2, "position": place},
                 {"objects": ["moon"], "colour": colour, "position": place * 3})
    assert long == "trap_09: ADAPT-TF drops diamond, keeps moon · colours+places 3→4"
    presets = load_presets()
    for e in presets:  # every shipped example, whole (Gradio cuts longer labels)
        text = outcome_label(e)
        assert len(text) <= LABEL_CHARS and text.startswith(Path(e["file"]).stem + ": ")
        assert "both wrong" not in text
        if e["outcome"]["greedy_errors"]["objects"] and not e["outcome"]["adapt_tf_errors"]["objects"]:
            assert "ADAPT-TF drops" in text


# ------------------------------------------------------------------------ reopened settings
def test_every_knob_survives_a_trace_config():
    from app.knobs import Knobs

    knobs = Knobs(k=7, tau=0.85, alpha=1.25, w_spec=0.5, w_smooth=0.2, w_focus=0.1, num_noise=3, enhance=True,
                  max_new_tokens=40, asi_layers="top:2", operator="logprior", trigger="amc", mass_tau=0.7, gamma=2.0)
    assert knobs.values() != Knobs.defaults().values()
    assert Knobs.from_config(knobs.config().to_dict()).values() == knobs.values()
    knobs.num_noise = 0  # "no debiasing" comes back as M = 0, not as the default M
    assert Knobs.from_config(knobs.config().to_dict()).num_noise == 0
