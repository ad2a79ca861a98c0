"""Interactive charts of one trace (plotly): criteria and λ per layer, AMC per step, degradation signals."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from .. import safe
from .answers import answer, run_label

RUN_COLOURS = {"unsteered": "#404040", "steered": "#d62728"}
ANCHOR_FILL = "rgba(255, 193, 7, 0.18)"
CRITERIA = (("spec", "spectral S_spec", "#1f77b4"), ("smooth", "smoothness S_smooth", "#2ca02c"),
            ("focus", "focus S_focus", "#9467bd"))
# The template is set as plotly's default once (setting it per figure deep-copies it: +30 ms per
# analysis); the app owns its process, so the global default is fine.
pio.templates.default = "plotly_white"
# legends under the axes: above them they collide with the title once they wrap to two rows
PLOT_LAYOUT = dict(margin=dict(l=50, r=20, t=44, b=40), height=360,
                   legend=dict(orientation="h", yanchor="top", y=-0.2, x=0, font=dict(size=11)),
                   font=dict(size=12))


def criteria_figure(trace) -> go.Figure:
    """Per-layer criterion scores (Eq. 1–5), fused score c_l (Eq. 6) and λ_l on a second axis."""
    layers = list(range(trace.num_layers))
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for key, label, colour in CRITERIA:
        if key in trace.scores:
            fig.add_trace(go.Bar(x=layers, y=np.asarray(trace.scores[key]).tolist(), name=label,
                                 marker_color=colour, opacity=0.8), secondary_y=False)
    if "fused" in trace.scores:
        fig.add_trace(go.Scatter(x=layers, y=np.asarray(trace.scores["fused"]).tolist(), name="fused c_l",
                                 mode="lines+markers", line=dict(color="#ff7f0e")), secondary_y=False)
    fig.add_trace(go.Scatter(x=layers, y=np.asarray(trace.lam).tolist(), name="λ_l (right axis)",
                             mode="lines+markers", line=dict(color="black", width=3, dash="dot")),
                  secondary_y=True)
    fig.update_layout(title=dict(text="Anchor criteria and fusion weight λ per layer", font=dict(size=14)),
                      barmode="group", **PLOT_LAYOUT)
    fig.update_xaxes(title_text="decoder layer", dtick=1 if len(layers) <= 16 else None)
    fig.update_yaxes(title_text="score", range=[0, 1.05], secondary_y=False)
    fig.update_yaxes(title_text="λ", rangemode="tozero", secondary_y=True, showgrid=False)
    return fig


def _series(values: np.ndarray, layer: int | None) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] == 0:
        return np.zeros(0)
    return values.mean(1) if layer is None else values[:, layer]


def amc_figure(trace, layer: int | None = None, step: int | None = None) -> go.Figure:
    """AMC index over decoding steps (Eq. 10) for both runs: mean of the monitored layers (or one
    layer), each monitored layer thin, the trigger threshold τ·S_ref, the anchor phase (steps < K,
    never steered) shaded, and every intervention."""
    fig = go.Figure()
    asi = trace.config.get("asi", {}) if isinstance(trace.config, dict) else {}
    tau = asi.get("tau")
    k = (trace.config.get("anchor", {}) if isinstance(trace.config, dict) else {}).get("k")
    monitored = [int(i) for i in trace.asi_layers] or list(range(trace.num_layers))
    threshold = np.asarray(trace.threshold, dtype=np.float64)
    n_steps = 0
    # steered first: the unsteered line is drawn over it, dashed, so that it shows where they agree
    for run in ("steered", "unsteered"):
        a = answer(trace, run)
        if a is None or np.asarray(a.amc).size == 0:
            continue
        amc = np.asarray(a.amc, dtype=np.float64)
        steps = list(range(amc.shape[0]))
        n_steps = max(n_steps, len(steps))
        colour = RUN_COLOURS[run]
        if layer is None:
            if run == "steered":
                for i, l in enumerate(monitored):
                    fig.add_trace(go.Scatter(x=steps, y=amc[:, l].tolist(), mode="lines", name="steered, per layer",
                                             legendgroup="layers", showlegend=i == 0, opacity=0.25,
                                             line=dict(color=colour, width=1), legendrank=30,
                                             hovertemplate=f"layer {l}<br>step %{{x}}<br>AMC %{{y:.4g}}"
                                                           "<extra></extra>"))
            y = amc[:, monitored].mean(1)
            name = f"{safe.tags(run_label(trace, run))}: mean of monitored layers"
        else:
            y = amc[:, layer]
            name = f"{safe.tags(run_label(trace, run))}: layer {layer}"
        unsteered = run == "unsteered"
        fig.add_trace(go.Scatter(x=steps, y=y.tolist(), mode="lines+markers", name=name,
                                 legendrank=10 if unsteered else 20,
                                 line=dict(color=colour, width=2 if unsteered else 3, dash="dash" if unsteered else "solid"),
                                 marker=dict(size=4 if unsteered else 5, symbol="circle-open" if unsteered else "circle")))
        steered = np.asarray(a.steered, dtype=bool)
        if steered.any():
            t_idx, l_idx = np.nonzero(steered if layer is None else steered[:, [layer]])
            if layer is not None:
                l_idx = np.full_like(t_idx, layer)
            fig.add_trace(go.Scatter(
                x=t_idx.tolist(), y=amc[t_idx, l_idx].tolist(), mode="markers", legendrank=40,
                name=f"ASI intervention ({int(steered.sum())} in the {safe.tags(run_label(trace, run))} run)",
                marker=dict(symbol="x", size=8, color="#ff7f0e", line=dict(width=1)),
                customdata=l_idx.tolist(),
                hovertemplate="step %{x}, layer %{customdata}<br>AMC %{y:.4g}<extra>intervention</extra>"))
    trigger = asi.get("trigger", "amc")
    if trigger not in ("amc", "amc+mass") and n_steps:
        # the trigger does not read AMC: say what it reads instead of drawing a threshold that is not used
        what = (f"image mass < {asi.get('mass_tau', 0.8):g}·M_ref (the anchor phase's), see the signals chart"
                if trigger == "mass" else "every monitored step")
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=f"trigger: {what}", legendrank=50,
                                 line=dict(color="#ff7f0e", dash="dot", width=2)))
    elif threshold.size and n_steps:
        thr = float(np.nanmean(threshold[monitored])) if layer is None else float(threshold[layer])
        label = "τ·S_ref" if asi.get("mode", "relative") == "relative" else "τ"
        label += f" (τ={tau:g})" if isinstance(tau, (int, float)) else ""
        label += ", mean of monitored layers" if layer is None else f", layer {layer}"
        # a legend entry, not an annotation: a label on the line lands on the data
        if np.isfinite(thr):
            fig.add_trace(go.Scatter(x=[-0.5, n_steps - 0.5], y=[thr, thr], mode="lines", name=f"trigger {label}",
                                     legendrank=50, line=dict(color="#ff7f0e", dash="dot", width=2),
                                     hoverinfo="skip"))
    if isinstance(k, int) and k > 0 and n_steps:
        fig.add_vrect(x0=-0.5, x1=min(k, n_steps) - 0.5, fillcolor=ANCHOR_FILL, line_width=0, layer="below")
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", legendrank=60,
                                 name=f"anchor phase: steps 0–{k - 1} (K={k}), never steered",
                                 marker=dict(symbol="square", size=12, color=ANCHOR_FILL,
                                             line=dict(color="rgba(200, 150, 0, 0.6)", width=1))))
    if step is not None:
        fig.add_vline(x=step, line=dict(color="#444", width=1, dash="dot"))
    where = "mean of monitored layers" if layer is None else f"layer {layer}"
    layout = dict(PLOT_LAYOUT, height=400, margin=dict(l=50, r=20, t=44, b=40))
    fig.update_layout(title=dict(text=f"AMC index per decoding step ({where})", font=dict(size=14)), **layout)
    fig.update_xaxes(title_text="decoding step")
    fig.update_yaxes(title_text="AMC", rangemode="tozero")
    return fig


SIGNALS = (("similarity", "similarity to anchor"), ("change", "change vs previous step"),
           ("mass", "attention mass on image"))


def signals_figure(trace, layer: int | None = None, step: int | None = None) -> go.Figure:
    """The three degradation signals per step (similarity to the anchor, step-to-step change,
    image attention mass) for both runs, mean over layers or one layer."""
    fig = make_subplots(rows=1, cols=3, subplot_titles=[s[1] for s in SIGNALS], horizontal_spacing=0.08)
    for run in ("steered", "unsteered"):  # the dashed unsteered line on top, visible where they agree
        a = answer(trace, run)
        if a is None:
            continue
        for col, (key, _) in enumerate(SIGNALS, start=1):
            y = _series(getattr(a, key), layer)
            fig.add_trace(go.Scatter(x=list(range(len(y))), y=y.tolist(), mode="lines",
                                     name=safe.tags(run_label(trace, run)),
                                     legendgroup=run, showlegend=col == 1,
                                     line=dict(color=RUN_COLOURS[run], width=2,
                                               dash="dash" if run == "unsteered" else "solid")),
                          row=1, col=col)
            steps_steered = np.nonzero(np.asarray(a.steered, dtype=bool).any(1))[0]
            if len(steps_steered) and run == "steered":
                fig.add_trace(go.Scatter(x=steps_steered.tolist(), y=y[steps_steered].tolist(), mode="markers",
                                         name="steered step", legendgroup="iv", showlegend=col == 1,
                                         marker=dict(symbol="x", size=6, color="#ff7f0e")), row=1, col=col)
    if step is not None:
        for col in (1, 2, 3):
            fig.add_vline(x=step, line=dict(color="#444", width=1, dash="dot"), row=1, col=col)
    where = "mean of layers" if layer is None else f"layer {layer}"
    layout = dict(PLOT_LAYOUT, height=340, margin=dict(l=40, r=20, t=70, b=40),
                  legend=dict(orientation="h", yanchor="top", y=-0.25, x=0, font=dict(size=11)))
    fig.update_layout(title=dict(text=f"Degradation signals per decoding step ({where})", font=dict(size=14)),
                      **layout)
    fig.update_xaxes(title_text="step")
    return fig
