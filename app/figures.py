"""Figures of one :class:`adapt.trace.Trace`: image overlays (OpenCV) and interactive charts (plotly).

Everything here is pure: a Trace in, numpy images / plotly figures / HTML out. Nothing loads a
model, so a trace file saved earlier renders exactly like a fresh analysis.
"""

from __future__ import annotations

import html
import io
import zipfile
from dataclasses import dataclass

import cv2
import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots
from PIL import Image

DISPLAY_SIDE = 224  # longest side of overlay tiles (px): big enough to read, cheap to encode
COLORMAP = cv2.COLORMAP_TURBO
RUN_COLOURS = {"unsteered": "#7f7f7f", "steered": "#d62728"}
CRITERIA = (("spec", "spectral S_spec", "#1f77b4"), ("smooth", "smoothness S_smooth", "#2ca02c"),
            ("focus", "focus S_focus", "#9467bd"))
# The template is set as plotly's default once (setting it per figure deep-copies it: +30 ms per
# analysis); the app owns its process, so the global default is fine.
pio.templates.default = "plotly_white"
PLOT_LAYOUT = dict(margin=dict(l=50, r=20, t=48, b=40), height=330,
                   legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0, font=dict(size=11)),
                   font=dict(size=12))


# --------------------------------------------------------------------------------------------
# image overlays
# --------------------------------------------------------------------------------------------
def display_image(image: Image.Image, side: int = DISPLAY_SIDE) -> np.ndarray:
    """The image as uint8 RGB with its longest side scaled to ``side`` (aspect kept)."""
    w, h = image.size
    s = side / max(w, h)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    arr = np.asarray(image.convert("RGB"))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC
    return cv2.resize(arr, size, interpolation=interp)


