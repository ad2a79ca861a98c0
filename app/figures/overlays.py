"""Image overlays of one trace (OpenCV): heat maps over the image, each with its colour scale and title."""

from __future__ import annotations

import math
import re
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .answers import answer, run_label

DISPLAY_SIDE = 224  # longest side of overlay tiles (px): big enough to read, cheap to encode
COLORMAP = cv2.COLORMAP_TURBO
ENLARGED_SIDE = 288  # world scenes are 96 px: shown at their own size they fill a third of their box


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


def heat(m: np.ndarray, size: tuple[int, int], scaled: bool = False) -> np.ndarray:
    """A grid map min-max scaled (unless ``scaled``: already in [0, 1]), upsampled to ``size`` (w, h) and
    coloured, uint8 RGB."""
    up = cv2.resize(m.astype(np.float32) if scaled else normalise(m), size, interpolation=cv2.INTER_CUBIC)
    up = np.clip(up * 255.0, 0, 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(up, COLORMAP), cv2.COLOR_BGR2RGB)


def overlay(base: np.ndarray, m: np.ndarray, alpha: float = 0.55, scaled: bool = False) -> np.ndarray:
    """``m`` (an h×w grid map) coloured and blended over ``base`` (uint8 RGB, display size)."""
    h, w = base.shape[:2]
    return cv2.addWeighted(base, 1.0 - alpha, heat(m, (w, h), scaled), alpha, 0.0)


def grid_of(trace, flat: np.ndarray) -> np.ndarray:
    """A map of ``trace`` in its array shape (a one-grid trace: ``[h, w]``; a multi-view one: ``[1, n]``)."""
    h, w = trace.grid
    return np.asarray(flat, dtype=np.float32).reshape(h, w)


VIEW_GAP = 6  # px of white between panels drawn side by side
# the views drawn together as one mosaic: InternVL / SmolVLM / Mllama tiles, Gemma 3's pan-and-scan crops
PIECE_NAME = re.compile(r"(?:tile (\d+),(\d+))|(?:crop (\d+))")
MAX_BOX_SPAN = 2  # a recorded view box reaches at most this many image sides past the image (else: by name)


def view_grids(trace, m: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """``(view name, [h, w] grid)`` for each view of a map of ``trace`` (one-grid traces: one, unnamed);
    newline columns are no cells and are left out."""
    m = grid_of(trace, np.asarray(m).ravel())
    if not trace.views:
        return [("", m)]
    return [(v.name, v.take(m.ravel())) for v in trace.layout]


def mosaic_piece(name: str) -> tuple[int, int] | None:
    """A mosaic piece's (row, column): ``tile r,c`` → (r, c); ``crop i`` → (0, i) (crops lie along the image's
    long axis: :func:`view_boxes` turns them when it is tall); None for any other view."""
    hit = PIECE_NAME.fullmatch(name)
    if hit is None:
        return None
    return (int(hit[1]), int(hit[2])) if hit[1] is not None else (0, int(hit[3]))


def _sound_box(box, size: tuple[int, int]) -> tuple[float, float, float, float] | None:
    """A recorded box as four floats, or None when it is not one a processor could have written for an
    image of ``size`` (a trace file is hostile: a box may be anything, and its size decides drawing cost)."""
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        return None
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in box):
        return None
    x0, y0, x1, y1 = (float(x) for x in box)
    w, h = size
    reach = MAX_BOX_SPAN * max(w, h)
    if not (x0 < x1 and y0 < y1 and x0 < w and y0 < h and x1 > 0 and y1 > 0):
        return None
    return (x0, y0, x1, y1) if max(-x0, -y0, x1 - w, y1 - h) <= reach else None


