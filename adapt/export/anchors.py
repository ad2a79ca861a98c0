"""The anchor-only path (paper Sec. 4.1): prefill + K greedy steps with the recorder, the anchor W from
those maps, with the noise images' maps computed once per (question, layout, image size) and shared; no
full answer, no unsteered comparison. Rows of one image-token layout run together as one left-padded
batch. A layout of several views (LLaVA-NeXT's base + hi-res, InternVL's tiles + thumbnail, ...) runs the
same path: W is made per view (:func:`adapt.anchor.build.anchor_from_maps`) and written as each view's
cells one after another (:func:`anchor_columns`)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from PIL import Image

from ..anchor import BiasCache, noise_images
from ..backbones import Backbone
from ..backbones.geometry import InputGeometry, LayoutGeometry
from ..config import AdaptConfig
from ..hooks import Views
from ..anchor.build import Anchor, anchor_from_maps, backbone_id, layer_maps_from, shape_of, views_of, window_kept


def _layout(grid) -> tuple:
    """A hashable key for a layout: a one-grid ``(h, w)``, or a :class:`Views`' signature."""
    return grid.signature if isinstance(grid, Views) else tuple(int(g) for g in grid)


class NoiseMaps:
    """The noise images' per-layer maps ``[M, L, h, w]`` (a multi-view layout: ``[M, L, 1, n]``) per
    (question, layout, image size): in memory for this run (bounded), on disk through ``cache`` (the same
    keys :func:`adapt.anchor.build.noise_layer_maps` uses), and the misses of one batch computed in a
    single model call per layout."""

    def __init__(self, backbone: Backbone, cfg: AdaptConfig, cache: BiasCache | None, size: int = 4096):
        self.backbone, self.cfg, self.cache, self.size = backbone, cfg, cache, size
        self.memo: OrderedDict[tuple, np.ndarray | None] = OrderedDict()
        self.bid = backbone_id(backbone)

    @property
    def needed(self) -> bool:
        a = self.cfg.anchor
        return a.debias and a.num_noise > 0 and a.fusion != "authors"

    def get(self, pairs: list[tuple]) -> list[np.ndarray | None]:
        """Maps for each ``(question, grid, image_size)`` (``grid``: ``prepared.span.grid``, a one-grid
        ``(h, w)`` or the :class:`Views`): the noise images are made at the image's size, so the size is
        part of the key (as in :meth:`BiasCache.noise_key`)."""
        if not self.needed:
            return [None] * len(pairs)
        a = self.cfg.anchor
        missing: dict[tuple, tuple] = {}
        for q, grid, size in pairs:
            key = self._key(q, grid, size)  # as the bias cache's key: case kept, the layout, the size
            if key in self.memo:
                self.memo.move_to_end(key)
                continue
            hit = self.cache.get(self._disk_key(q, grid, size)) if self.cache is not None else None
            if hit is not None and hit.shape[0] == a.num_noise and hit.shape[2:] == shape_of(grid):
                self._remember(key, hit)
            else:
                missing.setdefault(key, (size, q, grid))
        if missing:
            self._compute(missing)
        return [self.memo[self._key(q, grid, size)] for q, grid, size in pairs]

    @staticmethod
    def _key(question: str, grid, size) -> tuple:
        return question.strip(), _layout(grid), tuple(size)

    def _disk_key(self, question: str, grid, size) -> str:
        return BiasCache.noise_key(self.bid, question, grid, self.cfg.anchor, size)

    def _remember(self, key, maps) -> None:
        self.memo[key] = maps
        while len(self.memo) > self.size:
            self.memo.popitem(last=False)

    def _compute(self, missing: dict[tuple, tuple]) -> None:
        a = self.cfg.anchor
        by_layout: dict[tuple, list[tuple]] = {}
        for key in missing:
            by_layout.setdefault(key[1], []).append(key)
        for keys in by_layout.values():  # one batch per layout: rows of a batch share one token count
            grid = missing[keys[0]][2]
            images, questions = [], []
            for key in keys:
                size, question, _ = missing[key]
                images += noise_images(size, a.num_noise, a.noise_seed)
                questions += [question] * a.num_noise
            prepared = self.backbone.prepare_batch(images, questions)
            if _layout(prepared.span.grid) != _layout(grid):
                raise ValueError(f"the noise images' layout {_layout(prepared.span.grid)} differs from the "
                                 f"image's {_layout(grid)}")
            gens = self.backbone.generate_batch(prepared, max_new_tokens=a.k)
            for j, key in enumerate(keys):
                maps = np.stack([layer_maps_from(g.maps.numpy(), a.k, grid)
                                 for g in gens[j * a.num_noise:(j + 1) * a.num_noise]])
                size, question, _ = missing[key]
                if self.cache is not None:
                    self.cache.put(self._disk_key(question, grid, size), maps)
                self._remember(key, maps)


