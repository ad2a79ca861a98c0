"""Live metrics of admin jobs: numbers read from their JSONL rows, running values as a chart."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from .. import safe
from .charts import PLOT_LAYOUT


PREFERRED_METRICS = ("chair_s", "chair_i", "recall", "pope_acc", "interventions", "seconds", "score")
_SKIP_KEYS = {"i", "index", "idx", "seed", "scene_seed", "id", "is_trap"}
RATIO_METRICS = {"chair_i": ("_hal", "_men")}  # running value = Σ numerator / Σ denominator


def row_metrics(row: dict) -> dict[str, float]:
    """Numbers of one JSONL row: its numeric fields plus, for world-benchmark items, per-item CHAIR_s,
    CHAIR_i (as running Σ hallucinated / Σ mentioned), recall, POPE accuracy and ASI interventions."""
    out: dict[str, float] = {}
    for k, v in row.items():
        if k not in _SKIP_KEYS and isinstance(v, (int, float, bool)):
            out[k] = float(v)
    hal, men, truth = row.get("hallucinated"), row.get("mentioned"), row.get("truth")
    if isinstance(hal, list) and isinstance(men, list):
        out["chair_s"] = float(bool(hal))
        out["_hal"], out["_men"] = float(len(hal)), float(len(men))
        if isinstance(truth, list) and truth:
            out["recall"] = len(set(men) & set(truth)) / len(set(truth))
    pope = row.get("pope")
    if isinstance(pope, list) and pope:
        ok = [q.get("pred") == q.get("label") for q in pope if isinstance(q, dict)]
        if ok:
            out["pope_acc"] = sum(ok) / len(ok)
    info = row.get("info")
    if isinstance(info, dict):
        for k in ("interventions", "seconds"):
            if isinstance(info.get(k), (int, float)) and k not in out:
                out[k] = float(info[k])
    return out


def numeric_keys(rows_by_file: dict[str, list[dict]]) -> list[str]:
    """Metrics available in the job's JSONL rows (row indices excluded)."""
    keys: dict[str, None] = {}
    for rows in rows_by_file.values():
        for row in rows[:200]:
            m = row_metrics(row)
            for k in m:
                if not k.startswith("_"):
                    keys.setdefault(k, None)
            if "_hal" in m:
                keys.setdefault("chair_i", None)
    return sorted(keys, key=lambda k: (PREFERRED_METRICS.index(k) if k in PREFERRED_METRICS else 99, k))


def default_metric(keys: list[str]) -> str | None:
    for k in PREFERRED_METRICS:
        if k in keys:
            return k
    return keys[0] if keys else None


def running_metric_figure(rows_by_file: dict[str, list[dict]], metric: str | None) -> go.Figure:
    """Running value of ``metric`` over the items done so far, one line per JSONL file (method)."""
    fig = go.Figure()
    for name, rows in rows_by_file.items():
        ms = [row_metrics(r) for r in rows]
        if metric in RATIO_METRICS:
            num, den = RATIO_METRICS[metric]
            pairs = [(m[num], m[den]) for m in ms if num in m and den in m]
            if not pairs:
                continue
            n = np.cumsum([p[0] for p in pairs])
            d = np.cumsum([p[1] for p in pairs])
            y = np.where(d > 0, n / np.maximum(d, 1e-12), 0.0)
        else:
            vals = [m[metric] for m in ms if metric in m]
            if not vals:
                continue
            y = np.cumsum(vals) / np.arange(1, len(vals) + 1)
        # file names and metric names come from the job's files: shown, never read as markup
        label = safe.tags(name.replace("items-", ""))
        fig.add_trace(go.Scatter(x=list(range(1, len(y) + 1)), y=y.tolist(), mode="lines", name=label,
                                 hovertemplate=f"{label}<br>item %{{x}}<br>{safe.tags(metric)} %{{y:.4g}}"
                                               "<extra></extra>"))
    title = f"running {safe.tags(metric)} over items done" if metric else "no numeric metric yet"
    fig.update_layout(title=dict(text=title, font=dict(size=14)), **PLOT_LAYOUT)
    fig.update_xaxes(title_text="items done")
    fig.update_yaxes(title_text=safe.tags(metric or ""))
    return fig


# ------------------------------------------------------------------------------------- training
TRAIN_CURVES = (("loss", "loss"), ("margin", "reward margin"), ("accuracy", "accuracy (chosen reward > rejected)"))
SMOOTH_STEPS = 10


def is_training_log(rows: list[dict]) -> bool:
    """Rows of a ``train_log.jsonl``: a step and a loss each."""
    return bool(rows) and all(isinstance(r.get("step"), (int, float)) and isinstance(r.get("loss"), (int, float))
                              for r in rows[:20])


def training_figure(rows: list[dict], smooth: int = SMOOTH_STEPS) -> go.Figure:
    """Loss, reward margin and accuracy per logged step (each logged value a point, thin; a running
    mean over ``smooth`` rows on top), one panel each; one line per stage where the log has stages
    (the world model's vision and language steps count from 1 each)."""
    from plotly.subplots import make_subplots

    keys = [(k, t) for k, t in TRAIN_CURVES if any(isinstance(r.get(k), (int, float)) for r in rows)]
    keys = keys or [("loss", "loss")]
    fig = make_subplots(rows=1, cols=len(keys), subplot_titles=[t for _, t in keys], horizontal_spacing=0.08)
    stages = list(dict.fromkeys(r.get("stage") for r in rows))
    palette = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
    for col, (key, _) in enumerate(keys, start=1):
        for si, stage in enumerate(stages):
            pts = [(r["step"], float(r[key])) for r in rows
                   if r.get("stage") == stage and isinstance(r.get(key), (int, float)) and isinstance(r.get("step"), (int, float))]
            if not pts:
                continue
            x = [p[0] for p in pts]
            y = np.array([p[1] for p in pts])
            name = f"{safe.tags(stage)}: " if stage is not None else ""
            colour = palette[si % len(palette)]
            fig.add_trace(go.Scatter(x=x, y=y.tolist(), mode="lines+markers" if len(x) <= 60 else "lines",
                                     name=f"{name}per step", legendgroup=f"{name}-raw", showlegend=col == 1,
                                     opacity=0.45, line=dict(color=colour, width=1), marker=dict(size=4),
                                     hovertemplate=f"step %{{x}}<br>{key} %{{y:.4g}}"
                                                   f"<extra>{safe.tags(stage or '')}</extra>"),
                          row=1, col=col)
            if len(y) > 1:
                c = np.cumsum(np.insert(y, 0, 0.0))
                n = np.minimum(np.arange(1, len(y) + 1), smooth)
                mean = (c[1:] - c[np.arange(1, len(y) + 1) - n]) / n
                fig.add_trace(go.Scatter(x=x, y=mean.tolist(), mode="lines", name=f"{name}mean of {smooth}",
                                         legendgroup=f"{name}-mean", showlegend=col == 1,
                                         line=dict(color=colour, width=3), hoverinfo="skip"),
                              row=1, col=col)
    last = rows[-1] if rows else {}
    title = "training: no step logged yet" if not rows else \
        f"training: step {last.get('step')}" + "".join(
            f" · {k} {float(last[k]):.4g}" for k, _ in keys if isinstance(last.get(k), (int, float)))
    fig.update_layout(title=dict(text=title, font=dict(size=14)),
                      **dict(PLOT_LAYOUT, margin=dict(l=45, r=20, t=70, b=40)))
    fig.update_xaxes(title_text="step")
    return fig