def view_boxes(trace) -> list[tuple[float, float, float, float]]:
    """Per view of a multi-view trace (key order), the part of the original image its grid spans,
    ``(x0, y0, x1, y1)`` in pixels: the trace's record (``meta["view_boxes"]``, from the processor's own
    geometry; past the image where the processor padded) where it has a sound one, else from the view's
    name: ``tile r,c`` its share of the image among the trace's tiles, ``crop i`` its share along the image's
    long axis, any other view the whole image."""
    size = trace.image.size
    meta = trace.meta if isinstance(trace.meta, dict) else {}
    recorded = meta.get("view_boxes") if isinstance(meta.get("view_boxes"), dict) else {}
    layout = trace.layout
    pieces = [mosaic_piece(v.name) for v in layout]
    rows = 1 + max((p[0] for p in pieces if p), default=0)
    cols = 1 + max((p[1] for p in pieces if p), default=0)
    return [_sound_box(recorded.get(v.name), size) or _box_by_name(v.name, p, size, rows, cols)
            for v, p in zip(layout, pieces)]


def _box_by_name(name: str, piece, size: tuple[int, int], rows: int, cols: int) -> tuple[float, float, float, float]:
    w, h = size
    if piece is None:
        return (0.0, 0.0, float(w), float(h))
    r, c = piece
    if name.startswith("crop") and h > w:  # a tall image's crops are stacked
        return (0.0, c * h / cols, float(w), (c + 1) * h / cols)
    return (c * w / cols, r * h / rows, (c + 1) * w / cols, (r + 1) * h / rows)


def view_panels(trace) -> list[tuple[str, list[int]]]:
    """How a multi-view trace is drawn: ``(title, view indices)`` per panel, panels in the key order of
    their first view. Every ``tile r,c`` (or ``crop i``) view goes into one mosaic, "tiles" (or "crops"),
    each piece where it lies in the image; every other view is a panel of its own: LLaVA-NeXT base | hires,
    InternVL tiles | thumbnail, SmolVLM tiles | global, Mllama tiles, Gemma 3 base | crops."""
    panels: list[tuple[str, list[int]]] = []
    mosaic = None
    for i, v in enumerate(trace.layout):
        if mosaic_piece(v.name) is None:
            panels.append((v.name, [i]))
        elif mosaic is None:
            mosaic = (v.name.split(" ")[0] + "s", [i])
            panels.append(mosaic)
        else:
            mosaic[1].append(i)
    return panels