def normalise(m: np.ndarray) -> np.ndarray:
    m = np.nan_to_num(np.asarray(m, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(m.min()), float(m.max())
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def heat(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A grid map min-max scaled, upsampled to ``size`` (w, h) and coloured, uint8 RGB."""
    up = cv2.resize(normalise(m), size, interpolation=cv2.INTER_CUBIC)
    up = np.clip(up * 255.0, 0, 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(up, COLORMAP), cv2.COLOR_BGR2RGB)


def overlay(base: np.ndarray, m: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """``m`` (an h×w grid map) coloured and blended over ``base`` (uint8 RGB, display size)."""
    h, w = base.shape[:2]
    return cv2.addWeighted(base, 1.0 - alpha, heat(m, (w, h)), alpha, 0.0)


def grid_of(trace, flat: np.ndarray) -> np.ndarray:
    h, w = trace.grid
    return np.asarray(flat, dtype=np.float32).reshape(h, w)


def layer_gallery(trace, base: np.ndarray | None = None) -> list[tuple[np.ndarray, str]]:
    """Small multiples: each layer's early-step map A_l over the image, captioned with λ_l."""
    base = display_image(trace.image) if base is None else base
    best = int(np.argmax(trace.lam)) if len(trace.lam) else -1
    out = []
    for layer, amap in enumerate(trace.layer_maps):
        star = " ★" if layer == best else ""
        out.append((overlay(base, amap), f"layer {layer} · λ={float(trace.lam[layer]):.3f}{star}"))
    return out


def anchor_gallery(trace, base: np.ndarray | None = None) -> list[tuple[np.ndarray, str]]:
    """Bias map B, debiasing mask D, fused map Ā and the debiased anchor W, each over the image."""
    base = display_image(trace.image) if base is None else base
    items = []
    if trace.bias is not None:
        items.append((overlay(base, trace.bias), "bias map B (noise images)"))
    if trace.debias_mask is not None:
        items.append((overlay(base, trace.debias_mask), "debiasing mask D"))
    items.append((overlay(base, trace.fused), "fused map Ā (λ-weighted layers)"))
    items.append((overlay(base, trace.anchor), "debiased anchor W"))
    return items


def answer(trace, run: str):
    return trace.steered if run == "steered" else trace.unsteered


def num_steps(trace) -> int:
    steps = [len(a.tokens) for a in (trace.unsteered, trace.steered) if a is not None]
    return max([1, *steps])


def step_map(trace, run: str, step: int, layer: int | None = None) -> tuple[np.ndarray | None, str]:
    """The attention of decoding step ``step`` of ``run`` (mean over layers or one layer) over
    the image that run saw, with a caption naming the step's token and whether ASI steered it."""
    a = answer(trace, run)
    if a is None:
        return None, f"{run}: not run"
    maps = np.asarray(a.maps)
    if maps.ndim != 3 or maps.shape[0] == 0:
        return None, f"{run}: no attention recorded"
    t = int(np.clip(step, 0, maps.shape[0] - 1))
    flat = maps[t].mean(0) if layer is None else maps[t, layer]
    image = trace.enhanced_image if (a.image_used == "enhanced" and trace.enhanced_image is not None) else trace.image
    tile = overlay(display_image(image), grid_of(trace, flat))
    token = a.tokens[t] if t < len(a.tokens) else "(end)"
    where = "mean of layers" if layer is None else f"layer {layer}"
    n_steered = int(np.asarray(a.steered)[t].sum()) if t < len(a.steered) else 0
    steer = f" · ASI steered {n_steered} layer{'s' if n_steered != 1 else ''}" if n_steered else ""
    note = " (past its end)" if step >= maps.shape[0] else ""
    return tile, f"{run} · step {t}{note} · token {token.strip()!r} · {where}{steer}"


# --------------------------------------------------------------------------------------------
# charts
# --------------------------------------------------------------------------------------------
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
    layer), each monitored layer thin, the trigger threshold τ·S_ref and every intervention."""
    fig = go.Figure()
    tau = trace.config.get("asi", {}).get("tau")
    monitored = [int(i) for i in trace.asi_layers] or list(range(trace.num_layers))
    threshold = np.asarray(trace.threshold, dtype=np.float64)
    for run in ("unsteered", "steered"):
        a = answer(trace, run)
        if a is None or np.asarray(a.amc).size == 0:
            continue
        amc = np.asarray(a.amc, dtype=np.float64)
        steps = list(range(amc.shape[0]))
        colour = RUN_COLOURS[run]
        if layer is None:
            if run == "steered":
                for i, l in enumerate(monitored):
                    fig.add_trace(go.Scatter(x=steps, y=amc[:, l].tolist(), mode="lines", name="per layer",
                                             legendgroup="layers", showlegend=i == 0, opacity=0.25,
                                             line=dict(color=colour, width=1),
                                             hovertemplate=f"layer {l}<br>step %{{x}}<br>AMC %{{y:.4g}}"
                                                           "<extra></extra>"))
            y = amc[:, monitored].mean(1)
            name = f"{run}: mean over monitored layers"
        else:
            y = amc[:, layer]
            name = f"{run}: layer {layer}"
        fig.add_trace(go.Scatter(x=steps, y=y.tolist(), mode="lines+markers", name=name,
                                 line=dict(color=colour, width=3, dash="dash" if run == "unsteered" else "solid"),
                                 marker=dict(size=4)))
        steered = np.asarray(a.steered, dtype=bool)
        if steered.any():
            t_idx, l_idx = np.nonzero(steered if layer is None else steered[:, [layer]])
            if layer is not None:
                l_idx = np.full_like(t_idx, layer)
            fig.add_trace(go.Scatter(
                x=t_idx.tolist(), y=amc[t_idx, l_idx].tolist(), mode="markers",
                name=f"ASI intervention ({int(steered.sum())} in {run} run)",
                marker=dict(symbol="x", size=8, color="#ff7f0e", line=dict(width=1)),
                customdata=l_idx.tolist(),
                hovertemplate="step %{x}, layer %{customdata}<br>AMC %{y:.4g}<extra>intervention</extra>"))
    if threshold.size:
        thr = float(threshold[monitored].mean()) if layer is None else float(threshold[layer])
        label = "τ·S_ref" if trace.config.get("asi", {}).get("mode", "relative") == "relative" else "τ"
        label += f" (τ={tau:g})" if isinstance(tau, (int, float)) else ""
        label += " mean of monitored layers" if layer is None else f" layer {layer}"
        fig.add_hline(y=thr, line=dict(color="#ff7f0e", dash="dot", width=2), annotation_text=label,
                      annotation_position="top left", annotation_font_size=11)
    if step is not None:
        fig.add_vline(x=step, line=dict(color="#444", width=1, dash="dot"))
    where = "mean of monitored layers" if layer is None else f"layer {layer}"
    fig.update_layout(title=dict(text=f"AMC index per decoding step ({where})", font=dict(size=14)),
                      **PLOT_LAYOUT)
    fig.update_xaxes(title_text="decoding step")
    fig.update_yaxes(title_text="AMC", rangemode="tozero")
    return fig


SIGNALS = (("similarity", "similarity to anchor"), ("change", "change vs previous step"),
           ("mass", "attention mass on image"))


def signals_figure(trace, layer: int | None = None, step: int | None = None) -> go.Figure:
    """The three degradation signals per step (similarity to the anchor, step-to-step change,
    image attention mass) for both runs, mean over layers or one layer."""
    fig = make_subplots(rows=1, cols=3, subplot_titles=[s[1] for s in SIGNALS], horizontal_spacing=0.08)
    for run in ("unsteered", "steered"):
        a = answer(trace, run)
        if a is None:
            continue
        for col, (key, _) in enumerate(SIGNALS, start=1):
            y = _series(getattr(a, key), layer)
            fig.add_trace(go.Scatter(x=list(range(len(y))), y=y.tolist(), mode="lines", name=run,
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
    layout = dict(PLOT_LAYOUT, height=320, margin=dict(l=40, r=20, t=60, b=40),
                  legend=dict(orientation="h", yanchor="top", y=-0.22, x=0, font=dict(size=11)))
    fig.update_layout(title=dict(text=f"Degradation signals per decoding step ({where})", font=dict(size=14)),
                      **layout)
    fig.update_xaxes(title_text="step")
    return fig


# --------------------------------------------------------------------------------------------
# answers: tokens, objects, hallucinations
# --------------------------------------------------------------------------------------------
@dataclass
class TokenInfo:
    text: str
    category: str | None  # world object category the token mentions, if any
    hallucinated: bool
    steered_layers: int


def token_infos(trace, run: str) -> list[TokenInfo]:
    """The run's tokens with the object each mentions (world vocabulary) and whether that object
    is absent from the ground truth (``trace.meta["objects"]``, known for world scenes)."""
    a = answer(trace, run)
    if a is None:
        return []
    truth = trace.meta.get("objects") if isinstance(trace.meta, dict) else None
    truth = set(truth) if truth is not None else None
    pieces = list(a.tokens)
    cats = _token_categories(pieces)
    steered = np.asarray(a.steered, dtype=bool)
    out = []
    for i, (p, c) in enumerate(zip(pieces, cats)):
        n = int(steered[i].sum()) if i < len(steered) else 0
        out.append(TokenInfo(p, c, bool(c is not None and truth is not None and c not in truth), n))
    return out


def _token_categories(pieces: list[str]) -> list[str | None]:
    """The world object category each token names, if any (synonyms and plurals included).

    Word-level tokenizers (the embedded model) give one word per token. For sub-word tokenizers a
    noun split over up to three consecutive pieces is joined back when no piece after the first
    starts a new word (leading space or SentencePiece's ``▁``)."""
    try:
        from adapt.world.language import NOUN_TO_CATEGORY
    except Exception:  # the world package is optional for the figures
        return [None] * len(pieces)
    cats: list[str | None] = [None] * len(pieces)
    clean = [p.replace("\u2581", " ").replace("Ġ", " ") for p in pieces]
    for i in range(len(clean)):
        if cats[i] is not None:
            continue
        word = ""
        for j in range(i, min(len(clean), i + 3)):
            piece = clean[j]
            if j > i and (piece[:1].isspace() or not piece.strip().isalpha()):
                break
            word += piece.strip().lower()
            if not word.isalpha():
                break
            cat = NOUN_TO_CATEGORY.get(word)
            if cat is not None:
                for k in range(i, j + 1):
                    cats[k] = cat
                break
    return cats


def highlighted(trace, run: str) -> list[tuple[str, str | None]]:
    """(token, label) pairs for ``gr.HighlightedText``: 'hallucinated' (an object absent from the
    ground truth) or 'object' (any other object noun)."""
    out = []
    for info in token_infos(trace, run):
        label = None
        if info.category is not None:
            label = "hallucinated" if info.hallucinated else "object"
        piece = info.text
        joined = piece[:1].isspace() or not out or piece[:1] in ".,;:!?)'" or piece.startswith("##")
        out.append((piece.removeprefix("##") if joined else " " + piece, label))
    return out


# "object": an object noun of the world (green: in the image when ground truth is known)
HIGHLIGHT_COLOURS = {"hallucinated": "#ff4d4f", "object": "#52c41a"}


def hallucinated_objects(trace, run: str) -> list[str]:
    """Distinct hallucinated object categories in ``run`` (from the trace's meta, else recomputed)."""
    meta = trace.meta if isinstance(trace.meta, dict) else {}
    given = (meta.get("hallucinated") or {}).get(run)
    if given is not None:
        return list(dict.fromkeys(given))
    return list(dict.fromkeys(i.category for i in token_infos(trace, run) if i.hallucinated))


def alignment_html(trace, step: int | None = None, per_row: int = 16) -> str:
    """Both answers token-aligned by decoding step (blocks of ``per_row`` steps): hallucinated
    objects red, grounded objects green, steps where ASI steered underlined, the selected step framed."""
    runs = [r for r in ("unsteered", "steered") if answer(trace, r) is not None]
    infos = {r: token_infos(trace, r) for r in runs}
    total = max([0, *(len(v) for v in infos.values())])
    if total == 0:
        return "<div class='adapt-align'><em>no tokens generated</em></div>"
    blocks = []
    for start in range(0, total, per_row):
        cols = range(start, min(total, start + per_row))
        head = "".join(f"<th class='{'sel' if t == step else ''}'>{t}</th>" for t in cols)
        rows = [f"<tr><th class='run'>step</th>{head}</tr>"]
        for r in runs:
            cells = []
            for t in cols:
                if t >= len(infos[r]):
                    cells.append(f"<td class='end{' sel' if t == step else ''}'></td>")
                    continue
                info = infos[r][t]
                cls = []
                if info.category is not None:
                    cls.append("hal" if info.hallucinated else "obj")
                if info.steered_layers:
                    cls.append("steer")
                other = [x for x in runs if x != r]
                if other and t < len(infos[other[0]]) and infos[other[0]][t].text.strip() != info.text.strip():
                    cls.append("diff")
                if t == step:
                    cls.append("sel")
                tip = f"step {t}"
                if info.steered_layers:
                    tip += f": ASI steered {info.steered_layers} layer(s)"
                if info.hallucinated:
                    tip += f"; '{info.category}' is not in the image"
                cells.append(f"<td class='{' '.join(cls)}' title='{html.escape(tip, quote=True)}'>"
                             f"{html.escape(info.text.strip()) or '&nbsp;'}</td>")
            label = "ADAPT-TF" if r == "steered" else "greedy"
            rows.append(f"<tr><th class='run'>{label}</th>{''.join(cells)}</tr>")
        blocks.append(f"<table>{''.join(rows)}</table>")
    legend = ("<div class='legend'><span class='hal'>hallucinated object</span> <span class='obj'>object in "
              "the image</span> <span class='steer'>ASI steered this step</span> <span class='diff'>runs "
              "differ</span></div>")
    if not (isinstance(trace.meta, dict) and trace.meta.get("objects") is not None):
        legend = legend.replace("hallucinated object", "hallucinated object (needs ground truth)")
    return f"<div class='adapt-align'>{legend}{''.join(blocks)}</div>"


ALIGN_CSS = """
.adapt-align {font-family: ui-monospace, monospace; font-size: 13px; overflow-x: auto; max-height: 320px;
              overflow-y: auto;}
.adapt-align table {border-collapse: collapse; margin: 4px 0 8px 0;}
.adapt-align th, .adapt-align td {border: 1px solid #ddd; padding: 2px 5px; text-align: center; white-space: nowrap;}
.adapt-align th {color: #888; font-weight: normal; font-size: 11px;}
.adapt-align th.run {text-align: right; color: #444; font-weight: 600;}
.adapt-align .hal {background: #ffccc7; color: #a8071a; font-weight: 700;}
.adapt-align .obj {background: #d9f7be; color: #135200;}
.adapt-align .steer {text-decoration: underline wavy #fa8c16;}
.adapt-align .diff {font-style: italic;}
.adapt-align .sel {outline: 2px solid #1677ff; outline-offset: -2px;}
.adapt-align td.end {background: #fafafa;}
.adapt-align .legend span {display: inline-block; padding: 1px 6px; margin-right: 6px; border: 1px solid #ddd;}
"""


def summary_markdown(trace) -> str:
    """A short verdict above the figures."""
    meta = trace.meta if isinstance(trace.meta, dict) else {}
    lines = []
    timings = trace.timings or {}
    total = timings.get("total") or sum(v for v in timings.values() if isinstance(v, (int, float)))
    st = trace.steered
    lines.append(
        f"**Backbone** `{_short(trace.backbone)}` · grid {trace.grid[0]}×{trace.grid[1]} · "
        f"{trace.num_layers} layers · ASI on layers {_layers_text(trace.asi_layers, trace.num_layers)}"
        + (f" · {st.num_interventions} interventions" if st is not None else "")
        + (f" · bias map {'cached' if trace.bias_cache_hit else 'computed'}" if trace.bias is not None else "")
        + (f" · {total:.2f} s" if total else ""))
    if meta.get("objects") is not None:
        objs = ", ".join(dict.fromkeys(meta["objects"])) or "nothing"
        lines.append(f"**In the image (ground truth):** {objs}")
        for run, label in (("unsteered", "Greedy"), ("steered", "ADAPT-TF")):
            if answer(trace, run) is None:
                continue
            hal = hallucinated_objects(trace, run)
            lines.append(f"**{label} hallucinates:** " + (", ".join(f"`{h}`" for h in hal) if hal else "nothing ✓"))
    return "  \n".join(lines)


def _short(name: str) -> str:
    name = str(name)
    return name if len(name) <= 60 else "…" + name[-57:]


def _layers_text(layers, n) -> str:
    layers = list(layers)
    if layers == list(range(n)):
        return "all"
    return ",".join(str(i) for i in layers) if layers else "none"


# --------------------------------------------------------------------------------------------
# bundle of every figure (download)
# --------------------------------------------------------------------------------------------
def figures_zip(trace, path) -> None:
    """One zip: ``figures.html`` (every chart, interactive, plotly.js embedded once: works offline)
    and PNGs of every overlay."""
    figs = [criteria_figure(trace), amc_figure(trace), signals_figure(trace)]
    parts = [fig.to_html(full_html=False, include_plotlyjs=False) for fig in figs]
    page = ("<html><head><meta charset='utf-8'><title>ADAPT figures</title>"
            "<script src='plotly.min.js'></script></head><body>"
            f"<h2>{html.escape(trace.question)}</h2>" + "".join(parts)
            + f"<style>{ALIGN_CSS}</style>" + alignment_html(trace) + "</body></html>")
    base = display_image(trace.image, side=448)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("figures.html", page)
        # plotly.js beside the page (works offline); stored, not deflated: compressing 4.6 MB on
        # every analysis would cost more than the analysis
        z.writestr("plotly.min.js", _plotly_js(), compress_type=zipfile.ZIP_STORED)
        for i, (img, caption) in enumerate(layer_gallery(trace, base)):
            z.writestr(f"layer_{i:02d}.png", _png(img))
        for img, caption in anchor_gallery(trace, base):
            z.writestr(caption.split(" (")[0].replace(" ", "_").replace("Ā", "A") + ".png", _png(img))
        if trace.enhanced_image is not None:
            z.writestr("enhanced_image.png", _png(np.asarray(trace.enhanced_image)))


_PLOTLY_JS: bytes | None = None


def _plotly_js() -> bytes:
    global _PLOTLY_JS
    if _PLOTLY_JS is None:
        from plotly.offline import get_plotlyjs

        _PLOTLY_JS = get_plotlyjs().encode()
    return _PLOTLY_JS


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# live job metrics (admin tab)
# --------------------------------------------------------------------------------------------
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
        label = name.replace("items-", "")
        fig.add_trace(go.Scatter(x=list(range(1, len(y) + 1)), y=y.tolist(), mode="lines", name=label,
                                 hovertemplate=f"{label}<br>item %{{x}}<br>{metric} %{{y:.4g}}<extra></extra>"))
    title = f"running {metric} over items done" if metric else "no numeric metric yet"
    fig.update_layout(title=dict(text=title, font=dict(size=14)), **PLOT_LAYOUT)
    fig.update_xaxes(title_text="items done")
    fig.update_yaxes(title_text=metric or "")
    return fig
