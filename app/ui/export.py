"""The Export tab: anchor-guided images for many uploads at once, as one zip with its manifest."""

from __future__ import annotations

import threading

import gradio as gr

from ..batch import export_batch
from ..knobs import Knobs
from .errors import UserError, esc, friendly, question_error, reporting
from .state import App


class ExportTab:
    """Layout inside a ``gr.Tab``; :meth:`wire` takes the Inspect tab's backbone and knobs."""

    def __init__(self, app: App):
        self.app = app
        gr.Markdown("Anchor-guided images for many images at once: upload image files and/or zips. "
                    "One question for all, or one per image (lines `file name: question`, or a "
                    "`.jsonl` of `{\"image\": ..., \"question\": ...}` among the uploads). Uses the "
                    "backbone and anchor settings of the Inspect tab. Bad files are reported and skipped.")
        with gr.Row():
            with gr.Column():
                self.files = gr.File(label="Images or zips", file_count="multiple", elem_id="adapt-ex-files")
                self.question = gr.Textbox(label="Question for every image", value=app.default_question())
                self.per_image = gr.Textbox(label="Per-image questions (optional)", lines=3,
                                            placeholder="cat.png: what is the cat doing?")
                with gr.Row():
                    self.run_btn = gr.Button("Export", variant="primary", elem_id="adapt-ex-run")
                    self.stop_btn = gr.Button("Stop", variant="stop", scale=0, min_width=60)
            with gr.Column():
                self.status = gr.Markdown(elem_id="adapt-ex-status")
                self.zip = gr.File(label="Anchor-guided images + manifest.jsonl", elem_id="adapt-ex-zip")
                self.report = gr.Dataframe(headers=["file", "question", "status", "detail"], label="Report",
                                           interactive=False, wrap=True)
                self.preview = gr.Gallery(label="Preview", columns=6, height=200, format="png", interactive=False)
        self.api_btn = gr.Button(visible=False)
        self._stops: dict[str, threading.Event] = {}  # per browser session: the Stop button's flag

    def _stop_flag(self, request) -> threading.Event:
        key = getattr(request, "session_hash", None) or "api"
        return self._stops.setdefault(key, threading.Event())

    def export(self, files, question, per_image, backbone_name, *knob_values, progress=None, request=None):
        """(status, zip, report rows, previews); raises on errors. Stop (same session) ends it between
        batches, so the model is free again at once rather than after the whole upload."""
        stop = self._stop_flag(request)
        stop.clear()
        if not files:
            raise UserError("Upload images (or a zip of images) to export.")
        if (question or "").strip():
            problem = question_error(question)
            if problem:
                raise UserError(problem)
        paths = [f if isinstance(f, str) else getattr(f, "name", str(f)) for f in files]
        knobs = Knobs(*knob_values)
        knobs.config()
        if progress:
            progress(0.01, desc="loading the model")
        bb = self.app.models.get(backbone_name)  # loaded before taking the compute lock (see Models)
        with self.app.models.compute:
            zpath, report, previews = export_batch(bb, paths, question, per_image, knobs,
                                                   progress=(lambda f, m: progress(f, desc=m)) if progress else None,
                                                   should_stop=stop.is_set)
        ok = sum(r[2] == "ok" for r in report)
        failed = [r[0] for r in report if r[2] != "ok"]
        msg = f"**{ok} of {len(report)} exported.**" + (
            f" Skipped: {esc(', '.join(failed))} (reasons in the report)." if failed else "")
        return msg, str(zpath), report, previews

    def wire(self, backbone, knobs: list) -> None:
        ins = [self.files, self.question, self.per_image, backbone, *knobs]
        outs = [self.status, self.zip, self.report, self.preview]
        model_kw = dict(concurrency_id="analysis", concurrency_limit="default")  # as the Inspect tab's

        def page(*args, progress=gr.Progress(), request: gr.Request = None):
            return self.export(*args, progress=progress, request=request)

        page.__name__ = "export_page"
        ev = self.run_btn.click(reporting(page, 3), ins, outs, api_visibility="private", **model_kw)

        def api(*args, progress=gr.Progress(), request: gr.Request = None):
            return self.export(*args, progress=progress, request=request)

        api.__name__ = "export"
        self.api_btn.click(friendly(api), ins, outs, api_name="export", **model_kw)

        def stop(request: gr.Request = None):
            self._stop_flag(request).set()
            return "**Export stopped** (no zip was made); run it again to export."

        self.stop_btn.click(stop, None, [self.status], cancels=[ev], api_visibility="private", queue=False)