def anchor_runs(backbone: Backbone, images: list[Image.Image], questions: list[str], cfg: AdaptConfig,
                noise: NoiseMaps) -> tuple[list[tuple], object]:
    """The model's part of :func:`anchor_batch`: one batched K-step greedy run. Returns, per row, the
    arguments of :func:`adapt.anchor.build.anchor_from_maps` (layer maps, question, config, noise maps,
    prefill maps, views, the layers that may feed the anchor), and the layout's grid
    (``prepared.span.grid``: ``(h, w)`` or the :class:`Views`); the array math can then run off the
    model's thread."""
    k = cfg.anchor.k
    prepared = backbone.prepare_batch(images, questions)
    grid = prepared.span.grid
    gens = backbone.generate_batch(prepared, max_new_tokens=k,
                                   capture_prefill=cfg.anchor.target_entropy == "model")
    maps = noise.get([(q, grid, im.size) for q, im in zip(prepared.questions, images)])
    runs = []
    for row, (q, g, m) in enumerate(zip(prepared.questions, gens, maps)):
        steps = g.maps.numpy()
        prefill = g.prefill_maps.numpy() if g.prefill_maps is not None else None
        keep = window_kept(backbone, prepared, row, min(k, steps.shape[0]))  # as probe_anchor: Gemma 3's windows
        runs.append((layer_maps_from(steps, k, grid), q, cfg, m, prefill, views_of(grid), keep))
    return runs, grid


def anchor_batch(backbone: Backbone, images: list[Image.Image], questions: list[str], cfg: AdaptConfig,
                 noise: NoiseMaps) -> tuple[list[Anchor], object]:
    """The anchors of several (image, question) pairs whose images give one image-token layout (see
    :func:`adapt.backbones.base.group_by_grid`), from one batched K-step greedy run. Returns
    ``(anchors, grid)``: ``grid`` is ``(h, w)`` for one grid (W ``[h, w]``) or the :class:`Views` of a
    multi-view layout (W ``[1, n]``, 0 at newline columns); the images are what the model reads (already
    fitted)."""
    runs, grid = anchor_runs(backbone, images, questions, cfg, noise)
    return [anchor_from_maps(*r) for r in runs], grid


def anchor_columns(w: np.ndarray, grid) -> dict:
    """The dataset columns of W (``anchor``, ``views``, ``grid``): ``anchor`` holds each view's ``rows × cols``
    cells row-major, views one after another (a newline column is no cell: it is left out, its weight
    being 0), and each view says where its cells start in ``anchor``. One grid: one view ``image`` and
    ``grid = [rows, cols]`` (the schema of one-grid exports); several views: their own names and
    ``grid = [1, len(anchor)]``, so ``anchor`` reshaped to ``grid`` is always valid."""
    w = np.asarray(w, dtype=np.float32)
    views = views_of(grid)
    if views is None:
        h, wd = shape_of(grid)
        return {"anchor": w.ravel().tolist(),
                "views": [{"name": "image", "offset": 0, "rows": h, "cols": wd, "newline": False}],
                "grid": [h, wd]}
    cells, listed, at = [], [], 0
    for v in views:
        cells.append(v.take(w.reshape(-1)).ravel())
        listed.append({"name": v.name, "offset": at, "rows": v.h, "cols": v.w, "newline": v.newline})
        at += v.cells
    return {"anchor": np.concatenate(cells).tolist(), "views": listed, "grid": [1, at]}


def _rescaled(geometry: InputGeometry, size: tuple[int, int]) -> InputGeometry:
    """``geometry`` of an image the model read at ``geometry.image_size``, for the same image at ``size``."""
    sx, sy = geometry.image_size[0] / size[0], geometry.image_size[1] / size[1]
    return InputGeometry(tuple(size), geometry.canvas_size, (geometry.scale[0] * sx, geometry.scale[1] * sy),
                         geometry.offset)


def original_geometry(backbone: Backbone, read_size: tuple[int, int], size: tuple[int, int],
                      grid) -> InputGeometry | LayoutGeometry:
    """Where the anchor's cells sit on the original image (``size``) when the model read a copy of it at
    ``read_size`` (:func:`adapt.images.fit`): the layout's geometry at the size the model read, scaled to
    the original, so a view's tiling is the one the model saw (tiles follow the size)."""
    geometry = backbone.layout_geometry(tuple(read_size), grid)
    if tuple(read_size) == tuple(size):
        return geometry
    if isinstance(geometry, LayoutGeometry):
        return LayoutGeometry(geometry.views, {k: _rescaled(g, size) for k, g in geometry.geometries.items()})
    return _rescaled(geometry, size)

