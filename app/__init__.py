"""The ADAPT app: a Gradio UI on top of :mod:`adapt` (the library never imports it).

``python -m app`` starts it on the embedded model; ``app/space.py`` is the Hugging Face Space entry.
"""

from __future__ import annotations

import os

__all__ = ["build_app", "launch", "main"]


def build_app(model: str | None = None, admin_token: str | None = None, jobs_root=None, max_jobs: int = 1,
              warm: bool = True):
    """The Blocks of the app (queue configured). ``admin_token`` defaults to ``$ADAPT_ADMIN_TOKEN``;
    without one the Admin tab and its API do not exist."""
    from .ui import App, build

    demo = build(App(model=model, admin_token=admin_token, jobs_root=jobs_root, max_jobs=max_jobs, warm=warm))
    # events taken from the queue at once, analyses and exports among them (one concurrency group); they
    # compute one at a time (Models.compute) once their model is loaded, so with 2 or more a slow model
    # load never holds up analyses on loaded models
    concurrency = int(os.environ.get("ADAPT_APP_CONCURRENCY", "4"))
    demo.queue(default_concurrency_limit=concurrency, max_size=int(os.environ.get("ADAPT_APP_QUEUE", "64")))
    return demo


def launch(demo, **kwargs):
    """``demo.launch`` with the app's CSS and file rules; host/port follow GRADIO_SERVER_NAME/PORT."""
    from .ui import CSS

    kwargs.setdefault("css", CSS)
    kwargs.setdefault("show_error", True)  # messages of errors raised before our handlers (input checks)
    kwargs.setdefault("footer_links", ["api", "gradio", "settings"])
    return demo.launch(**kwargs)


def main(argv=None) -> int:
    from .__main__ import main as _main

    return _main(argv)
