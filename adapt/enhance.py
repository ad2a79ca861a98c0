"""Anchor-guided visual enhancement (paper Sec. 4.1.4) and heat-map overlays for humans."""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

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


def enhance(image: Image.Image, anchor: np.ndarray, cfg: EnhanceConfig | None = None) -> Image.Image:
    """Keep high-anchor regions, fade low-anchor regions toward white (soft heat map + mild mask).

    Per pixel: a = floor + (1 − floor)·heat, then a ← (1 − s)·a + s·[heat ≥ percentile], output =
    a·image + (1 − a)·white. The result keeps the original's size and stays a normal image.
    """
    cfg = cfg or EnhanceConfig()
    img = np.asarray(image.convert("RGB"), dtype=np.float32)
    heat = upsample(anchor, image.size, cfg.blur)
    keep = (heat >= np.percentile(heat, cfg.keep_percentile)).astype(np.float32)
    a = cfg.floor + (1.0 - cfg.floor) * heat
    a = (1.0 - cfg.mask_strength) * a + cfg.mask_strength * keep
    out = a[..., None] * img + (1.0 - a[..., None]) * 255.0
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
