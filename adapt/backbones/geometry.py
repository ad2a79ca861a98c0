"""Where each image token's grid cell lies in the original image.

A processor turns the original image into the model's input canvas by padding, resizing and cropping.
All three are axis-aligned, so per axis ``canvas = original · scale + offset``; :class:`InputGeometry`
holds that map and answers the questions grounding and the anchor-guided image ask: which original
pixels a grid cell covers, which original pixels the model saw at all, and a grid map drawn at the
original size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class InputGeometry:
    """The map from an original image (``image_size`` = width, height) to the model's input canvas
    (``canvas_size``): ``canvas_x = x · scale[0] + offset[0]``, ``canvas_y = y · scale[1] + offset[1]``,
    coordinates of pixel edges (pixel ``i`` spans ``[i, i + 1)``)."""

    image_size: tuple[int, int]
    canvas_size: tuple[int, int]
    scale: tuple[float, float]
    offset: tuple[float, float]

    @classmethod
    def stretch(cls, image_size: tuple[int, int]) -> "InputGeometry":
        """The whole image is the canvas (what a grid map stretched over the image assumes)."""
        return cls(tuple(image_size), tuple(image_size), (1.0, 1.0), (0.0, 0.0))

    def to_original(self, cx, cy):
        """Canvas coordinates → original-image coordinates (arrays or floats)."""
        return ((np.asarray(cx, dtype=np.float64) - self.offset[0]) / self.scale[0],
                (np.asarray(cy, dtype=np.float64) - self.offset[1]) / self.scale[1])

    def visible_box(self) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)``: the part of the original's plane the canvas shows; it can reach past the
        image where the processor pads (and is smaller than the image where it crops)."""
        x0, y0 = self.to_original(0.0, 0.0)
        x1, y1 = self.to_original(*self.canvas_size)
        return float(x0), float(y0), float(x1), float(y1)

    def covers_whole_image(self, tol: float = 1e-6) -> bool:
        """True when the canvas shows exactly the original image (no crop, no pad)."""
        x0, y0, x1, y1 = self.visible_box()
        w, h = self.image_size
        return max(abs(x0), abs(y0), abs(x1 - w), abs(y1 - h)) <= tol * max(w, h, 1)

    def cell_boxes(self, grid: tuple[int, int], clip: bool = True) -> np.ndarray:
        """``[h, w, 4]`` boxes ``(x0, y0, x1, y1)`` in original pixels of the grid's cells (row-major,
        as the image tokens). With ``clip`` they are cut to the image: a cell made only of padding has
        an empty box (x1 ≤ x0 or y1 ≤ y0)."""
        gh, gw = grid
        cw, ch = self.canvas_size
        xs, ys = self.to_original(np.arange(gw + 1) * cw / gw, np.arange(gh + 1) * ch / gh)
        boxes = np.empty((gh, gw, 4), dtype=np.float64)
        boxes[..., 0] = xs[None, :-1]
        boxes[..., 2] = xs[None, 1:]
        boxes[..., 1] = ys[:-1, None]
        boxes[..., 3] = ys[1:, None]
        if clip:
            w, h = self.image_size
            boxes[..., 0::2] = boxes[..., 0::2].clip(0, w)
            boxes[..., 1::2] = boxes[..., 1::2].clip(0, h)
        return boxes

    def cell_of_pixels(self, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """For every original pixel (by its centre) the grid row and column it falls in: two ``[H, W]``
        int arrays, -1 where the model never saw the pixel (cropped away)."""
        gh, gw = grid
        w, h = self.image_size
        cx = (np.arange(w) + 0.5) * self.scale[0] + self.offset[0]
        cy = (np.arange(h) + 0.5) * self.scale[1] + self.offset[1]
        col = np.floor(cx * gw / self.canvas_size[0]).astype(np.int64)
        row = np.floor(cy * gh / self.canvas_size[1]).astype(np.int64)
        col[(col < 0) | (col >= gw)] = -1
        row[(row < 0) | (row >= gh)] = -1
        return np.broadcast_to(row[:, None], (h, w)), np.broadcast_to(col[None, :], (h, w))

    def to_image(self, grid_map: np.ndarray, fill: float = np.nan) -> np.ndarray:
        """A ``[h, w]`` grid map at the original size ``[H, W]``: each pixel takes its cell's value
        (nearest cell, no smoothing, so box means are means of cell values); ``fill`` where the model
        never saw the pixel."""
        m = np.asarray(grid_map, dtype=np.float64)
        row, col = self.cell_of_pixels(m.shape)
        out = np.full(row.shape, fill, dtype=np.float64)
        seen = (row >= 0) & (col >= 0)
        out[seen] = m[row[seen], col[seen]]
        return out


def _get(size, key):
    """A field of a processor's size spec (a ``SizeDict`` or a plain dict, as older configs store it)."""
    if size is None:
        return None
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


def resized_hw(height: int, width: int, size) -> tuple[int, int]:
    """``(height, width)`` after transformers' resize rule for ``size`` (shortest_edge [+ longest_edge],
    height + width, max_height + max_width), computed with transformers' own helpers."""
    from transformers.image_transforms import get_resize_output_image_size, get_size_with_aspect_ratio
    from transformers.image_utils import ChannelDimension, get_image_size_for_max_height_width

    se, le = _get(size, "shortest_edge"), _get(size, "longest_edge")
    if se and le:
        return tuple(get_size_with_aspect_ratio((height, width), se, le))
    if se:
        # the helper reads only the shape; a zero-stride view costs nothing for any image size
        shape_only = np.broadcast_to(np.zeros((1, 1, 1), dtype=np.uint8), (1, height, width))
        return tuple(get_resize_output_image_size(shape_only, size=se, default_to_square=False,
                                                  input_data_format=ChannelDimension.FIRST))
    mh, mw = _get(size, "max_height"), _get(size, "max_width")
    if mh and mw:
        return tuple(get_image_size_for_max_height_width((height, width), mh, mw))
    h, w = _get(size, "height"), _get(size, "width")
    if h and w:
        return int(h), int(w)
    raise ValueError(f"unsupported image processor size {size!r}")


def clip_style_geometry(image_processor, image_size: tuple[int, int]) -> InputGeometry:
    """LLaVA's processors (CLIP / LLaVA image processors): optional pad to a centred square
    (``do_pad`` of ``LlavaImageProcessor``), resize by ``size``, centre crop to ``crop_size``."""
    w, h = image_size
    ox = oy = 0.0
    pw, ph = w, h
    # only LLaVA's own processor pads to a square before resizing; the generic backend's do_pad pads
    # the bottom/right after cropping, which moves no pixel
    if getattr(image_processor, "do_pad", False) and hasattr(image_processor, "pad_to_square") and w != h:
        side = max(w, h)
        if w > h:
            oy = float((side - h) // 2)
        else:
            ox = float((side - w) // 2)
        pw = ph = side
    sx = sy = 1.0
    nh, nw = ph, pw
    if getattr(image_processor, "do_resize", False):
        nh, nw = resized_hw(ph, pw, image_processor.size)
        sx, sy = nw / pw, nh / ph
    ox, oy = ox * sx, oy * sy
    cw, ch = nw, nh
    crop = getattr(image_processor, "crop_size", None)
    if getattr(image_processor, "do_center_crop", False) and crop is not None:
        ch, cw = int(_get(crop, "height")), int(_get(crop, "width"))
        # numpy's centre crop: top = (orig − crop) // 2 (floor, negative when it pads), the same for left
        ox -= (nw - cw) // 2
        oy -= (nh - ch) // 2
    return InputGeometry((w, h), (cw, ch), (sx, sy), (ox, oy))


def qwen_geometry(image_processor, image_size: tuple[int, int]) -> InputGeometry:
    """Every Qwen-VL family (Qwen2-VL, Qwen2.5-VL, Qwen3-VL and its MoE; they share
    ``Qwen2VLImageProcessor``): a plain resize to ``smart_resize``'s size (min / max pixels from
    ``size``'s shortest_edge / longest_edge, or the older ``min_pixels`` / ``max_pixels``; factor
    patch_size × merge_size, 28 for Qwen2-VL / Qwen2.5-VL and 32 for Qwen3-VL); no crop, no pad."""
    w, h = image_size
    if not getattr(image_processor, "do_resize", True):
        return InputGeometry.stretch(image_size)
    size = image_processor.size
    factor = int(image_processor.patch_size) * int(image_processor.merge_size)
    lo = _get(size, "shortest_edge") or getattr(image_processor, "min_pixels", None)
    hi = _get(size, "longest_edge") or getattr(image_processor, "max_pixels", None)
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    nh, nw = smart_resize(h, w, factor=factor, min_pixels=int(lo), max_pixels=int(hi))
    return InputGeometry((w, h), (nw, nh), (nw / w, nh / h), (0.0, 0.0))


@dataclass(frozen=True)
class LayoutGeometry:
    """A multi-view layout's pixel geometry: its :class:`~adapt.hooks.Views` and each view's
    :class:`InputGeometry` by name (the base view stretched over the image, LLaVA-NeXT's hi-res view over
    its anyres canvas, ...). Maps over the layout are flat ``[..., n]`` (or ``[1, n]``)."""

    views: tuple
    geometries: dict

    def per_view(self, flat) -> list[tuple[object, np.ndarray, InputGeometry]]:
        """``(view, [h, w] grid, geometry)`` for each view of a flat map (newline columns dropped)."""
        flat = np.asarray(flat, dtype=np.float64).reshape(-1)
        return [(v, v.take(flat), self.geometries[v.name]) for v in self.views]

    def to_image(self, flat_map, fill: float = np.nan) -> np.ndarray:
        """:meth:`InputGeometry.to_image` for a layout: each view drawn through its own geometry, the mean
        of the views that saw a pixel (``fill`` where none did). Each view is first scaled to sum one, so
        a view's share of the attention does not swamp the other's shape."""
        drawn = []
        for _, grid, geo in self.per_view(flat_map):
            total = grid.sum()
            drawn.append(geo.to_image(grid / total if total > 0 else grid, np.nan))
        stack = np.stack(drawn)
        seen = ~np.isnan(stack)
        out = np.full(stack.shape[1:], fill, dtype=np.float64)
        any_seen = seen.any(0)
        out[any_seen] = np.nansum(stack, 0)[any_seen] / seen.sum(0)[any_seen]
        return out

    def cell_boxes(self) -> dict[str, np.ndarray]:
        """Each view's ``[h, w, 4]`` cell boxes in original pixels, by view name."""
        return {v.name: self.geometries[v.name].cell_boxes((v.h, v.w)) for v in self.views}
