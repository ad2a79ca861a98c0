"""Gradio components the app adapts to its needs."""

from __future__ import annotations

import gradio as gr


class SafeImage(gr.Image):
    """``gr.Image`` that hands an upload it cannot decode to the handler as a path, so that the
    handler's image check (:func:`adapt.images.load_image`) says what is wrong, in its own words:
    one phrasing for an unreadable image, and no failure before the handler can report it."""

    is_template = True  # rendered by the frontend as a plain Image

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except Exception:
            path = getattr(payload, "path", None)
            if path:
                return str(path)
            raise


class _RawOnFailure:
    """Mixin: a value the component cannot check goes to the handler as it came; the settings check
    (:meth:`app.knobs.Knobs.config`) refuses it in the app's words. Gradio's own refusal would log a
    traceback for a value only an API client can send."""

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except Exception:
            return payload

    def get_block_name(self) -> str:
        # the frontend draws the Gradio component adapted here; Gradio's default names the first base
        # class, this mixin, which the frontend does not know (the knob was silently not drawn)
        return next(c for c in type(self).__mro__ if c.__module__.startswith("gradio.")).__name__.lower()


class SafeSlider(_RawOnFailure, gr.Slider):
    is_template = True


class SafeNumber(_RawOnFailure, gr.Number):
    is_template = True
