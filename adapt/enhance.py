"""Anchor-guided visual enhancement (paper Sec. 4.1.4) and heat-map overlays for humans."""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from .backbones.geometry import InputGeometry, LayoutGeometry
from .config import ENHANCE_MODES as MODES
from .config import EnhanceConfig


def upsample(grid_map: np.ndarray, size: tuple[int, int], blur_cells: float = 0.0) -> np.ndarray:
    """A grid map resized to ``size`` (width, height), optionally blurred, min-max scaled to [0, 1]."""
    w, h = size
    m = cv2.resize(np.asarray(grid_map, dtype=np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    if blur_cells > 0:
        sigma = blur_cells * max(w / grid_map.shape[1], h / grid_map.shape[0])
        m = cv2.GaussianBlur(m, (0, 0), sigmaX=sigma, sigmaY=sigma)
    lo, hi = float(m.min()), float(m.max())
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def heat_on_image(grid_map: np.ndarray, size: tuple[int, int], blur_cells: float = 0.0,
                  geometry: InputGeometry | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A grid map at the original image's ``size`` (width, height), placed where the processor took
    each cell from: ``(heat, seen)``, heat min-max scaled to [0, 1] over the pixels the model saw and
    ``seen`` the mask of those pixels. Without ``geometry`` (or when the model's input is the whole
    image) the map is stretched over the whole image."""
    w, h = size
    if geometry is None or geometry.covers_whole_image():
        return upsample(grid_map, size, blur_cells), np.ones((h, w), dtype=bool)
    x0, y0, x1, y1 = geometry.visible_box()
    rw, rh = max(1, int(round(x1 - x0))), max(1, int(round(y1 - y0)))
    region = upsample(grid_map, (rw, rh), blur_cells)  # the canvas, in original pixels
    ox, oy = int(round(x0)), int(round(y0))
    heat = np.zeros((h, w), dtype=np.float32)
    seen = np.zeros((h, w), dtype=bool)
    # the canvas can stick out of the image (padding) or cover only part of it (crop): paste the overlap
    c0, r0, c1, r1 = max(0, ox), max(0, oy), min(w, ox + rw), min(h, oy + rh)
    if c1 > c0 and r1 > r0:
        heat[r0:r1, c0:c1] = region[r0 - oy:r1 - oy, c0 - ox:c1 - ox]
        seen[r0:r1, c0:c1] = True
        lo, hi = float(heat[seen].min()), float(heat[seen].max())
        heat[seen] = (heat[seen] - lo) / (hi - lo) if hi > lo else 0.0
    return heat, seen


def heat_of_layout(flat_map: np.ndarray, size: tuple[int, int], blur_cells: float,
                   geometry: LayoutGeometry) -> tuple[np.ndarray, np.ndarray]:
    """:func:`heat_on_image` for a multi-view layout: each view painted through its own geometry, the
    views' heats averaged where they saw the pixel (so the base and the hi-res view both vote)."""
    w, h = size
    total = np.zeros((h, w), dtype=np.float64)
    count = np.zeros((h, w), dtype=np.float64)
    for _, grid, geo in geometry.per_view(flat_map):
        heat, seen = heat_on_image(grid, size, blur_cells, geo)
        total[seen] += heat[seen]
        count[seen] += 1
    seen = count > 0
    heat = np.zeros((h, w), dtype=np.float32)
    heat[seen] = total[seen] / count[seen]
    return heat, seen


def _odd(x: float) -> int:
    return max(3, int(round(x)) | 1)


def fade_target(img: np.ndarray, mode: str) -> np.ndarray:
    """What a low-anchor pixel fades toward (``img``: RGB float32 in 0…255), per ``mode``:

    - ``paper``: white (Sec. 4.1.4). Every faded colour moves toward white, so hue words change;
    - ``background``: the local background, a median over half the image's shorter side (an object
      covers less than half of such a window, so the median is the ground around it);
    - ``blur``: the image under a Gaussian of 1/24 of the shorter side (shapes soften, colours stay).

    ``luminance`` has no target image: :func:`enhance` fades the luma alone."""
    if mode == "paper":
        return np.full_like(img, 255.0)
    side = min(img.shape[:2])
    if mode == "background":
        u8 = np.clip(img + 0.5, 0, 255).astype(np.uint8)
        return cv2.medianBlur(u8, min(_odd(side / 2), _odd(side) - 2)).astype(np.float32)
    if mode == "blur":
        s = max(1.0, side / 24)
        return cv2.GaussianBlur(img, (0, 0), sigmaX=s, sigmaY=s)
    raise ValueError(f"unknown enhancement mode {mode!r}; available: {', '.join(MODES)}")


LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # BT.601


def _fade_luma(img: np.ndarray, a: np.ndarray) -> np.ndarray:
    """The luma faded toward white (Y′ = a·Y + (1 − a)·255) with each pixel's chroma c = rgb − Y kept in
    direction, scaled by the largest s ≤ 1 that keeps Y′ + s·c inside 0…255 (a bright saturated colour
    cannot be lighter and as saturated at once; the paper's fade scales c by a everywhere)."""
    y = img @ LUMA
    chroma = img - y[..., None]
    y2 = a * y + (1.0 - a) * 255.0
    with np.errstate(divide="ignore", invalid="ignore"):
        room = np.where(chroma > 0, (255.0 - y2[..., None]) / chroma,
                        np.where(chroma < 0, -y2[..., None] / chroma, np.inf))
    s = np.clip(room.min(axis=-1), 0.0, 1.0)
    return y2[..., None] + s[..., None] * chroma


def enhance(image: Image.Image, anchor: np.ndarray, cfg: EnhanceConfig | None = None,
            geometry: InputGeometry | LayoutGeometry | None = None) -> Image.Image:
    """Keep high-anchor regions, fade low-anchor regions (soft heat map + mild mask).

    Per pixel: a = floor + (1 − floor)·heat, then a ← (1 − s)·a + s·[heat ≥ percentile], output =
    a·image + (1 − a)·target, the target by ``cfg.mode`` (:func:`fade_target`: white as in the paper,
    or the local background, or a blurred copy); ``luminance`` applies the same blend to the luma alone,
    toward white, and keeps each pixel's chroma direction (:func:`_fade_luma`). The result keeps the original's size and
    stays a normal image.

    ``geometry`` (``backbone.input_geometry(image.size)``) places the anchor's cells where the
    processor took them from, so a centre-cropped LLaVA input is not stretched over the whole image.
    Pixels the model never saw carry no anchor evidence either way: they get the mean weight of the
    seen pixels (faded like an average seen pixel, neither kept nor erased). Without it the anchor is
    stretched over the whole image, which is right when the model's input is the whole image (the
    embedded model's square scenes, Qwen2.5-VL's resize). A multi-view anchor (``[1, n]``) comes with
    its :class:`LayoutGeometry` (``backbone.layout_geometry``): every view is painted through its own.
    """
    cfg = cfg or EnhanceConfig()
    img = np.asarray(image.convert("RGB"), dtype=np.float32)
    if isinstance(geometry, LayoutGeometry):
        heat, seen = heat_of_layout(anchor, image.size, cfg.blur, geometry)
    else:
        heat, seen = heat_on_image(anchor, image.size, cfg.blur, geometry)
    if not seen.any():
        return image.convert("RGB").copy()
    keep = (heat >= np.percentile(heat[seen], cfg.keep_percentile)).astype(np.float32)
    a = cfg.floor + (1.0 - cfg.floor) * heat
    a = (1.0 - cfg.mask_strength) * a + cfg.mask_strength * keep
    if not seen.all():
        a[~seen] = a[seen].mean()
    if cfg.mode == "luminance":
        out = _fade_luma(img, a)
    else:
        out = a[..., None] * img + (1.0 - a[..., None]) * fade_target(img, cfg.mode)
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))


def overlay(image: Image.Image, grid_map: np.ndarray, opacity: float = 0.5,
            colormap: int = cv2.COLORMAP_JET, blur_cells: float = 0.0) -> Image.Image:
    """The map as a colour heat map over the image (for inspection, not for the model)."""
    img = np.asarray(image.convert("RGB"), dtype=np.float32)
    heat = upsample(grid_map, image.size, blur_cells)
    colour = cv2.applyColorMap((heat * 255).astype(np.uint8), colormap)[..., ::-1].astype(np.float32)
    out = (1 - opacity) * img + opacity * colour
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def side_by_side(*images: Image.Image, gap: int = 4) -> Image.Image:
    """Images of one height next to each other on white."""
    h = max(i.height for i in images)
    scaled = [i if i.height == h else i.resize((round(i.width * h / i.height), h)) for i in images]
    canvas = Image.new("RGB", (sum(i.width for i in scaled) + gap * (len(scaled) - 1), h), "white")
    x = 0
    for i in scaled:
        canvas.paste(i.convert("RGB"), (x, 0))
        x += i.width + gap
    return canvas
