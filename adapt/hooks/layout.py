"""Where the image keys are: :class:`ImageLayout`, flat over the n image keys of each row, and its views.

An image reaches the decoder as one or more **views**: LLaVA-1.5 / Qwen-VL give one grid (the view
``base``); LLaVA-NeXT a ``base`` grid, then the un-padded ``hires`` grid of its anyres tiles whose rows
each end in an ``image_newline`` token. The hot path (capture, steering) only sees the n flat key columns;
the views say how those columns fold back into grids (anchor criteria, figures, grounding).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass(frozen=True)
class View:
    """One grid of image keys: ``h × w`` cells, row-major, starting at flat column ``start`` of the layout.

    ``newline``: every row ends in one more image key (LLaVA-NeXT's ``image_newline``), so a row spans
    ``stride = w + 1`` columns. That column is part of the layout's n (it is an image key in the sequence:
    captured, and steerable like any other) but no cell of the grid: it gets anchor weight 0 and is never
    painted."""

    name: str
    start: int
    h: int
    w: int
    newline: bool = False

    @property
    def stride(self) -> int:
        return self.w + int(self.newline)

    @property
    def size(self) -> int:
        """Flat columns the view occupies (its cells plus its newline columns)."""
        return self.h * self.stride

    @property
    def cells(self) -> int:
        return self.h * self.w

    @property
    def signature(self) -> tuple:
        return (self.name, self.h, self.w, self.newline)

    def take(self, flat) -> np.ndarray:
        """The view's ``[..., h, w]`` grid out of ``flat[..., n]`` (newline columns dropped)."""
        x = np.asarray(flat)[..., self.start:self.start + self.size]
        return x.reshape(*x.shape[:-1], self.h, self.stride)[..., : self.w]

    def put(self, grid, flat: np.ndarray) -> None:
        """Write a ``[..., h, w]`` grid into its columns of ``flat[..., n]`` (newline columns untouched)."""
        region = flat[..., self.start:self.start + self.size].reshape(*flat.shape[:-1], self.h, self.stride)
        region[..., : self.w] = grid
        flat[..., self.start:self.start + self.size] = region.reshape(*flat.shape[:-1], self.size)

    def to_dict(self) -> dict:
        return {"name": self.name, "h": self.h, "w": self.w, "newline": self.newline}


class Views(tuple):
    """The views of a layout, in flat-column order (a tuple of :class:`View`): what a multi-view
    :attr:`ImageLayout.grid` is, and what the anchor, the caches and a trace take for the layout.
    Its :attr:`grid` is ``(1, n)``: arrays over a multi-view layout are kept flat, shaped as one row."""

    def __new__(cls, views):
        views = tuple(views)
        if not views or not all(isinstance(v, View) for v in views):
            raise ValueError("a layout needs at least one View")
        at = 0
        for v in views:
            if v.start != at or v.h < 1 or v.w < 1:
                raise ValueError(f"view {v.name!r} must start at column {at} with a positive shape")
            at += v.size
        if len({v.name for v in views}) != len(views):
            raise ValueError("view names must be unique")
        return super().__new__(cls, views)

    @classmethod
    def from_shapes(cls, shapes) -> "Views":
        """``[(name, h, w, newline), ...]`` laid out one after the other."""
        out, at = [], 0
        for name, h, w, newline in shapes:
            v = View(str(name), at, int(h), int(w), bool(newline))
            out.append(v)
            at += v.size
        return cls(out)

    @property
    def n(self) -> int:
        return self[-1].start + self[-1].size

    @property
    def grid(self) -> tuple[int, int]:
        """The shape arrays over the layout have: the one plain view's ``(h, w)``, else ``(1, n)``."""
        if self.plain:
            return (self[0].h, self[0].w)
        return (1, self.n)

    @property
    def plain(self) -> bool:
        """One view without newline columns: arrays are that view's grid, as before views existed."""
        return len(self) == 1 and not self[0].newline

    @property
    def signature(self) -> tuple:
        return tuple(v.signature for v in self)

    def cell_mask(self) -> np.ndarray:
        """``[n]`` bool: True at grid cells, False at newline columns."""
        m = np.zeros(self.n, dtype=bool)
        for v in self:
            v.put(np.ones((v.h, v.w), dtype=bool), m)
        return m

    def to_list(self) -> list[dict]:
        return [v.to_dict() for v in self]


@dataclass(frozen=True)
class ImageLayout:
    """Where the image tokens sit in the (padded) sequence, and the views they fold into.

    ``positions[B, n]``: the key positions of each row's n image tokens (every row of a batch shares one
    layout signature: :func:`~adapt.backbones.base.group_by_grid`). ``views``: the grids over those n
    columns (a one-grid family: one view ``base``). ``grid``: a plain layout's ``(h, w)``; a multi-view
    layout gives its :class:`Views` (whose array shape is ``(1, n)``).

    The hot path only needs the flat key columns: :meth:`image_cols` reads them (a slice when every
    row has one contiguous run at the same offset, else a gather with an index made once per device)."""

    positions: torch.Tensor  # [B, n_img] long, key positions of the image tokens per row
    grid: tuple = None  # (rows, cols) of a one-grid layout, or the Views (set from views when omitted)
    views: Views = None
    _index: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.positions.ndim != 2:
            raise ValueError("ImageLayout.positions must be [batch, n_image_tokens]")
        views = self.views
        if views is None:
            if self.grid is None:
                raise ValueError("give the layout's grid or its views")
            h, w = self.grid
            views = Views([View("base", 0, int(h), int(w))])
        views = views if isinstance(views, Views) else Views(views)
        if views.n != self.positions.shape[1]:
            raise ValueError(f"the views hold {views.n} image keys, the sequence {self.positions.shape[1]}")
        object.__setattr__(self, "views", views)
        object.__setattr__(self, "grid", views.grid if views.plain else views)
        object.__setattr__(self, "_slice", self._contiguous())
        object.__setattr__(self, "_end", int(self.positions[:, -1].max()) + 1)

    @property
    def signature(self) -> tuple:
        """What rows must share to be batched and what a cached bias map is keyed by."""
        return self.views.signature

    @property
    def n(self) -> int:
        return self.positions.shape[1]

    @property
    def end(self) -> int:
        """One past the last image key of any row."""
        return self._end

    def _contiguous(self) -> slice | None:
        p = self.positions
        start = int(p[0, 0])
        expected = torch.arange(start, start + p.shape[1], device=p.device)
        if bool((p == expected).all()):
            return slice(start, start + p.shape[1])
        return None

    def contiguous_slice(self) -> slice | None:
        """A single slice when every row has one contiguous run at the same offset."""
        return self._slice

    def index(self, device: torch.device) -> torch.Tensor:
        """``positions`` on ``device`` (one copy per device, made once: layers may sit on different GPUs)."""
        idx = self._index.get(device)
        if idx is None:
            idx = self._index[device] = self.positions.to(device)
        return idx

    def image_cols(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """The image-key entries of ``x`` along ``dim`` (batch first: ``x[B, ..., kv, ...]``)."""
        if self._slice is not None:
            return x.narrow(dim, self._slice.start, self._slice.stop - self._slice.start)
        dim = dim % x.ndim
        idx = self.index(x.device)
        shape = [idx.shape[0]] + [1] * (x.ndim - 1)
        shape[dim] = idx.shape[1]
        size = list(x.shape)
        size[dim] = idx.shape[1]
        return x.gather(dim, idx.view(shape).expand(size))


# the name the hooks were written with: a one-grid layout
ImageSpan = ImageLayout
