"""The answers of one trace as text: tokens with the objects they name, checked against ground truth."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import safe
from ..names import model_name


def answer(trace, run: str):
    return trace.steered if run == "steered" else trace.unsteered


COMPARE_KEY = "compare"  # trace.meta key: the registered method in the unsteered slot (absent: greedy)


def compared_method(trace) -> str:
    """The registered method whose answer sits in the trace's unsteered slot ("greedy" unless the
    Inspect tab was asked to compare ADAPT-TF with another one)."""
    meta = trace.meta if isinstance(trace.meta, dict) else {}
    name = meta.get(COMPARE_KEY)
    return name if isinstance(name, str) and name.strip() else "greedy"


def run_label(trace, run: str) -> str:
    """How a run is named on every view: ADAPT-TF for the steered one, the compared method's
    registry name for the other."""
    return "ADAPT-TF" if run == "steered" else compared_method(trace)


def num_steps(trace) -> int:
    steps = [len(a.tokens) for a in (trace.unsteered, trace.steered) if a is not None]
    return max([1, *steps])


@dataclass
class TokenInfo:
    text: str
    category: str | None  # world object category the token mentions, if any
    hallucinated: bool
    steered_layers: int
    verified: bool = True  # False: no ground truth to check the mention against


def has_truth(trace) -> bool:
    return isinstance(trace.meta, dict) and trace.meta.get("objects") is not None


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
        out.append(TokenInfo(p, c, bool(c is not None and truth is not None and c not in truth), n,
                             verified=truth is not None))
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


HALLUCINATED, PRESENT, UNVERIFIED = "hallucinated", "in the image", "object (not verified: no ground truth)"


def highlighted(trace, run: str) -> list[tuple[str, str | None]]:
    """(token, label) pairs for ``gr.HighlightedText``: an object noun is ``HALLUCINATED`` or
    ``PRESENT`` against the ground truth, and ``UNVERIFIED`` where there is none (an upload)."""
    out = []
    for info in token_infos(trace, run):
        label = None
        if info.category is not None:
            label = UNVERIFIED if not info.verified else HALLUCINATED if info.hallucinated else PRESENT
        piece = info.text
        joined = piece[:1].isspace() or not out or piece[:1] in ".,;:!?)'" or piece.startswith("##")
        out.append((piece.removeprefix("##") if joined else " " + piece, label))
    return out


# green only where the ground truth says so: an unchecked mention must not look confirmed
HIGHLIGHT_COLOURS = {HALLUCINATED: "#ff4d4f", PRESENT: "#52c41a", UNVERIFIED: "#d9d9d9"}


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
                    cls.append("unv" if not info.verified else "hal" if info.hallucinated else "obj")
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
                cells.append(f"<td class='{' '.join(cls)}' title='{safe.html(tip)}'>"
                             f"{safe.html(info.text.strip()) or '&nbsp;'}</td>")
            rows.append(f"<tr><th class='run'>{safe.html(run_label(trace, r))}</th>{''.join(cells)}</tr>")
        blocks.append(f"<table>{''.join(rows)}</table>")
    if has_truth(trace):
        objects = "<span class='hal'>hallucinated object</span> <span class='obj'>object in the image</span>"
    else:
        objects = "<span class='unv'>object named, not verified (no ground truth for this image)</span>"
    legend = (f"<div class='legend'>{objects} <span class='steer'>ASI steered this step</span> "
              "<span class='diff'>runs differ</span></div>")
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
.adapt-align .unv {background: #f0f0f0; color: #262626; border-style: dashed;}
.adapt-align .steer {text-decoration: underline wavy #fa8c16;}
.adapt-align .diff {font-style: italic;}
.adapt-align .sel {outline: 2px solid #1677ff; outline-offset: -2px;}
.adapt-align td.end {background: #fafafa;}
.adapt-align .legend span {display: inline-block; padding: 1px 6px; margin-right: 6px; border: 1px solid #ddd;}
"""


