"""The Inspect tab: one image and question, both answers and every view of the analysis.

Page events report errors in the status line above the results (see :mod:`.errors`) and mark
the results left from the previous run as such; the ``/inspect`` and ``/open_trace`` API endpoints
raise readable errors instead, through hidden buttons that carry only the API.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from .. import figures as F
from ..analysis import (DEFAULT_COMPARE, MODEL_KEY, UNKNOWN_KEY, WORLD_KEY, analyse, answer_note, check_compare,
                        compare_choices, compare_names, is_world_model)
from ..examples import LABEL_LEGEND, outcome_label
from ..knobs import Knobs
from ..models import on_gpu, supported_families
from ..names import model_name
from ..scenes import add_hallucinations, random_trap_scene, scene_meta
from ..scratch import scratch_dir
from .components import SafeImage, SafeNumber, SafeSlider
from .errors import UserError, esc, friendly, message, question_error, status_line
from .state import App
from .views import image_name, render, save_trace, step_views

READY = "*Run an analysis or open a trace to see the results here.*"


class InspectTab:
    """Layout (``__init__``, inside a ``gr.Tab``) and events (:meth:`wire`, once every tab exists)."""

    def __init__(self, app: App):
        self.app = app
        # the one place an analysis is computed: on a ZeroGPU Space under spaces.GPU, decorated once at
        # start (app.models.on_gpu); elsewhere the method itself
        self.compute = on_gpu(self._compute)
        self.on_gpu = self.compute != self._compute
        d = Knobs.defaults()
        self.defaults = d
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=320):
                self.image = SafeImage(type="filepath", image_mode=None, label="Image", height=300,
                                       sources=["upload", "clipboard"], elem_id="adapt-image")
                self.question = gr.Textbox(label="Question", value=app.default_question(), lines=2,
                                           elem_id="adapt-question")
                # any value reaches check_compare, whose refusal names the choices (Gradio's own
                # check would log a traceback and answer in its words)
                self.compare = gr.Dropdown(compare_choices(), value=DEFAULT_COMPARE, allow_custom_value=True,
                                           label="Compare ADAPT-TF with", elem_id="adapt-compare",
                                           info="a registered decoding method, answered on the same image "
                                                "(greedy: plain decoding, whose first K steps are the anchor phase)")
                with gr.Row():
                    self.run_btn = gr.Button("Analyse", variant="primary", elem_id="adapt-run", scale=3)
                    self.stop_btn = gr.Button("Stop", variant="stop", elem_id="adapt-stop", min_width=60, scale=1)
                self.trap_btn = gr.Button("Random trap scene (ground truth known)", elem_id="adapt-trap")
                self.examples_box = gr.Column()
                with gr.Accordion("Method settings", open=False):
                    # any value reaches Models.get, whose allow-list is the boundary (and whose refusal
                    # names the choices); typing is offered only where the operator allows any model
                    self.backbone = gr.Dropdown(app.backbone_choices(), value=app.default_choice,
                                                allow_custom_value=True, label="Backbone", elem_id="adapt-backbone",
                                                info=("one of the list, a local checkpoint folder or a hub id "
                                                      f"({supported_families()})") if app.any_model else
                                                "the models this server offers (its operator adds more with "
                                                "ADAPT_MODELS)")
                    k = SafeSlider(1, max(40, d.k), value=d.k, step=1, label="K: anchor steps", elem_id="adapt-k")
                    tau = SafeSlider(0.0, 2.0, value=d.tau, step=0.05, label="τ: AMC trigger", elem_id="adapt-tau")
                    alpha = SafeSlider(0.0, 3.0, value=d.alpha, step=0.05, label="α: steering strength",
                                       elem_id="adapt-alpha")
                    with gr.Row():
                        w_spec = SafeNumber(d.w_spec, label="ω spec", minimum=0, step=0.05, elem_id="adapt-w-spec")
                        w_smooth = SafeNumber(d.w_smooth, label="ω smooth", minimum=0, step=0.05,
                                              elem_id="adapt-w-smooth")
                        w_focus = SafeNumber(d.w_focus, label="ω focus", minimum=0, step=0.05, elem_id="adapt-w-focus")
                    num_noise = SafeSlider(0, 8, value=d.num_noise, step=1, label="noise images M (0 = no debiasing)",
                                           elem_id="adapt-num-noise")
                    enhance = gr.Checkbox(d.enhance, label="ADAPT-TF answers on the anchor-guided image",
                                          elem_id="adapt-enhance")
                    max_new = SafeSlider(4, 256, value=d.max_new_tokens, step=1, label="max new tokens",
                                         elem_id="adapt-max-new")
                    asi_layers = gr.Textbox(d.asi_layers, label="ASI layers",
                                            info="all · top:N (highest λ) · from:i · 0,3,5 (empty: the default)",
                                            elem_id="adapt-asi-layers")
                    operator = gr.Dropdown(operator_choices(), value=d.operator, label="ASI operator (how it steers)",
                                           allow_custom_value=True, elem_id="adapt-operator")
                    trigger = gr.Dropdown(trigger_choices(), value=d.trigger, label="ASI trigger (when it steers)",
                                          allow_custom_value=True, elem_id="adapt-trigger")
                    with gr.Row():
                        mass_tau = SafeNumber(d.mass_tau, label="mass τ (mass trigger: M_t < mass τ·M_ref)",
                                              minimum=0, step=0.05, elem_id="adapt-mass-tau")
                        gamma = SafeNumber(d.gamma, label="γ (mass-aware: share of the drop given back)", minimum=0,
                                           step=0.1, elem_id="adapt-gamma")
                    self.reset_btn = gr.Button("Defaults", size="sm")
                with gr.Accordion("Open a saved trace", open=False):
                    self.trace_in = gr.File(label="Trace file (.zip from the app or the CLI)", file_types=[".zip"],
                                            elem_id="adapt-trace-in")
                    self.open_btn = gr.Button("Show trace", elem_id="adapt-open")
            with gr.Column(scale=3):
                self.status = gr.Markdown("", elem_id="adapt-status")
                with gr.Column(elem_id="adapt-results") as self.results_box:
                    self._results_layout()
        self.knobs = [k, tau, alpha, w_spec, w_smooth, w_focus, num_noise, enhance, max_new, asi_layers, operator,
                      trigger, mass_tau, gamma]
        self.trace_state = gr.State(None)
        # API-only triggers: their events raise readable errors for clients (see the module doc)
        self.api_inspect = gr.Button(visible=False)
        self.api_open = gr.Button(visible=False)

    def _results_layout(self) -> None:
        self.summary = gr.Markdown(READY, elem_id="adapt-summary")
        # what the model cannot know about this image and question, right above its answers
        self.note = gr.Markdown("", elem_id="adapt-note", visible=False)
        with gr.Row():
            self.hl_u = gr.HighlightedText(label="Greedy (unsteered)", color_map=F.HIGHLIGHT_COLOURS, show_legend=True,
                                           elem_id="adapt-answer-unsteered", show_inline_category=False)
            self.hl_s = gr.HighlightedText(label="ADAPT-TF (steered)", color_map=F.HIGHLIGHT_COLOURS, show_legend=True,
                                           elem_id="adapt-answer-steered", show_inline_category=False)
        self.align = gr.HTML(label="Token-aligned answers", elem_id="adapt-align")
        with gr.Row():
            self.step = gr.Slider(0, 1, value=0, step=1, label="Decoding step (both runs)", interactive=False,
                                  elem_id="adapt-step", scale=3)
            self.layer = gr.Dropdown(["mean"], value="mean", label="Layer", scale=1)
        with gr.Row():
            self.step_u = gr.Image(label="greedy · step 0", height=270, interactive=False, format="jpeg",
                                   buttons=["fullscreen"], elem_id="adapt-step-u")
            self.step_s = gr.Image(label="ADAPT-TF · step 0", height=270, interactive=False, format="jpeg",
                                   buttons=["fullscreen"], elem_id="adapt-step-s")
        self.amc_plot = gr.Plot(label="AMC index", elem_id="adapt-amc")
        self.signals_plot = gr.Plot(label="Degradation signals", elem_id="adapt-signals")
        with gr.Row(equal_height=False):
            self.maps = gr.Gallery(label="Bias map B · debiasing mask D · fused map Ā · anchor W (each over the image)",
                                   columns=4, height=300, allow_preview=True, scale=3, elem_id="adapt-maps",
                                   format="png", interactive=False, object_fit="contain")
            self.enhanced = gr.Image(label="Anchor-guided image", height=320, scale=1, format="png",
                                     interactive=False, buttons=["download", "fullscreen"], elem_id="adapt-enhanced")
        self.criteria_plot = gr.Plot(label="Criteria and λ per layer", elem_id="adapt-criteria")
        self.layers_gal = gr.Gallery(label="Early-step attention per layer (A_l), titled with λ", columns=6,
                                     height=250, allow_preview=True, format="png", elem_id="adapt-layers",
                                     interactive=False, object_fit="contain")
        with gr.Row():
            self.trace_dl = gr.DownloadButton("Download trace (.zip)", value=None, elem_id="adapt-trace-dl",
                                              interactive=False)
            self.figs_btn = gr.Button("Make the figures download (.zip)", elem_id="adapt-figs-make", interactive=False)
            self.figs_dl = gr.DownloadButton("Download figures (.zip)", value=None, elem_id="adapt-figs-dl",
                                             visible=False)

    @property
    def results(self) -> list:
        return [self.summary, self.hl_u, self.hl_s, self.align, self.step, self.layer, self.step_u, self.step_s,
                self.amc_plot, self.signals_plot, self.maps, self.enhanced, self.criteria_plot, self.layers_gal]

    # ------------------------------------------------------------------------------------ work
    def analysis(self, image_path, question_text, backbone_name, *values, progress=None):
        """(status, trace, *results, trace download): raises on any error. ``values``: the knobs,
        then the comparison method (last, so API clients that pass only the knobs still work)."""
        from adapt.images import load_image
        from adapt.prompts import clean_question, find_special_tokens, unknown_words

        if not image_path:
            raise UserError("Upload an image (or pick an example scene) first.")
        problem = question_error(question_text)
        if problem:
            raise UserError(problem)
        n = len(self.knobs)
        knob_values, rest = values[:n], values[n:]
        compare = check_compare(rest[0] if rest else None)
        knobs = Knobs(*knob_values)
        knobs.config().validate()  # settings errors before loading anything
        img = load_image(image_path)
        models = self.app.models
        if progress and not models.is_loaded(backbone_name):
            progress(0.02, desc="loading the model")
        bb = models.get(backbone_name)  # outside the compute lock: a slow load holds up no other analysis
        removed = find_special_tokens(question_text, bb.processor)
        question = clean_question(question_text, bb.processor)
        meta = self.app.scenes.lookup(img)

        def report(fraction, text):
            if progress:
                progress(min(0.99, max(0.0, float(fraction))), desc=str(text))

        if progress and models.compute.locked():
            progress(0.03, desc="waiting for the analysis before this one")
        with models.compute:
            # a GPU worker gets its arguments pickled: no progress callback crosses (its bar stays put)
            trace = self.compute(backbone_name, img, question, knobs, meta, compare,
                                 None if self.on_gpu else report)
        trace.meta = dict(trace.meta or {})
        trace.meta[MODEL_KEY] = model_name(models.check(backbone_name))  # as the backbone box names it
        trace.meta[WORLD_KEY] = is_world_model(bb)
        unknown = unknown_words(question, bb.processor)
        if unknown:
            trace.meta[UNKNOWN_KEY] = unknown
        note = f" (removed the model's special token(s) {esc(', '.join(removed))} from the question)" if removed else ""
        against = "" if compare == DEFAULT_COMPARE else f" · ADAPT-TF against **{esc(compare)}**"
        status = status_line(f"Showing the analysis of **{esc(image_name(image_path))}** · “{esc(question)}”"
                             f"{against}{note}", "ok")
        return (status, trace, *render(trace), gr.DownloadButton(value=save_trace(trace), interactive=True))

    def _compute(self, backbone_name, image, question, knobs, meta, compare, progress=None):
        """One analysis on the loaded model ``backbone_name``. Under ``spaces.GPU`` this runs in a GPU
        worker that receives its arguments pickled, so they are plain values and the model is looked up
        by name (loaded before the call, it is in the worker's copy of the cache)."""
        bb = self.app.models.get(backbone_name)
        return analyse(bb, image, question, knobs, meta=meta, progress=progress, compare=compare)

    def opened(self, path):
        """(status, trace, *results, trace download, image, question, *knobs, compared method, backbone)
        of a saved trace: every input is set to what the trace was made with, so *Analyse* runs it again
        (a method or model this server does not offer leaves that input as it is, and the status says so)."""
        from adapt.trace import Trace

        if not path:
            raise UserError("Choose a trace file (.zip) first.")
        name = Path(str(path)).name  # escaped where shown: the error message is escaped once, when shown
        try:
            trace = Trace.load(path)
            add_hallucinations(trace)
            views = render(trace)
        except MemoryError:
            raise
        except Exception as exc:  # a crafted or damaged file: missing keys, wrong shapes, an image bomb
            detail = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            raise UserError(f"{name} is not a readable trace: {detail[:300]}") from None
        image_path = scratch_dir("trace-image") / "trace-image.png"
        trace.image.save(image_path)
        knobs = Knobs.from_config(trace.config)
        kept = []
        compare = F.compared_method(trace)
        if compare not in compare_names():
            kept.append(f"its compared method ({esc(compare[:60])}) is not registered here")
            compare = gr.skip()
        model = self.trace_model(trace)
        if model is None:
            shown = trace.meta.get(MODEL_KEY) if isinstance(trace.meta, dict) else None
            shown = shown if isinstance(shown, str) else str(trace.backbone or "?")
            kept.append(f"its model ({esc(Path(shown).name[:60])}) is not offered here")
            model = gr.skip()
        restored = "its image, question, method, model and settings are in the inputs: *Analyse* runs it again"
        if kept:
            restored = ("its image, question and settings are in the inputs, but " + " and ".join(kept)
                        + ", so that input keeps its value")
        status = status_line(f"Showing the saved trace **{esc(name)}** · “{esc(trace.question)}” ({restored})", "ok")
        return (status, trace, *views, gr.DownloadButton(value=str(path), interactive=True), str(image_path),
                trace.question, *knobs.values(), compare, model)

    def trace_model(self, trace) -> str | None:
        """The offered backbone a trace was made with: the app's own name for it (``meta["model"]``),
        else the offered model whose folder or hub id is the trace's ``backbone``; None when none is."""
        from adapt.backbones import resolve

        models = self.app.models
        meta = trace.meta if isinstance(trace.meta, dict) else {}
        name = meta.get(MODEL_KEY)
        if isinstance(name, str) and name.strip() and models.canonical(name) is not None:
            return model_name(models.canonical(name))
        made_with = str(trace.backbone or "").strip()
        if not made_with:
            return None
        tail = Path(made_with).parts[-2:]
        for offered in models.offered():
            try:
                where = resolve(self.app.resolve_backbone(offered))
            except Exception:  # a model that cannot be resolved now (missing) is not it
                continue
            if where == made_with or (len(tail) == 2 and Path(where).parts[-2:] == tail):
                return model_name(offered)
        return None

    # ----------------------------------------------------------------------------- page events
    def _page(self, work, n_inputs_extra: int = 0):
        """A page event around ``work``: never raises; marks stale results on errors."""
        n_rest = len(self._page_outputs(work)) - 5  # status, results box, the two figures buttons and the note

        def run(*args, progress=gr.Progress()):
            previous = args[-1]
            try:
                out = work(*args[:-1], progress=progress) if work == self.analysis else work(*args[:-1])
            except Exception as exc:
                text = esc(message(exc, work.__name__))
                if previous is not None:
                    text += ("" if text.rstrip().endswith((".", "!", "?")) else ".")
                    text += (f" The results below are still those of the previous analysis "
                             f"(“{esc(previous.question)}”).")
                    box = gr.Column(elem_classes=["adapt-stale"])
                else:
                    box = gr.skip()
                return (status_line(text), box, gr.skip(), gr.skip(), gr.skip(), *([gr.skip()] * n_rest))
            note = answer_note(out[1])
            return (out[0], gr.Column(elem_classes=[]), gr.Button(interactive=True),
                    gr.DownloadButton(value=None, visible=False), gr.Markdown(note, visible=bool(note)), *out[1:])

        return run

    def _page_outputs(self, work) -> list:
        outs = [self.status, self.results_box, self.figs_btn, self.figs_dl, self.note, self.trace_state,
                *self.results, self.trace_dl]
        if work == self.opened:  # bound methods: equal, never identical
            outs += [self.image, self.question, *self.knobs, self.compare, self.backbone]
        return outs

    def figures(self, trace):
        """The figures zip, built when asked for: most of it is plotly.js, no use to most visitors."""
        if trace is None:
            return status_line("Run an analysis first: the figures are those of the shown results.", "note"), gr.skip()
        try:
            path = scratch_dir("figures") / "adapt-figures.zip"
            F.figures_zip(trace, path)
        except Exception as exc:
            return status_line(esc(message(exc, "figures"))), gr.skip()
        return gr.skip(), gr.DownloadButton(value=str(path), visible=True, interactive=True)

    def trap_scene(self):
        scene = random_trap_scene()
        img = scene.image()
        self.app.scenes.add(img, scene_meta(scene))
        path = scratch_dir("scene") / f"world-{scene.seed}.png"
        img.save(path)
        return str(path), self.app.default_question()

    def wire(self) -> None:
        app, d = self.app, self.defaults
        ins = [self.image, self.question, self.backbone, *self.knobs, self.compare]
        page_run = self._page(self.analysis)
        run_outs = self._page_outputs(self.analysis)
        # up to ADAPT_APP_CONCURRENCY analyses and exports are taken at once; they compute one at a time
        # (Models.compute), after their model is loaded, so a slow load does not hold up the others
        model_kw = dict(concurrency_id="analysis", concurrency_limit="default")
        priv = dict(api_visibility="private")
        cancellable = [
            self.run_btn.click(page_run, [*ins, self.trace_state], run_outs, **priv, **model_kw),
            self.question.submit(page_run, [*ins, self.trace_state], run_outs, **priv, **model_kw),
            self.trap_btn.click(friendly(self.trap_scene), None, [self.image, self.question], **priv).then(
                page_run, [*ins, self.trace_state], run_outs, **priv, **model_kw),
        ]
        self.open_btn.click(self._page(self.opened), [self.trace_in, self.trace_state], self._page_outputs(self.opened),
                            **priv)
        self.figs_btn.click(self.figures, [self.trace_state], [self.status, self.figs_dl], **priv)

        def api_inspect(*args, progress=gr.Progress()):
            return self.analysis(*args, progress=progress)[1:]

        api_inspect.__name__ = "inspect"
        self.api_inspect.click(friendly(api_inspect), ins, [self.trace_state, *self.results, self.trace_dl],
                               api_name="inspect", **model_kw)

        def api_open(path):
            return self.opened(path)[1:]

        api_open.__name__ = "open_trace"
        self.api_open.click(friendly(api_open), [self.trace_in],
                            [self.trace_state, *self.results, self.trace_dl, self.image, self.question, *self.knobs,
                             self.compare, self.backbone],
                            api_name="open_trace")
        view_outs = [self.align, self.step_u, self.step_s, self.amc_plot, self.signals_plot]

        def on_step(trace, step_value, layer_value):
            try:
                return step_views(trace, step_value, layer_value)
            except Exception as exc:  # a view that cannot be drawn keeps the last one drawn
                message(exc, "on_step")
                return (gr.skip(),) * 5

        for comp in (self.step, self.layer):
            comp.change(on_step, [self.trace_state, self.step, self.layer], view_outs, **priv,
                        trigger_mode="always_last", show_progress="hidden")
        self.reset_btn.click(lambda: d.values(), None, self.knobs, **priv, queue=False)

        def preload(name):
            # a visitor's choice: refused at once when not offered, else loaded in the background
            try:
                started = app.models.preload(name)
            except Exception as exc:
                return status_line(esc(message(exc, "preload")))
            if not started:
                return gr.skip()
            shown = esc(model_name(app.models.key(name)))
            return status_line(f"Loading the model **{shown}** in the background: *Analyse* uses it once it is "
                               "ready.", "note")

        self.backbone.input(preload, [self.backbone], [self.status], **priv, queue=False)
        with self.examples_box:
            if app.presets:
                ex = gr.Examples([[e["path"], e["question"]] for e in app.presets], [self.image, self.question],
                                 example_labels=[outcome_label(e) for e in app.presets],
                                 label="Trap scenes (a shape without its usual companion), in the order the rule of "
                                       f"the README picked them. {LABEL_LEGEND} Click one to analyse it.",
                                 examples_per_page=8, preload=False, elem_id="adapt-examples")
                cancellable.append(ex.load_input_event.then(page_run, [*ins, self.trace_state], run_outs, **priv,
                                                            **model_kw))
            else:
                gr.Markdown("*No example scenes are shipped yet; **Random trap scene** draws one from the "
                            "synthetic world.*")

        def stopped():
            return status_line("Stopped. The results below are those of the last finished analysis.", "note")

        self.stop_btn.click(stopped, None, [self.status], cancels=cancellable, **priv, queue=False)


def operator_choices() -> list[tuple[str, str]]:
    """(label, name) of the registered ASI operators (:data:`adapt.config.OPERATORS`), each with
    what it writes (:data:`adapt.steering.OPERATOR_INFO`)."""
    from adapt.config import OPERATORS
    from adapt.steering import OPERATOR_INFO

    out = []
    for name in OPERATORS:
        info = OPERATOR_INFO.get(name)
        text = info[0] if isinstance(info, tuple) and info else ""
        out.append((f"{name} — {text}" if text else name, name))
    return out


TRIGGER_ABOUT = {"amc": "AMC < τ·S_ref (the paper; τ above)", "mass": "image mass < mass τ·M_ref",
                 "amc+mass": "both at once", "always": "every monitored step after the anchor phase"}


def trigger_choices() -> list[tuple[str, str]]:
    """(label, name) of the registered ASI triggers (:data:`adapt.config.TRIGGERS`)."""
    from adapt.config import TRIGGERS

    return [(f"{t} — {TRIGGER_ABOUT[t]}" if t in TRIGGER_ABOUT else t, t) for t in TRIGGERS]
