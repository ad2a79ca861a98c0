"""Where the image keys are: :class:`ImageSpan`, flat over the n image keys of each row."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class ImageSpan:
    """Where the image tokens sit in the (padded) sequence, and their 2-D grid (row-major).

    The hot path only needs the flat key columns: :meth:`image_cols` reads them (a slice when every
    row has one contiguous run at the same offset, else a gather with an index made once per device)."""

    positions: torch.Tensor  # [B, n_img] long, key positions of the image tokens per row
    grid: tuple[int, int]  # (rows, cols), rows * cols == n_img
    _index: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.positions.ndim != 2:
            raise ValueError("ImageSpan.positions must be [batch, n_image_tokens]")
        h, w = self.grid
        if h * w != self.positions.shape[1]:
            raise ValueError(f"grid {h}x{w} does not match {self.positions.shape[1]} image tokens")
        object.__setattr__(self, "_slice", self._contiguous())
        object.__setattr__(self, "_end", int(self.positions[:, -1].max()) + 1)

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
