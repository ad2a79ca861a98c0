"""Errors as the user reads them: one message per exception, raised for API clients, shown on the page.

API endpoints raise :class:`gradio.Error` with the message (a client gets an exception it can
read). Page events never raise: Gradio would stamp a red "Error" badge on every output and keep
only a toast, so they put the message in the tab's status line and leave the other outputs alone.
"""

from __future__ import annotations

import functools
import logging
import traceback

import gradio as gr

from .. import safe

log = logging.getLogger("adapt.app")

# messages name the visitor's files, questions and trace fields: a status line (Markdown) takes
# them through esc, a gr.Error (HTML toast, API clients) through safe.tags
esc = safe.md


def user_errors() -> tuple[type[BaseException], ...]:
    from adapt.backbones import BackboneError
    from adapt.config import ConfigError
    from adapt.images import ImageError
    from adapt.prompts import QuestionError

    from ..jobs import JobError

    return (ImageError, BackboneError, ConfigError, JobError, QuestionError, UserError)


class UserError(ValueError):
    """Something the visitor can fix (no image, no trace chosen ...), with a message for them."""


def message(exc: BaseException, where: str = "") -> str:
    """The one line a user reads for ``exc`` (unexpected errors are logged with their traceback)."""
    if isinstance(exc, gr.Error):
        return str(exc.message)
    if isinstance(exc, user_errors()) or isinstance(exc, (ValueError, FileNotFoundError)):
        return str(exc) or type(exc).__name__  # as written: many start with a file name
    if isinstance(exc, MemoryError):
        return "The server ran out of memory for this request; try a smaller image or fewer new tokens."
    log.error("unexpected error in %s:\n%s", where or "a handler", traceback.format_exc())
    return (f"Something went wrong ({type(exc).__name__}: {str(exc)[:300]}). "
            "The server is still running; the details are in its log.")


def question_error(text: str) -> str | None:
    """The message for a question that cannot be asked (the CLI's words: :mod:`adapt.prompts`)."""
    from adapt.prompts import QuestionError, check_length

    try:
        check_length(text)
    except QuestionError as exc:
        return str(exc)
    return None


def friendly(fn):
    """For API endpoints: every exception becomes a readable ``gr.Error`` (the server keeps serving)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise gr.Error(safe.tags(message(exc, fn.__name__)), print_exception=False) from None

    return wrapper


def status_line(text: str, kind: str = "error") -> str:
    """Markdown of the status line: ⚠️ for errors, ✅ for results, ℹ️ for notes."""
    mark = {"error": "⚠️", "ok": "✅", "note": "ℹ️"}[kind]
    return f"{mark} {text}"


def reporting(fn, n_outputs: int):
    """For page events: ``fn`` returns (status, *outputs); on an error the status line gets the
    message and the ``n_outputs`` other outputs are left as they are."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            return (status_line(esc(message(exc, fn.__name__))), *([gr.skip()] * n_outputs))

    return wrapper
