"""Reading user images safely: a clear :class:`ImageError` for corrupt, huge or unsupported input."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 40_000_000  # decoded size we accept; larger inputs are refused before decoding
MAX_BYTES = 50 * 1024 * 1024
MAX_SIDE = 2048  # images are downscaled to this longest side: models resize far below it anyway
EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


class ImageError(ValueError):
    """An image that cannot be used, with a message meant for the user."""


def load_image(source, max_side: int | None = MAX_SIDE) -> Image.Image:
    """Open a path, bytes or PIL image as an RGB image, refusing corrupt or oversized input.

    Larger than ``max_side`` on the longest side, it is downscaled (``None``: kept as it is)."""
    if isinstance(source, Image.Image):
        img = source
        _check_size(img.size, "image")
    else:
        name = "image"
        if isinstance(source, (str, Path)):
            path = Path(source)
            name = path.name
            if not path.is_file():
                raise ImageError(f"{name}: no such file")
            if path.stat().st_size > MAX_BYTES:
                raise ImageError(f"{name}: file is larger than {MAX_BYTES // 2**20} MB")
            data = path.read_bytes()
        elif isinstance(source, (bytes, bytearray)):
            data = bytes(source)
            if len(data) > MAX_BYTES:
                raise ImageError(f"image is larger than {MAX_BYTES // 2**20} MB")
        else:
            raise ImageError(f"unsupported image input of type {type(source).__name__}")
        try:
            img = Image.open(io.BytesIO(data))
            _check_size(img.size, name)
            img.load()
        except ImageError:
            raise
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise ImageError(f"{name}: not a readable image ({type(exc).__name__})") from exc
        try:
            img = ImageOps.exif_transpose(img)
        except Exception:  # a broken EXIF block is no reason to refuse the pixels
            pass
    if img.mode in ("RGBA", "LA", "P"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        rgba = img.convert("RGBA")
        background.paste(rgba, mask=rgba.split()[-1])
        img = background
    img = img.convert("RGB")
    return img if max_side is None else fit(img, max_side)


def fit(img: Image.Image, max_side: int = MAX_SIDE) -> Image.Image:
    """``img`` downscaled to ``max_side`` on its longest side (the same object when it fits)."""
    if max(img.size) <= max_side:
        return img
    img = img.copy()
    img.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return img


def _check_size(size: tuple[int, int], name: str) -> None:
    w, h = size
    if w < 1 or h < 1:
        raise ImageError(f"{name}: empty image")
    if w * h > MAX_PIXELS:
        raise ImageError(f"{name}: {w}×{h} pixels is too large (limit {MAX_PIXELS // 1_000_000} megapixels)")
