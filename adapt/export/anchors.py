"""The anchor-only path (paper Sec. 4.1): prefill + K greedy steps with the recorder, the anchor W from
those maps, with the noise images' maps computed once per (question, grid) and shared; no full answer,
no unsteered comparison. Rows of one image-token grid run together as one left-padded batch."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from PIL import Image

from ..anchor import BiasCache, noise_images
from ..backbones import Backbone
from ..config import AdaptConfig
from ..anchor.build import Anchor, anchor_from_maps, backbone_id, layer_maps_from


class NoiseMaps:
    """The noise images' per-layer maps ``[M, L, h, w]`` per (question, grid): in memory for this run
    (bounded), on disk through ``cache`` (the same keys :func:`adapt.anchor.build.noise_layer_maps` uses),
    and the misses of one batch computed in a single model call."""

    def __init__(self, backbone: Backbone, cfg: AdaptConfig, cache: BiasCache | None, size: int = 4096):
        self.backbone, self.cfg, self.cache, self.size = backbone, cfg, cache, size
        self.memo: OrderedDict[tuple, np.ndarray | None] = OrderedDict()
        self.bid = backbone_id(backbone)

    @property
    def needed(self) -> bool:
        a = self.cfg.anchor
        return a.debias and a.num_noise > 0 and a.fusion != "authors"

    def get(self, pairs: list[tuple[str, tuple[int, int], tuple[int, int]]]) -> list[np.ndarray | None]:
        """Maps for each ``(question, grid, image_size)``: the noise images are made at the image's size,
        so the size is part of the key (as in :meth:`BiasCache.noise_key`)."""
        if not self.needed:
            return [None] * len(pairs)
        a = self.cfg.anchor
        missing: dict[tuple, tuple] = {}
        for q, grid, size in pairs:
            key = (q.strip(), tuple(grid), tuple(size))  # as the bias cache's key: case kept, the size
            if key in self.memo:
                self.memo.move_to_end(key)
                continue
            hit = self.cache.get(self._disk_key(q, grid, size)) if self.cache is not None else None
            if hit is not None and hit.shape[0] == a.num_noise and hit.shape[2:] == tuple(grid):
                self._remember(key, hit)
            else:
                missing.setdefault(key, (size, q))
        if missing:
            self._compute(missing)
        return [self.memo[(q.strip(), tuple(grid), tuple(size))] for q, grid, size in pairs]

    def _disk_key(self, question: str, grid, size) -> str:
        return BiasCache.noise_key(self.bid, question, tuple(grid), self.cfg.anchor, size)

    def _remember(self, key, maps) -> None:
        self.memo[key] = maps
        while len(self.memo) > self.size:
            self.memo.popitem(last=False)

    def _compute(self, missing: dict[tuple, tuple]) -> None:
        a = self.cfg.anchor
        by_grid: dict[tuple, list[tuple]] = {}
        for key in missing:
            by_grid.setdefault(key[1], []).append(key)
        for grid, keys in by_grid.items():  # one batch per grid: rows of a batch share one token count
            images, questions = [], []
            for key in keys:
                size, question = missing[key]
                images += noise_images(size, a.num_noise, a.noise_seed)
                questions += [question] * a.num_noise
            prepared = self.backbone.prepare_batch(images, questions)
            if tuple(prepared.span.grid) != grid:
                raise ValueError(f"noise image grid {prepared.span.grid} differs from the image's {grid}")
            gens = self.backbone.generate_batch(prepared, max_new_tokens=a.k)
            for j, key in enumerate(keys):
                maps = np.stack([layer_maps_from(g.maps.numpy(), a.k, grid)
                                 for g in gens[j * a.num_noise:(j + 1) * a.num_noise]])
                if self.cache is not None:
                    self.cache.put(self._disk_key(missing[key][1], grid, missing[key][0]), maps)
                self._remember(key, maps)


def anchor_runs(backbone: Backbone, images: list[Image.Image], questions: list[str], cfg: AdaptConfig,
                noise: NoiseMaps) -> tuple[list[tuple], tuple[int, int]]:
    """The model's part of :func:`anchor_batch`: one batched K-step greedy run. Returns, per row, the
    arguments of :func:`adapt.anchor.build.anchor_from_maps` (layer maps, question, config, noise maps,
    prefill maps), and the grid; the array math can then run off the model's thread."""
    k = cfg.anchor.k
    prepared = backbone.prepare_batch(images, questions)
    if not prepared.span.views.plain:  # the export's rows hold one h×w anchor; views need their own schema
        raise ValueError(f"{backbone.family}: anchors of images laid out as several views "
                         f"({', '.join(v.name for v in prepared.span.views)}) are not exported yet")
    grid = tuple(prepared.span.grid)
    gens = backbone.generate_batch(prepared, max_new_tokens=k,
                                   capture_prefill=cfg.anchor.target_entropy == "model")
    maps = noise.get([(q, grid, im.size) for q, im in zip(prepared.questions, images)])
    runs = []
    for q, g, m in zip(prepared.questions, gens, maps):
        prefill = g.prefill_maps.numpy() if g.prefill_maps is not None else None
        runs.append((layer_maps_from(g.maps.numpy(), k, grid), q, cfg, m, prefill))
    return runs, grid


def anchor_batch(backbone: Backbone, images: list[Image.Image], questions: list[str], cfg: AdaptConfig,
                 noise: NoiseMaps) -> tuple[list[Anchor], tuple[int, int]]:
    """The anchors of several (image, question) pairs whose images give one image-token grid (see
    :func:`adapt.backbones.base.group_by_grid`), from one batched K-step greedy run. Returns
    ``(anchors, grid)``; the images are what the model reads (already fitted)."""
    runs, grid = anchor_runs(backbone, images, questions, cfg, noise)
    return [anchor_from_maps(*r) for r in runs], grid
