"""The Gradio Blocks: Inspect (one analysis, every view), Export (many images), Admin (jobs).

One module per tab (:mod:`.inspect`, :mod:`.export`, :mod:`.admin`); :mod:`.errors` says how an
error reaches the user, :mod:`.views` turns a trace into the Inspect views, :mod:`.state` holds
what every visitor shares.
"""

from __future__ import annotations

import gradio as gr

from .. import figures as F
from ..models import model_notice
from .errors import message
from .state import App

__all__ = ["App", "CSS", "TITLE", "build"]

TITLE = "ADAPT — watch and steer a multimodal model's attention"
CSS = F.ALIGN_CSS + """
#adapt-notice {border-left: 4px solid #faad14; padding: 6px 12px; background: #fffbe6;}
#adapt-status p, #adapt-ex-status p, #adapt-admin-status p {margin: 4px 0;}
#adapt-status:not(:empty) {border-left: 4px solid #d9d9d9; padding: 2px 10px;}
/* results left from an earlier run while the status line reports an error */
.adapt-stale {opacity: 0.45; filter: grayscale(0.6);}
#adapt-examples button, #adapt-examples button * {white-space: normal !important; text-overflow: clip !important;
    overflow: visible !important; -webkit-line-clamp: unset !important; height: auto !important;}
#adapt-admin-results table {table-layout: auto;}
#adapt-admin-results th {white-space: nowrap;}
"""


def build(app: App | None = None) -> gr.Blocks:
    from .export import ExportTab
    from .inspect import InspectTab

    app = app or App()
    with gr.Blocks(title="ADAPT", fill_width=True, delete_cache=(3600, 6 * 3600), analytics_enabled=False) as demo:
        gr.Markdown(f"## {TITLE}\n"
                    "Upload an image (or pick a trap scene), ask a question, and compare the plain greedy answer "
                    "(or another registered method: PAI, an ADAPT-TF reading, …) with ADAPT-TF: the visual anchor built from the first decoding steps, the AMC drift "
                    "index per step and layer, and attention steering where it drifts.")
        notice_text = model_notice(app.default_model)
        notice = gr.Markdown(notice_text, elem_id="adapt-notice", visible=bool(notice_text))
        with gr.Tabs():
            with gr.Tab("Inspect", id="inspect"):
                inspect = InspectTab(app)
            with gr.Tab("Export", id="export"):
                export = ExportTab(app)
            admin = None
            if app.runner is not None:
                from .admin import AdminTab

                admin = AdminTab(app)
        inspect.wire()
        export.wire(inspect.backbone, inspect.knobs)
        if admin is not None:
            admin.wire()

        def refresh_notice():
            text = model_notice(app.default_model)
            return gr.Markdown(value=text, visible=bool(text))

        def refresh_backbones():
            # a training job that finished since the server started offers its model on the next load
            try:
                return gr.Dropdown(choices=app.backbone_choices())
            except Exception as exc:  # an unreadable job record: keep the choices built at start
                message(exc, "refresh_backbones")
                return gr.skip()

        demo.load(refresh_notice, None, [notice], api_visibility="private", queue=False)
        demo.load(refresh_backbones, None, [inspect.backbone], api_visibility="private", queue=False)
    demo.adapt_app = app  # for tests and the launcher
    return demo
