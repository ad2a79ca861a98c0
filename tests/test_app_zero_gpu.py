"""The app on a ZeroGPU Space: with the ``spaces`` package importable (a fake one in ``sys.modules`` here)
the Inspect tab's analysis runs under ``spaces.GPU``, decorated once when the tab is built, with
arguments that pickle (ZeroGPU sends them to its GPU worker); without it nothing of ``spaces`` is
imported and the analysis is the plain method. On ZeroGPU hardware models load on ``cuda``."""

from __future__ import annotations

import pickle
import sys
import types

import numpy as np
import pytest
from PIL import Image

from app.models import Models, load_device, on_gpu, supported_families


class FakeSpaces(types.ModuleType):
    """``spaces`` as far as the app uses it: ``GPU(duration=...)`` returns a decorator; every call of a
    decorated function is recorded with its arguments pickled, as ZeroGPU's worker queue pickles them."""

    def __init__(self):
        super().__init__("spaces")
        self.decorated, self.calls = [], []

    def GPU(self, duration=60):  # noqa: N802 (the package's name)
        def decorate(fn):
            self.decorated.append((fn, duration))

            def on_worker(*args, **kwargs):
                self.calls.append(pickle.loads(pickle.dumps((args, kwargs))))
                return fn(*args, **kwargs)
            return on_worker
        return decorate


@pytest.fixture
def fake_spaces(monkeypatch):
    fake = FakeSpaces()
    monkeypatch.setitem(sys.modules, "spaces", fake)
    return fake


def test_without_spaces_the_function_is_itself(monkeypatch):
    monkeypatch.setitem(sys.modules, "spaces", None)  # `import spaces` raises ImportError

    def f(x):
        return x + 1
    assert on_gpu(f) is f


def test_with_spaces_the_function_runs_under_spaces_gpu(fake_spaces):
    wrapped = on_gpu(lambda x: x * 2, duration=90)
    assert [d for _, d in fake_spaces.decorated] == [90]
    assert wrapped(21) == 42 and fake_spaces.calls == [((21,), {})]


def test_models_load_on_cuda_on_zero_gpu_hardware(monkeypatch):
    import adapt.backbones

    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    assert load_device() is None
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    assert load_device() == "cuda"
    seen = []
    monkeypatch.setattr(adapt.backbones, "load_backbone", lambda source, **kw: seen.append((source, kw)) or "bb")
    assert Models("embedded").get("embedded") == "bb" and seen == [("embedded", {"device": "cuda"})]


def test_refusal_names_every_registered_family():
    from adapt.backbones import CATALOG, BackboneError, FAMILIES

    def loader(source):
        raise OSError(f"{source}: no such checkpoint")

    models = Models("embedded", allow_any=True, loader=loader)
    with pytest.raises(BackboneError) as err:
        models.get("someone/unknown-model")
    msg = str(err.value)
    assert "\n" not in msg and supported_families() in msg
    assert all(CATALOG[k].name in msg for k in FAMILIES)


def _analyse(tab, tmp_path):
    from app.knobs import Knobs

    img = tmp_path / "img.png"
    Image.fromarray((np.random.RandomState(1).rand(40, 40, 3) * 255).astype("uint8")).save(img)
    knobs = Knobs.defaults()
    knobs.num_noise, knobs.max_new_tokens = 0, 6
    return tab.analysis(str(img), "describe the image.", "embedded", *knobs.values())


def _tab():
    import gradio as gr

    from app.ui import App
    from app.ui.inspect import InspectTab

    app = App(warm=False)
    with gr.Blocks():
        return InspectTab(app)


def test_the_inspect_analysis_runs_under_spaces_gpu(fake_spaces, tmp_path):
    tab = _tab()
    assert tab.on_gpu and len(fake_spaces.decorated) == 1  # decorated once, when the tab is built
    out = _analyse(tab, tmp_path)
    [(args, kwargs)] = fake_spaces.calls  # one GPU call per analysis, its arguments pickled
    assert args[0] == "embedded" and args[2] == "describe the image." and args[-1] is None  # no progress callback
    trace = out[1]
    assert trace.steered is not None and trace.unsteered.text and trace.meta["model"] == "embedded"


def test_without_spaces_the_inspect_analysis_is_the_plain_method(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "spaces", None)
    tab = _tab()
    assert not tab.on_gpu and tab.compute == tab._compute
    assert _analyse(tab, tmp_path)[1].unsteered.text
