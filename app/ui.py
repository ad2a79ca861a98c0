"""The Gradio Blocks: Inspect (one analysis, every view), Export (many images), Admin (jobs).

Handlers never let an exception reach the user as a traceback: known errors (bad image, bad
model, bad settings, bad trace file) become a ``gr.Error`` with their message; anything else is
logged with its traceback on the server and reported as a one-line message.
"""

from __future__ import annotations

import functools
import hmac
import html as _html
import json
import logging
import os
import time
import traceback
import zipfile
from pathlib import Path

import gradio as gr

from . import figures as F
from .service import (EMBEDDED, Knobs, Models, SceneRegistry, analyse, export_batch, model_notice,
                      random_trap_scene, scene_meta, scratch_dir)

log = logging.getLogger("adapt.app")


def esc(text) -> str:
    """Escape for gr.Error / Markdown (rendered as HTML) without mangling quotes for API clients."""
    return _html.escape(str(text), quote=False)

ADMIN_ENV = "ADAPT_ADMIN_TOKEN"
MODEL_ENV = "ADAPT_MODEL"
BACKBONES_ENV = "ADAPT_BACKBONES"  # extra backbone choices offered in the dropdown (comma-separated)
TITLE = "ADAPT — watch and steer a multimodal model's attention"


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------
def _user_errors():
    from adapt.backbones import BackboneError
    from adapt.config import ConfigError
    from adapt.images import ImageError

    from .jobs import JobError

    return (ImageError, BackboneError, ConfigError, JobError)