def panel_maps(trace, m: np.ndarray, size: tuple[int, int]) -> list[tuple[str, np.ndarray, list]]:
    """Each panel of :func:`view_panels` as ``(title, values, boxes)``: ``values`` the map at the display
    ``size`` (w, h), in [0, 1] on one scale over every view's cells, each view's grid spread over its box
    (cubic within the view, never across a tile's edge), NaN where no view of the panel lies; ``boxes`` the
    panel's ``(view name, (x0, y0, x1, y1))`` in display pixels."""
    grids = view_grids(trace, m)
    cells = np.nan_to_num(np.concatenate([g.ravel() for _, g in grids]).astype(np.float64),
                          nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(cells.min()), float(cells.max())
    boxes = view_boxes(trace)
    dw, dh = size
    sx, sy = dw / trace.image.size[0], dh / trace.image.size[1]
    out = []
    for title, members in view_panels(trace):
        values = np.full((dh, dw), np.nan, dtype=np.float32)
        placed = []
        for i in members:
            name, g = grids[i]
            g = np.nan_to_num(g.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
            unit = ((g - lo) / (hi - lo) if hi > lo else np.zeros_like(g)).astype(np.float32)
            x0, y0, x1, y1 = boxes[i]
            px0, py0, px1, py1 = round(x0 * sx), round(y0 * sy), round(x1 * sx), round(y1 * sy)
            bw, bh = max(1, px1 - px0), max(1, py1 - py0)
            interp = cv2.INTER_CUBIC if bw >= g.shape[1] and bh >= g.shape[0] else cv2.INTER_AREA
            up = np.clip(cv2.resize(unit, (bw, bh), interpolation=interp), 0.0, 1.0)
            ax0, ay0, ax1, ay1 = max(px0, 0), max(py0, 0), min(px0 + bw, dw), min(py0 + bh, dh)
            if ax1 > ax0 and ay1 > ay0:  # the part of the view inside the image (padding is not drawn)
                values[ay0:ay1, ax0:ax1] = up[ay0 - py0:ay1 - py0, ax0 - px0:ax1 - px0]
            placed.append((name, (ax0, ay0, ax1, ay1)))
        out.append((title, values, placed))
    return out


def overlay_views(base: np.ndarray, trace, m: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """``m`` over the image, one panel per :func:`view_panels` side by side: the tiles (or crops) as a mosaic
    (each piece's heat over its own pixels, its edges drawn, its row and column (or name) written in it),
    every other view over the part of the image it covers; one colour scale over every view's cells. A
    one-grid trace (the embedded model's) is the plain :func:`overlay`."""
    grids = view_grids(trace, m)
    if len(grids) == 1:
        return overlay(base, grids[0][1])
    h, w = base.shape[:2]
    panels = []
    for title, values, placed in panel_maps(trace, m, (w, h)):
        seen = ~np.isnan(values)
        colour = cv2.cvtColor(cv2.applyColorMap((np.nan_to_num(values) * 255.0).round().astype(np.uint8), COLORMAP),
                              cv2.COLOR_BGR2RGB)
        blend = cv2.addWeighted(base, 1.0 - alpha, colour, alpha, 0.0)
        panel = Image.fromarray(np.where(seen[..., None], blend, base))
        draw = ImageDraw.Draw(panel)
        if all(mosaic_piece(name) for name, _ in placed):  # the mosaic
            for name, (x0, y0, x1, y1) in placed:
                if x1 <= x0 or y1 <= y0:  # a piece outside the image (a crafted trace's names): nothing to draw
                    continue
                draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=(255, 255, 255))
                label = name.split(" ", 1)[1] if name.startswith("tile") else name
                if x1 - x0 >= 2 * draw.textlength(label, font=_font(10)):
                    draw.text((x0 + 3, y0 + 2), label, fill=(255, 255, 255), font=_font(10), stroke_width=2,
                              stroke_fill=(0, 0, 0))
        else:
            draw.text((3, 2), title, fill=(255, 255, 255), font=_font(12), stroke_width=2, stroke_fill=(0, 0, 0))
        panels.append(np.asarray(panel))
    gap = np.full((h, VIEW_GAP, 3), 255, dtype=np.uint8)
    return np.concatenate([x for t in panels for x in (t, gap)][:-1], axis=1)


def view_cells(trace, m: np.ndarray) -> np.ndarray:
    """The values of ``m`` at grid cells only (a colour scale never counts newline columns)."""
    return np.concatenate([g.ravel() for _, g in view_grids(trace, m)])


def layer_gallery(trace, base: np.ndarray | None = None) -> list[tuple[np.ndarray, str]]:
    """Small multiples: each layer's early-step map A_l over the image, titled with λ_l (★: largest)."""
    base = display_image(trace.image) if base is None else base
    best = int(np.argmax(trace.lam)) if len(trace.lam) else -1
    out = []
    for layer, amap in enumerate(trace.layer_maps):
        star = " ★" if layer == best else ""
        out.append(titled(base, amap, f"layer {layer} · λ={float(trace.lam[layer]):.3f}{star}", trace))
    return out


def anchor_gallery(trace, base: np.ndarray | None = None) -> list[tuple[np.ndarray, str]]:
    """Bias map B, debiasing mask D, fused map Ā and the debiased anchor W, each over the image."""
    base = display_image(trace.image) if base is None else base
    items = []
    if trace.bias is not None:
        items.append(titled(base, trace.bias, "bias map B (noise images)", trace))
    if trace.debias_mask is not None:
        items.append(titled(base, trace.debias_mask, "debiasing mask D", trace))
    items.append(titled(base, trace.fused, "fused map Ā (λ-weighted layers)", trace))
    items.append(titled(base, trace.anchor, "debiased anchor W", trace))
    return items


def titled(base: np.ndarray, m: np.ndarray, title: str, trace=None) -> tuple[np.ndarray, str]:
    """(tile, title): the overlay with its title and colour scale drawn under it, where a gallery
    caption would cover the image and cut the title short. With ``trace`` a multi-view map is drawn
    view by view (:func:`overlay_views`)."""
    if trace is None or not trace.views:
        return with_scale(overlay(base, m), m, title), title
    return with_scale(overlay_views(base, trace, m), view_cells(trace, m), title), title


def with_scale(tile: np.ndarray, m: np.ndarray, title: str | None = None) -> np.ndarray:
    """``tile`` over a white strip: ``title`` (if any), then the colour bar from the map's lowest
    to its highest value, both numbers printed (each map is scaled on its own)."""
    m = np.nan_to_num(np.asarray(m, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(m.min()), float(m.max())) if m.size else (0.0, 0.0)
    h, w = tile.shape[:2]
    font = _font(12)
    line = 16
    strip_h = (line if title else 0) + 10 + line + 4
    canvas = Image.new("RGB", (w, h + strip_h), "white")
    canvas.paste(Image.fromarray(tile), (0, 0))
    draw = ImageDraw.Draw(canvas)
    y = h + 2
    if title:
        draw.text((3, y), _fit(draw, title, font, w - 6), fill=(20, 20, 20), font=font)
        y += line
    bar = np.linspace(0, 255, max(2, w - 6)).astype(np.uint8)[None, :].repeat(8, 0)
    bar = cv2.cvtColor(cv2.applyColorMap(bar, COLORMAP), cv2.COLOR_BGR2RGB)
    canvas.paste(Image.fromarray(bar), (3, y + 1))
    y += 10
    low, high = f"{_num(lo)} low", f"high {_num(hi)}"
    draw.text((3, y), low, fill=(60, 60, 60), font=font)
    draw.text((w - 3 - draw.textlength(high, font=font), y), high, fill=(60, 60, 60), font=font)
    return np.asarray(canvas)


def enlarged(image: Image.Image | None, side: int = ENLARGED_SIDE) -> Image.Image | None:
    """A small image scaled up (bicubic) so that its longest side is ``side``; larger ones as they are."""
    if image is None or max(image.size) >= side:
        return image
    s = side / max(image.size)
    return image.resize((max(1, round(image.width * s)), max(1, round(image.height * s))), Image.Resampling.BICUBIC)


def _num(v: float) -> str:
    return f"{v:.3g}" if v else "0"


def _fit(draw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


@lru_cache(maxsize=4)
def _font(size: int):
    """DejaVu Sans (shipped with matplotlib: it has λ, Ā and ★); Pillow's own font otherwise."""
    try:
        import matplotlib

        return ImageFont.truetype(str(Path(matplotlib.__file__).parent / "mpl-data/fonts/ttf/DejaVuSans.ttf"), size)
    except (ImportError, OSError):
        return ImageFont.load_default(size=size)


def step_map(trace, run: str, step: int, layer: int | None = None) -> tuple[np.ndarray | None, str]:
    """The attention of decoding step ``step`` of ``run`` (mean over layers or one layer) over
    the image that run saw, with a caption naming the step's token and whether ASI steered it."""
    a = answer(trace, run)
    if a is None:
        return None, f"{run_label(trace, run)}: not run"
    maps = np.asarray(a.maps)
    if maps.ndim != 3 or maps.shape[0] == 0:
        return None, f"{run_label(trace, run)}: no attention recorded (the method does not capture it)"
    t = int(np.clip(step, 0, maps.shape[0] - 1))
    flat = maps[t].mean(0) if layer is None else maps[t, layer]
    image = trace.enhanced_image if (a.image_used == "enhanced" and trace.enhanced_image is not None) else trace.image
    tile = with_scale(overlay_views(display_image(image), trace, flat), view_cells(trace, flat))
    token = a.tokens[t] if t < len(a.tokens) else "(end)"
    where = "mean of layers" if layer is None else f"layer {layer}"
    n_steered = int(np.asarray(a.steered)[t].sum()) if t < len(a.steered) else 0
    steer = f" · ASI steered {n_steered} layer{'s' if n_steered != 1 else ''}" if n_steered else ""
    note = " (past its end)" if step >= maps.shape[0] else ""
    return tile, f"{run_label(trace, run)} · step {t}{note} · token {token.strip()!r} · {where}{steer}"
