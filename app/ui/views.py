"""A :class:`adapt.trace.Trace` rendered into the Inspect tab's views (the RESULTS of :mod:`.inspect`)."""

from __future__ import annotations

import time

import gradio as gr

from .. import figures as F
from ..scratch import scratch_dir


def layer_index(layer) -> int | None:
    if layer in (None, "", "mean"):
        return None
    try:
        return int(str(layer).split()[-1])
    except ValueError:
        return None


def step_views(trace, step, layer):
    """The views that follow the step slider and the layer box."""
    if trace is None:
        return (gr.skip(),) * 5
    li = layer_index(layer)
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


def render(trace) -> tuple:
    """Every Inspect view of ``trace``, in the order of ``InspectTab.results``."""
    base = F.display_image(trace.image)
    steps = F.num_steps(trace)
    views = step_views(trace, 0, "mean")
    layers = ["mean"] + [f"layer {i}" for i in range(trace.num_layers)]
    # titles and colour scales are drawn into the tiles: a gallery caption would cover them
    untitled = lambda items: [(img, None) for img, _ in items]  # noqa: E731
    return (
        F.summary_markdown(trace),
        answer_text(trace, "unsteered"),
        answer_text(trace, "steered"),
        views[0],
        gr.Slider(minimum=0, maximum=max(0, steps - 1), value=0, step=1, interactive=steps > 1),
        gr.Dropdown(choices=layers, value="mean"),
        views[1], views[2], views[3], views[4],
        untitled(F.anchor_gallery(trace, base)),
        F.enlarged(trace.enhanced_image),
        F.criteria_figure(trace),
        untitled(F.layer_gallery(trace, base)),
    )


def answer_label(trace, run: str) -> str:
    """The answer box's title: which method wrote it."""
    if run == "steered":
        return "ADAPT-TF (steered)"
    name = F.compared_method(trace)
    return "Greedy (unsteered)" if name == "greedy" else f"{name} (compared with ADAPT-TF)"


def answer_text(trace, run: str):
    """One answer with its object words marked; the legend lists only the marks this trace can
    have (no "in the image" where nothing was checked)."""
    label = answer_label(trace, run)
    if F.answer(trace, run) is None:
        return gr.HighlightedText(value=[("(not run)", None)], label=label)
    labels = (F.HALLUCINATED, F.PRESENT) if F.has_truth(trace) else (F.UNVERIFIED,)
    return gr.HighlightedText(value=F.highlighted(trace, run), color_map={k: F.HIGHLIGHT_COLOURS[k] for k in labels},
                              label=label)


def save_trace(trace) -> str:
    d = scratch_dir("trace")
    stem = "trace-" + time.strftime("%Y%m%d-%H%M%S")
    return str(trace.save(d / f"{stem}.zip"))


def image_name(path) -> str:
    from pathlib import Path

    return Path(str(path)).name if path else "no image"