def friendly(fn):
    """Turn every exception into a readable ``gr.Error`` (the server keeps serving)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except _user_errors() as exc:
            raise gr.Error(esc(str(exc)), print_exception=False) from None
        except (ValueError, FileNotFoundError) as exc:
            raise gr.Error(esc(str(exc) or type(exc).__name__), print_exception=False) from None
        except MemoryError:
            raise gr.Error("The server ran out of memory for this request; try a smaller image or fewer "
                           "new tokens.", print_exception=False) from None
        except Exception as exc:  # unexpected: keep the traceback for the operator, not the user
            log.error("unexpected error in %s:\n%s", fn.__name__, traceback.format_exc())
            raise gr.Error(f"Something went wrong ({type(exc).__name__}: {esc(str(exc)[:300])}). "
                           "The server is still running; the details are in its log.",
                           print_exception=False) from None

    return wrapper


class SafeImage(gr.Image):
    """``gr.Image`` whose upload decoding failures become a readable error (not a bare 'Error')."""

    is_template = True  # rendered by the frontend as a plain Image

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except gr.Error:
            raise
        except Exception as exc:
            raise gr.Error(f"The uploaded file is not a readable image ({type(exc).__name__}). "
                           "Use a PNG, JPEG, WebP, BMP, GIF or TIFF file.", print_exception=False) from None


# --------------------------------------------------------------------------------------------
# app
# --------------------------------------------------------------------------------------------
class App:
    """State shared by every visitor: loaded models, known scenes, the job runner."""

    def __init__(self, model: str | None = None, admin_token: str | None = None, jobs_root=None,
                 max_jobs: int = 1, warm: bool = True):
        from .examples import load_presets, register_presets

        self.default_model = Models.key(model or os.environ.get(MODEL_ENV) or EMBEDDED)
        self.models = Models(self.default_model)
        self.scenes = SceneRegistry()
        self.presets = load_presets()
        register_presets(self.scenes, self.presets)
        self.admin_token = admin_token if admin_token is not None else os.environ.get(ADMIN_ENV)
        self.admin_token = (self.admin_token or "").strip() or None
        self.runner = None
        if self.admin_token:
            from .jobs import JobRunner, default_root

            self.runner = JobRunner(jobs_root or default_root(), max_running=max_jobs)
        if warm:
            seen, examples = set(), []
            for e in self.presets:  # one image per distinct question fills its bias map
                if e["question"] not in seen:
                    seen.add(e["question"])
                    examples.append((e["path"], e["question"]))
            self.models.warm(examples)

    def backbone_choices(self) -> list[str]:
        extra = [x.strip() for x in os.environ.get(BACKBONES_ENV, "").split(",") if x.strip()]
        return list(dict.fromkeys([self.default_model, EMBEDDED, *extra]))

    def check_admin(self, token: str | None) -> None:
        if not self.admin_token or not self.runner:
            raise gr.Error("The admin tab is disabled on this server.", print_exception=False)
        if not token or not hmac.compare_digest(str(token).strip().encode(), self.admin_token.encode()):
            time.sleep(0.5)  # slows down guessing
            raise gr.Error("Admin token refused.", print_exception=False)


# --------------------------------------------------------------------------------------------
# rendering a Trace into the Inspect views
# --------------------------------------------------------------------------------------------
def _layer_index(layer) -> int | None:
    if layer in (None, "", "mean"):
        return None
    try:
        return int(str(layer).split()[-1])
    except ValueError:
        return None


def step_views(trace, step, layer):
    if trace is None:
        return (gr.skip(),) * 5
    li = _layer_index(layer)
    if li is not None and not 0 <= li < trace.num_layers:
        li = None
    step = int(step or 0)
    u_img, u_cap = F.step_map(trace, "unsteered", step, li)
    s_img, s_cap = F.step_map(trace, "steered", step, li)
    return (F.alignment_html(trace, step),
            gr.Image(value=u_img, label=u_cap, format="jpeg"),
            gr.Image(value=s_img, label=s_cap, format="jpeg"),
            F.amc_figure(trace, li, step),
            F.signals_figure(trace, li, step))


def render(trace):
    """Every Inspect view of ``trace`` (see RESULTS in :func:`build`)."""
    base = F.display_image(trace.image)
    steps = F.num_steps(trace)
    views = step_views(trace, 0, "mean")
    layers = ["mean"] + [f"layer {i}" for i in range(trace.num_layers)]
    return (
        F.summary_markdown(trace),
        F.highlighted(trace, "unsteered"),
        F.highlighted(trace, "steered") if trace.steered is not None else [("(not run)", None)],
        views[0],
        gr.Slider(minimum=0, maximum=max(0, steps - 1), value=0, step=1, interactive=steps > 1),
        gr.Dropdown(choices=layers, value="mean"),
        views[1], views[2], views[3], views[4],
        F.anchor_gallery(trace, base),
        trace.enhanced_image,
        F.criteria_figure(trace),
        F.layer_gallery(trace, base),
    )


def save_trace(trace) -> str:
    d = scratch_dir("trace")
    stem = "trace-" + time.strftime("%Y%m%d-%H%M%S")
    return str(trace.save(d / f"{stem}.zip"))


# --------------------------------------------------------------------------------------------
# admin helpers
# --------------------------------------------------------------------------------------------
JOB_HEADERS = ["job", "kind", "status", "progress", "created", "seconds", "message"]


def _job_rows(runner) -> list[list]:
    rows = []
    for j in runner.list()[:200]:
        p = runner.progress(j.id)
        prog = ""
        if p.get("total"):
            prog = f"{p.get('done', 0)}/{p['total']}"
        if p.get("stage"):
            prog = f"{prog} {p['stage']}".strip()
        dur = j.duration
        rows.append([j.id, j.kind, j.status, prog, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.created)),
                     None if dur is None else round(dur, 1), j.message])
    return rows


def _summary_table(summary) -> tuple[list[str], list[list]]:
    if not isinstance(summary, dict) or not summary:
        return ["result"], []
    if all(isinstance(v, dict) for v in summary.values()):
        cols = list(dict.fromkeys(k for v in summary.values() for k in v))
        rows = [[name] + [_fmt(v.get(c)) for c in cols] for name, v in summary.items()]
        return ["method"] + cols, rows
    return ["key", "value"], [[k, _fmt(v)] for k, v in summary.items()]


ITEM_COLUMNS = ("index", "id", "is_trap", "truth", "description", "mentioned", "hallucinated", "status", "error",
                "output", "seconds")


def _items_table(rows_by_file: dict, n: int = 15) -> tuple[list[str], list[list]]:
    """The newest ``n`` rows of every JSONL file, a few readable columns each."""
    tagged = [(name, i, r) for name, rows in rows_by_file.items() for i, r in enumerate(rows[-n:])]
    if not tagged:
        return ["item"], []
    present = [c for c in ITEM_COLUMNS if any(c in r for _, _, r in tagged)]
    if not present:
        present = list(dict.fromkeys(k for _, _, r in tagged for k in r))[:8]
    tagged.sort(key=lambda t: -t[1])
    out = []
    for name, _, r in tagged[: 3 * n]:
        cells = []
        for c in present:
            v = r.get(c, "")
            if isinstance(v, list):
                v = ", ".join(map(str, v))
            elif isinstance(v, float):
                v = round(v, 3)
            elif isinstance(v, dict):
                v = json.dumps(v)
            v = str(v) if not isinstance(v, (int, float)) else v
            cells.append(v[:160] if isinstance(v, str) else v)
        out.append([name.replace("items-", "")] + cells)
    return ["file"] + present, out


def _fmt(v):
    if isinstance(v, float):
        return round(v, 4)
    if isinstance(v, (dict, list)):
        return json.dumps(v)[:200]
    return v


# --------------------------------------------------------------------------------------------
# layout
# --------------------------------------------------------------------------------------------
CSS = F.ALIGN_CSS + """
#adapt-notice {border-left: 4px solid #faad14; padding: 6px 12px; background: #fffbe6;}
.adapt-small-gallery .thumbnail-item {min-width: 0;}
"""


def build(app: App | None = None) -> gr.Blocks:
    app = app or App()
    d = Knobs.defaults()

    with gr.Blocks(title="ADAPT", fill_width=True, delete_cache=(3600, 6 * 3600), analytics_enabled=False) as demo:
        gr.Markdown(f"## {TITLE}\n"
                    "Upload an image (or pick a trap scene), ask a question, and compare the plain greedy answer "
                    "with ADAPT-TF: the visual anchor built from the first decoding steps, the AMC drift "
                    "index per step and layer, and attention steering where it drifts.")
        notice = gr.Markdown(model_notice(app.default_model), elem_id="adapt-notice",
                             visible=bool(model_notice(app.default_model)))
        trace_state = gr.State(None)

        with gr.Tabs():
            # ---------------------------------------------------------------- Inspect
            with gr.Tab("Inspect", id="inspect"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=1, min_width=320):
                        image = SafeImage(type="filepath", image_mode=None, label="Image", height=300,
                                          sources=["upload", "clipboard"], elem_id="adapt-image")
                        question = gr.Textbox(label="Question", value=_default_question(app),
                                              lines=2, elem_id="adapt-question")
                        with gr.Row():
                            run_btn = gr.Button("Analyse", variant="primary", elem_id="adapt-run", scale=3)
                            stop_btn = gr.Button("Stop", variant="stop", elem_id="adapt-stop", min_width=60,
                                                 scale=1)
                        trap_btn = gr.Button("Random trap scene (ground truth known)", elem_id="adapt-trap")
                        examples_box = gr.Column()
                        with gr.Accordion("Method settings", open=False):
                            backbone = gr.Dropdown(app.backbone_choices(), value=app.default_model,
                                                   allow_custom_value=True, label="Backbone",
                                                   info="'embedded', a local checkpoint folder or a hub id "
                                                        "(LLaVA-1.5, Qwen2.5-VL)")
                            k = gr.Slider(1, max(40, d.k), value=d.k, step=1, label="K: anchor steps")
                            tau = gr.Slider(0.0, 2.0, value=d.tau, step=0.05, label="τ: AMC trigger")
                            alpha = gr.Slider(0.0, 3.0, value=d.alpha, step=0.05, label="α: steering strength")
                            with gr.Row():
                                w_spec = gr.Number(d.w_spec, label="ω spec", minimum=0, step=0.05)
                                w_smooth = gr.Number(d.w_smooth, label="ω smooth", minimum=0, step=0.05)
                                w_focus = gr.Number(d.w_focus, label="ω focus", minimum=0, step=0.05)
                            num_noise = gr.Slider(0, 8, value=d.num_noise, step=1,
                                                  label="noise images M (0 = no debiasing)")
                            enhance = gr.Checkbox(d.enhance, label="ADAPT-TF answers on the anchor-guided image")
                            max_new = gr.Slider(4, 256, value=d.max_new_tokens, step=1, label="max new tokens")
                            asi_layers = gr.Textbox(d.asi_layers, label="ASI layers",
                                                    info="all · top:N (highest λ) · from:i · 0,3,5")
                            reset_btn = gr.Button("Defaults", size="sm")
                        with gr.Accordion("Open a saved trace", open=False):
                            trace_in = gr.File(label="Trace file (.zip from the app or the CLI)",
                                               file_types=[".zip"], elem_id="adapt-trace-in")
                            open_btn = gr.Button("Show trace", elem_id="adapt-open")
                    with gr.Column(scale=3):
                        summary = gr.Markdown("*Run an analysis or open a trace to see the results here.*",
                                              elem_id="adapt-summary")
                        with gr.Row():
                            hl_u = gr.HighlightedText(label="Greedy (unsteered)", color_map=F.HIGHLIGHT_COLOURS,
                                                      show_legend=True, elem_id="adapt-answer-unsteered",
                                                      show_inline_category=False)
                            hl_s = gr.HighlightedText(label="ADAPT-TF (steered)", color_map=F.HIGHLIGHT_COLOURS,
                                                      show_legend=True, elem_id="adapt-answer-steered",
                                                      show_inline_category=False)
                        align = gr.HTML(label="Token-aligned answers", elem_id="adapt-align")
                        with gr.Row():
                            step = gr.Slider(0, 1, value=0, step=1, label="Decoding step (both runs)",
                                             interactive=False, elem_id="adapt-step", scale=3)
                            layer = gr.Dropdown(["mean"], value="mean", label="Layer", scale=1)
                        with gr.Row():
                            step_u = gr.Image(label="greedy · step 0", height=240, interactive=False, format="jpeg",
                                              buttons=["fullscreen"])
                            step_s = gr.Image(label="ADAPT-TF · step 0", height=240, interactive=False, format="jpeg",
                                              buttons=["fullscreen"])
                        amc_plot = gr.Plot(label="AMC index", elem_id="adapt-amc")
                        signals_plot = gr.Plot(label="Degradation signals", elem_id="adapt-signals")
                        with gr.Row():
                            maps = gr.Gallery(label="Bias map · debiasing mask · fused map · anchor", columns=4,
                                              height=250, allow_preview=True, scale=3, elem_id="adapt-maps",
                                              format="jpeg", interactive=False)
                            enhanced = gr.Image(label="Anchor-guided image", height=260, scale=1, format="png",
                                                interactive=False, buttons=["download", "fullscreen"])
                        criteria_plot = gr.Plot(label="Criteria and λ per layer", elem_id="adapt-criteria")
                        layers_gal = gr.Gallery(label="Early-step attention per layer (A_l) with λ", columns=6,
                                                height=240, allow_preview=True, format="jpeg",
                                                elem_id="adapt-layers", interactive=False)
                        with gr.Row():
                            trace_dl = gr.DownloadButton("Download trace (.zip)", value=None,
                                                         elem_id="adapt-trace-dl", interactive=False)
                            figs_dl = gr.DownloadButton("Download figures (.zip)", value=None,
                                                        elem_id="adapt-figs-dl", interactive=False)

            # ---------------------------------------------------------------- Export
            with gr.Tab("Export", id="export"):
                gr.Markdown("Anchor-guided images for many images at once: upload image files and/or zips. "
                            "One question for all, or one per image (lines `file name: question`, or a "
                            "`.jsonl` of `{\"image\": ..., \"question\": ...}` among the uploads). Uses the "
                            "backbone and anchor settings of the Inspect tab. Bad files are reported and "
                            "skipped.")
                with gr.Row():
                    with gr.Column():
                        ex_files = gr.File(label="Images or zips", file_count="multiple", elem_id="adapt-ex-files")
                        ex_question = gr.Textbox(label="Question for every image", value=_default_question(app))
                        ex_per = gr.Textbox(label="Per-image questions (optional)", lines=3,
                                            placeholder="cat.png: what is the cat doing?")
                        with gr.Row():
                            ex_btn = gr.Button("Export", variant="primary", elem_id="adapt-ex-run")
                            ex_stop = gr.Button("Stop", variant="stop", scale=0, min_width=60)
                    with gr.Column():
                        ex_status = gr.Markdown()
                        ex_zip = gr.File(label="Anchor-guided images + manifest.jsonl", elem_id="adapt-ex-zip")
                        ex_report = gr.Dataframe(headers=["file", "question", "status", "detail"], label="Report",
                                                 interactive=False, wrap=True)
                        ex_preview = gr.Gallery(label="Preview", columns=6, height=200, format="png",
                                                interactive=False)

            # ---------------------------------------------------------------- Admin
            if app.runner is not None:
                admin_ui(app)

        # ---------------------------------------------------------------- wiring
        knobs = [k, tau, alpha, w_spec, w_smooth, w_focus, num_noise, enhance, max_new, asi_layers]
        results = [summary, hl_u, hl_s, align, step, layer, step_u, step_s, amc_plot, signals_plot, maps,
                   enhanced, criteria_plot, layers_gal]

        @friendly
        def inspect(image_path, question_text, backbone_name, *knob_values, progress=gr.Progress()):
            from adapt.images import load_image

            if not image_path:
                raise gr.Error("Upload an image (or pick an example scene) first.", print_exception=False)
            if not (question_text or "").strip():
                raise gr.Error("Type a question about the image.", print_exception=False)
            if len(question_text) > 2000:
                raise gr.Error("The question is too long (2000 characters at most).", print_exception=False)
            knobs_ = Knobs(*knob_values)
            knobs_.config()  # settings errors before loading anything
            img = load_image(image_path)
            progress(0.02, desc="loading the model")
            bb = app.models.get(backbone_name)
            meta = app.scenes.lookup(img)

            def report(fraction, message):
                progress(min(0.99, max(0.0, float(fraction))), desc=str(message))

            trace = analyse(bb, img, question_text, knobs_, meta=meta, progress=report)
            return (trace, *render(trace), gr.DownloadButton(value=save_trace(trace), interactive=True),
                    gr.DownloadButton(value=None, interactive=False))

        @friendly
        def open_trace(path):
            from adapt.trace import Trace

            if not path:
                raise gr.Error("Choose a trace file (.zip) first.", print_exception=False)
            try:
                trace = Trace.load(path)
            except ValueError as exc:
                raise gr.Error(f"{esc(Path(path).name)} is not a readable trace: {esc(str(exc))}",
                               print_exception=False) from None
            from .service import add_hallucinations

            add_hallucinations(trace)
            return (trace, *render(trace), gr.DownloadButton(value=str(path), interactive=True),
                    gr.DownloadButton(value=None, interactive=False))

        @friendly
        def figures_download(trace):
            if trace is None:
                return gr.skip()
            path = scratch_dir("figures") / "adapt-figures.zip"
            F.figures_zip(trace, path)
            return gr.DownloadButton(value=str(path), interactive=True)

        @friendly
        def on_step(trace, step_value, layer_value):
            return step_views(trace, step_value, layer_value)

        @friendly
        def trap_scene():
            scene = random_trap_scene()
            img = scene.image()
            app.scenes.add(img, scene_meta(scene))
            path = scratch_dir("scene") / f"world-{scene.seed}.png"
            img.save(path)
            return str(path), _default_question(app)

        outs = [trace_state, *results, trace_dl, figs_dl]
        model_kw = dict(concurrency_id="model", concurrency_limit=1)
        ev = run_btn.click(inspect, [image, question, backbone, *knobs], outs, api_name="inspect", **model_kw)
        ev.then(figures_download, [trace_state], [figs_dl], api_visibility="private")
        ev_q = question.submit(inspect, [image, question, backbone, *knobs], outs, api_visibility="private",
                               **model_kw)
        ev_q.then(figures_download, [trace_state], [figs_dl], api_visibility="private")
        op = open_btn.click(open_trace, [trace_in], outs, api_name="open_trace")
        op.then(figures_download, [trace_state], [figs_dl], api_visibility="private")
        view_outs = [align, step_u, step_s, amc_plot, signals_plot]
        step.change(on_step, [trace_state, step, layer], view_outs, api_visibility="private",
                    trigger_mode="always_last", show_progress="hidden")
        layer.change(on_step, [trace_state, step, layer], view_outs, api_visibility="private",
                     trigger_mode="always_last", show_progress="hidden")
        ev_t = trap_btn.click(trap_scene, None, [image, question], api_visibility="private").then(
            inspect, [image, question, backbone, *knobs], outs, api_visibility="private", **model_kw)
        ev_t.then(figures_download, [trace_state], [figs_dl], api_visibility="private")
        cancellable = [ev, ev_q, ev_t]
        reset_btn.click(lambda: [d.k, d.tau, d.alpha, d.w_spec, d.w_smooth, d.w_focus, d.num_noise, d.enhance,
                                 d.max_new_tokens, d.asi_layers], None, knobs, api_visibility="private",
                        queue=False)

        with examples_box:
            if app.presets:
                ex = gr.Examples([[e["path"], e["question"]] for e in app.presets], [image, question],
                                 label="Trap scenes: the embedded model hallucinates here without ADAPT "
                                       "(click one to analyse it)", examples_per_page=8, preload=False,
                                 elem_id="adapt-examples")
                ev_x = ex.load_input_event.then(inspect, [image, question, backbone, *knobs], outs,
                                                api_visibility="private", **model_kw)
                ev_x.then(figures_download, [trace_state], [figs_dl], api_visibility="private")
                cancellable.append(ev_x)
            else:
                gr.Markdown("*No example scenes are shipped yet; **Random trap scene** draws one from the "
                            "synthetic world.*")

        @friendly
        def export(files, q, per, backbone_name, *knob_values, progress=gr.Progress()):
            if not files:
                raise gr.Error("Upload images (or a zip of images) to export.", print_exception=False)
            paths = [f if isinstance(f, str) else getattr(f, "name", str(f)) for f in files]
            knobs_ = Knobs(*knob_values)
            knobs_.config()
            progress(0.01, desc="loading the model")
            bb = app.models.get(backbone_name)
            zpath, report, previews = export_batch(
                bb, paths, q, per, knobs_, progress=lambda f, m: progress(f, desc=m))
            ok = sum(r[2] == "ok" for r in report)
            msg = f"**{ok} of {len(report)} exported.**" + (
                f" {len(report) - ok} skipped (see the report)." if ok < len(report) else "")
            return msg, str(zpath), report, previews

        ev_e = ex_btn.click(export, [ex_files, ex_question, ex_per, backbone, *knobs],
                            [ex_status, ex_zip, ex_report, ex_preview], api_name="export", **model_kw)
        ex_stop.click(lambda: "**Export stopped** (no zip was made); run it again to export.", None, [ex_status], cancels=[ev_e], api_visibility="private",
                      queue=False)

        def stopped():
            gr.Info("Analysis stopped.")
            return "*Stopped. Run the analysis again when ready.*"

        stop_btn.click(stopped, None, [summary], cancels=cancellable, api_visibility="private", queue=False)

        def refresh_notice(backbone_name=None):
            text = model_notice(app.default_model)
            return gr.Markdown(value=text, visible=bool(text))

        demo.load(refresh_notice, None, [notice], api_visibility="private", queue=False)
    demo.adapt_app = app  # for tests and the launcher
    return demo


def _default_question(app: App) -> str:
    if app.presets:
        return app.presets[0]["question"]
    try:
        from adapt.world.language import DEFAULT_DESCRIBE_PROMPT

        return DEFAULT_DESCRIBE_PROMPT
    except Exception:
        return "describe the image in detail."


# --------------------------------------------------------------------------------------------
# admin tab
# --------------------------------------------------------------------------------------------
def admin_ui(app: App) -> None:
    from .jobs import KINDS

    runner = app.runner
    kinds = sorted(KINDS)
    first = "world-eval" if "world-eval" in KINDS else kinds[0]
    with gr.Tab("Admin", id="admin") as tab:
        gr.Markdown("Background jobs: benchmarks and batch exports run as separate processes; they keep running "
                    "when this page is closed, and their outputs stay on the server under "
                    f"`{_short_path(runner.root)}`.")
        with gr.Row():
            token = gr.Textbox(label="Admin token", type="password", scale=3, elem_id="adapt-admin-token")
            unlock = gr.Button("Unlock", scale=1, elem_id="adapt-admin-unlock")
        with gr.Column(visible=False) as panel:
            with gr.Row(equal_height=False):
                with gr.Column(scale=1):
                    kind = gr.Dropdown(kinds, value=first, label="Job kind")
                    params = gr.Code(json.dumps(KINDS[first].defaults(), indent=1), language="json",
                                     label="Parameters (JSON)", lines=8)
                    start = gr.Button("Start job", variant="primary", elem_id="adapt-admin-start")
                    start_msg = gr.Markdown()
                with gr.Column(scale=1):
                    kind_help = gr.Markdown(KINDS[first].help_markdown())
            jobs_df = gr.Dataframe(headers=JOB_HEADERS, label="Jobs (newest first)", interactive=False, wrap=True,
                                   max_height=300)
            with gr.Row():
                job_sel = gr.Dropdown([], label="Job", allow_custom_value=True, scale=3)
                cancel = gr.Button("Cancel job", variant="stop", scale=1)
                zip_btn = gr.Button("Zip outputs", scale=1)
                zip_dl = gr.DownloadButton("Download outputs", value=None, interactive=False, scale=1)
            job_info = gr.Markdown()
            with gr.Row(equal_height=False):
                with gr.Column(scale=2):
                    metric = gr.Dropdown([], label="Metric (running mean over items)", allow_custom_value=True)
                    metric_plot = gr.Plot(label="Live metrics")
                with gr.Column(scale=1):
                    results_df = gr.Dataframe(label="Results (summary.json)", interactive=False, wrap=True)
            items_df = gr.Dataframe(label="Latest items (JSONL rows, newest first)", interactive=False, wrap=True,
                                    max_height=320)
            job_log = gr.Textbox(label="Log (tail)", lines=14, max_lines=14, autoscroll=True, interactive=False)
        timer = gr.Timer(2.0, active=False)

    def jobs_table():
        return _job_rows(runner)

    def detail(job_id, metric_name):
        if not job_id:
            return ("*No job selected.*", "", None, gr.Dataframe(value=[], headers=["result"]),
                    gr.Dropdown(choices=[], value=None), gr.Dataframe(value=[], headers=["item"]))
        job = runner.get(job_id)
        p = runner.progress(job_id)
        done, total = p.get("done"), p.get("total")
        bar = ""
        if total:
            frac = max(0.0, min(1.0, float(done or 0) / float(total)))
            bar = f" · **{done}/{total}** ({frac:.0%})" + (f" · {p.get('stage')}" if p.get("stage") else "")
        info = (f"**{job.id}** · `{job.kind}` · **{job.status}**{bar}"
                + (f" · {job.duration:.0f} s" if job.duration is not None else "")
                + (f"  \n{esc(job.message)}" if job.message else "")
                + f"  \n`{' '.join(job.argv[2:])[:400]}`")
        rows = runner.rows(job_id)
        keys = F.numeric_keys(rows)
        if metric_name not in keys:
            metric_name = F.default_metric(keys)
        fig = F.running_metric_figure(rows, metric_name) if rows else None
        headers, table = _summary_table(runner.summary(job_id))
        item_headers, item_rows = _items_table(rows)
        return (info, runner.log_tail(job_id, 12_000), fig, gr.Dataframe(value=table, headers=headers),
                gr.Dropdown(choices=keys, value=metric_name), gr.Dataframe(value=item_rows, headers=item_headers))

    detail_outs = [job_info, job_log, metric_plot, results_df, metric, items_df]

    @friendly
    def do_unlock(tok):
        app.check_admin(tok)
        rows = jobs_table()
        ids = [r[0] for r in rows]
        sel = ids[0] if ids else None
        return (gr.Column(visible=True), gr.Timer(active=True), rows, gr.Dropdown(choices=ids, value=sel),
                *detail(sel, None))

    @friendly
    def do_start(tok, kind_name, params_text):
        app.check_admin(tok)
        try:
            p = json.loads(params_text or "{}")
        except json.JSONDecodeError as exc:
            raise gr.Error(f"Parameters are not valid JSON: {esc(str(exc))}", print_exception=False) from None
        if not isinstance(p, dict):
            raise gr.Error("Parameters must be a JSON object.", print_exception=False)
        job = runner.submit(kind_name, p)
        rows = jobs_table()
        return (f"Started **{job.id}** ({job.status}).", rows,
                gr.Dropdown(choices=[r[0] for r in rows], value=job.id), *detail(job.id, None))

    @friendly
    def do_cancel(tok, job_id):
        app.check_admin(tok)
        if not job_id:
            raise gr.Error("Select a job first.", print_exception=False)
        job = runner.cancel(job_id)
        return f"**{job.id}** is {job.status}.", jobs_table(), *detail(job_id, None)

    @friendly
    def do_jobs(tok):
        app.check_admin(tok)
        return jobs_table()

    @friendly
    def do_job(tok, job_id, metric_name=None):
        app.check_admin(tok)
        return detail(job_id, metric_name)

    @friendly
    def do_tick(tok, job_id, metric_name):
        if not tok or not hmac.compare_digest(str(tok).strip().encode(), app.admin_token.encode()):
            return (gr.Timer(active=False), gr.skip(), gr.skip(), *([gr.skip()] * len(detail_outs)))
        rows = jobs_table()
        ids = [r[0] for r in rows]
        return (gr.skip(), rows, gr.Dropdown(choices=ids, value=job_id if job_id in ids else (ids[0] if ids else None)),
                *detail(job_id if job_id in ids else (ids[0] if ids else None), metric_name))

    @friendly
    def do_zip(tok, job_id):
        app.check_admin(tok)
        if not job_id:
            raise gr.Error("Select a job first.", print_exception=False)
        runner.get(job_id)
        path = scratch_dir("job") / f"{job_id}.zip"
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
            for f in runner.files(job_id):
                z.write(f, f.relative_to(runner.out_dir(job_id)))
            z.write(runner.log_path(job_id), "log.txt") if runner.log_path(job_id).exists() else None
        return gr.DownloadButton(value=str(path), interactive=True)

    def on_kind(kind_name):
        k = KINDS.get(kind_name)
        if k is None:
            return gr.skip(), gr.skip()
        return json.dumps(k.defaults(), indent=1), k.help_markdown()

    priv = dict(api_visibility="private", concurrency_id="admin", concurrency_limit=4)
    unlock.click(do_unlock, [token], [panel, timer, jobs_df, job_sel, *detail_outs], api_visibility="private")
    token.submit(do_unlock, [token], [panel, timer, jobs_df, job_sel, *detail_outs], api_visibility="private")
    kind.change(on_kind, [kind], [params, kind_help], api_visibility="private", queue=False)
    start.click(do_start, [token, kind, params], [start_msg, jobs_df, job_sel, *detail_outs], api_name="admin_start")
    cancel.click(do_cancel, [token, job_sel], [start_msg, jobs_df, *detail_outs], api_name="admin_cancel")
    job_sel.input(do_job, [token, job_sel, metric], detail_outs, **priv)
    metric.input(do_job, [token, job_sel, metric], detail_outs, **priv)
    zip_btn.click(do_zip, [token, job_sel], [zip_dl], api_name="admin_outputs")
    timer.tick(do_tick, [token, job_sel, metric], [timer, jobs_df, job_sel, *detail_outs], show_progress="hidden",
               **priv)
    # API-only views (also used by the tests): the job list and one job's state
    def admin_jobs(token: str) -> list:
        """Every job with its progress (needs the admin token)."""
        return _api_jobs(app, token)

    def admin_job(token: str, job_id: str) -> dict:
        """One job: record, progress, summary and the tail of its log (needs the admin token)."""
        return _api_job(app, token, job_id)

    with tab:
        gr.api(admin_jobs, api_name="admin_jobs")
        gr.api(admin_job, api_name="admin_job")


def _api_jobs(app: App, tok: str) -> list[dict]:
    app.check_admin(tok)
    return [j.to_dict() | {"progress": app.runner.progress(j.id)} for j in app.runner.list()]


def _api_job(app: App, tok: str, job_id: str) -> dict:
    app.check_admin(tok)
    try:
        job = app.runner.get(job_id)
    except Exception as exc:
        raise gr.Error(esc(str(exc)), print_exception=False) from None
    return job.to_dict() | {"progress": app.runner.progress(job_id), "summary": app.runner.summary(job_id),
                            "log_tail": app.runner.log_tail(job_id, 4000)}


def _short_path(p: Path) -> str:
    from .service import _rel

    return _rel(p)