def summary_markdown(trace) -> str:
    """A short verdict above the figures (Markdown; every string of the trace through :mod:`app.safe`)."""
    meta = trace.meta if isinstance(trace.meta, dict) else {}
    lines = []
    timings = trace.timings if isinstance(trace.timings, dict) else {}
    total = timings.get("total")
    if not _is_number(total):
        total = sum(v for v in timings.values() if _is_number(v))
    st = trace.steered
    lines.append(
        f"**Backbone** {safe.md_code(_short(model_name(trace.backbone)))} · {_layout_text(trace)} · "
        f"{trace.num_layers} layers · ASI on layers {_layers_text(trace.asi_layers, trace.num_layers)}"
        + (f" · {st.num_interventions} interventions" if st is not None else "")
        + (f" · bias map {'cached' if trace.bias_cache_hit else 'computed'}" if trace.bias is not None else "")
        + (f" · {total:.2f} s" if total else ""))
    keys = _keys_text(meta.get("keys"))
    if keys:
        lines.append(keys)
    if compared_method(trace) != "greedy":
        about = str(meta.get("compare_about") or "")
        info = meta.get("compare_info") if isinstance(meta.get("compare_info"), dict) else {}
        fired = (f" · fired on {info['fired']} of {info['monitored']} monitored (step, layer) pairs"
                 if isinstance(info.get("fired"), int) and isinstance(info.get("monitored"), int) else "")
        seconds = timings.get("compare")
        lines.append(f"**Compared with** {safe.md_code(compared_method(trace))}"
                     + (f": {safe.md(about)}" if about else "")
                     + fired + (f" · {seconds:.2f} s" if _is_number(seconds) else ""))
    if meta.get("objects") is not None:
        objs = ", ".join(safe.md(o) for o in dict.fromkeys(meta["objects"])) or "nothing"
        lines.append(f"**In the image (ground truth):** {objs}")
        for run in ("unsteered", "steered"):
            if answer(trace, run) is None:
                continue
            label = run_label(trace, run)
            label = "Greedy" if label == "greedy" else label if run == "steered" else safe.md_code(label)
            hal = hallucinated_objects(trace, run)
            errors = (meta.get("errors") or {}).get(run) or {}
            wrong = [f"wrong colour: {'; '.join(map(safe.md, errors['colour']))}"] if errors.get("colour") else []
            wrong += [f"wrong place: {'; '.join(map(safe.md, errors['position']))}"] if errors.get("position") else []
            verdict = ", ".join(safe.md_code(h) for h in hal) if hal else "nothing"
            if not hal and not wrong:
                verdict += " ✓" + ("" if meta.get("scene_objects") else " (colours and places not checked)")
            lines.append(f"**{label} hallucinates:** {verdict}" + "".join(f" · {w}" for w in wrong))
    else:
        lines.append("*No ground truth for this image: the objects the answers name are not verified.*")
    return "  \n".join(lines)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _short(name: str) -> str:
    name = str(name)
    return name if len(name) <= 60 else "…" + name[-57:]


def _layout_text(trace) -> str:
    """``grid h×w``, or each view's name (from the file: escaped) and shape for a multi-view trace; tiles (or
    crops) of one shape in one phrase, ``6 tiles (2 × 3) of 16×16`` (SmolVLM's 16 tiles would fill a line)."""
    from .overlays import mosaic_piece

    if not trace.views:
        return f"grid {trace.grid[0]}×{trace.grid[1]}"
    pieces: dict[str, list] = {}
    for v in trace.layout:
        if mosaic_piece(v.name):
            pieces.setdefault(v.name.split(" ")[0], []).append(v)
    parts, said = [], set()
    for v in trace.layout:
        kind = v.name.split(" ")[0] if mosaic_piece(v.name) else None
        group = pieces.get(kind, [])
        shape = f"{v.h}×{v.w}" + (" + newline" if v.newline else "")
        if len(group) > 1 and len({(u.h, u.w, u.newline) for u in group}) == 1:
            if kind not in said:
                said.add(kind)
                rows = 1 + max(mosaic_piece(u.name)[0] for u in group)
                cols = 1 + max(mosaic_piece(u.name)[1] for u in group)
                parts.append(f"{len(group)} tiles ({rows} × {cols}) of {shape}" if kind == "tile"
                             else f"{len(group)} crops of {shape}")
            continue
        parts.append(f"{safe.md_code(v.name)} {shape}")
    return "views " + ", ".join(parts)


def _layers_text(layers, n) -> str:
    layers = list(layers)
    if layers == list(range(n)):
        return "all"
    return ",".join(str(i) for i in layers) if layers else "none"


def _layer_list(v) -> list[int]:
    """Layer numbers from a trace (a file: anything that is not a small integer is dropped)."""
    return [int(x) for x in v if _is_int(x) and 0 <= x < 10_000] if isinstance(v, list) else []


def _keys_text(keys) -> str:
    """Which decoder layers the capture read, from ``meta["keys"]`` (the key map of a decoder that is
    not all full attention): layers not captured (linear attention, or text-only layers beside the
    cross-attention ones) and sliding layers that left the image behind."""
    if not isinstance(keys, dict):
        return ""
    parts = []
    captured, missed = _layer_list(keys.get("captured")), _layer_list(keys.get("not_captured"))
    if missed:
        parts.append(f"captured layers {_layers_text(captured, -1)}; **not captured** {_layers_text(missed, -1)} "
                     "(no softmax over the image here: linear attention, or text-only layers beside cross-attention)")
    left = keys.get("not_steerable_from")
    if isinstance(left, dict):
        steps = [f"{int(k)} from step {int(v)}" for k, v in left.items()
                 if str(k).isdigit() and len(str(k)) < 5 and _is_int(v) and 0 <= v < 100_000]
        if steps:
            parts.append("sliding-window layers that had dropped image keys, not steered: " + ", ".join(steps))
    return ("**Layers** " + " · ".join(parts)) if parts else ""

