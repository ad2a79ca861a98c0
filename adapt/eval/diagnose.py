"""Where attention goes when the model names an object, hallucinated or not (world scenes only).

For each scene the unsteered description is decoded with capture; the anchor is built from its
first K steps exactly as ADAPT-TF builds it. At every step whose token names an object category
(the world's nouns, synonyms and plurals), the step's per-layer image attention is compared with
the exact ground truth and with the anchor:

* ``image_mass``: total attention on image tokens (paper Sec. 3, signal 3), mean over layers;
* ``on_objects``: share of the image attention on grid cells that some object covers;
* ``on_anchor``: cosine similarity of the step's map to the anchor W (signal 1);
* ``amc_ratio``: AMC / S_ref (mean over the ASI layers): ASI steers a layer below τ;
* ``would_steer``: share of ASI layers where AMC < τ·S_ref at that step;
* ``position``: step / answer length.

A mechanism that works shows hallucinated mentions with lower ``on_objects``/``on_anchor``/
``amc_ratio`` than correct ones, and ``would_steer`` high on them and low on correct ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..anchor import BiasCache
from ..asi import amc, steering_weights
from ..backbones import Backbone
from ..config import AdaptConfig, parse_layers
from ..pipeline import build_anchor

SIGNALS = ("image_mass", "on_objects", "on_anchor", "amc_ratio", "would_steer", "position")


def object_cells(scene, grid: tuple[int, int]) -> np.ndarray:
    """``[h*w]`` bool: grid cells covered (≥ 10 %) by some object of the scene."""
    from ..world.scenes import IMAGE_SIZE, patch_labels

    h, w = grid
    if h != w or IMAGE_SIZE % h:
        raise ValueError(f"grid {grid} does not tile the world's {IMAGE_SIZE}px images")
    cat, _ = patch_labels(scene, IMAGE_SIZE // h)
    return cat.reshape(-1) > 0


def mentions(scene, backbone: Backbone, cfg: AdaptConfig, cache: BiasCache | None,
             question: str, max_new_tokens: int) -> list[dict]:
    """One row per object-naming step of the unsteered description of ``scene``."""
    from ..world.language import NOUN_TO_CATEGORY

    image = scene.image()
    prepared = backbone.prepare(image, question)
    gen = backbone.generate(prepared, max_new_tokens=max_new_tokens)
    maps = gen.maps.cpu().numpy().astype(np.float64)  # [T, L, n]
    grid = prepared.span.grid
    anchor = build_anchor(backbone, prepared.question, image.size, grid, maps, cfg, None, cache)
    w = steering_weights(anchor.anchor)
    layers = parse_layers(cfg.asi.layers, backbone.num_layers, anchor.fusion.lam)
    scores = amc(maps, w)  # [T, L]
    k = min(cfg.anchor.k, len(scores))
    ref = np.maximum(scores[:k].mean(0), 1e-12)
    on_obj = object_cells(scene, grid)
    w_unit = w / np.linalg.norm(w)
    truth = set(scene.categories)
    rows = []
    for t, piece in enumerate(gen.tokens[: len(maps)]):
        cat = NOUN_TO_CATEGORY.get(piece.strip().lower())
        if cat is None or t < k:
            continue
        a = maps[t]  # [L, n]
        mass = a.sum(-1)
        rows.append({
            "seed": scene.seed, "is_trap": scene.is_trap, "step": t, "category": cat,
            "hallucinated": cat not in truth, "partner": cat in scene.absent_partners,
            "image_mass": float(mass.mean()),
            "on_objects": float((a[:, on_obj].sum(-1) / np.maximum(mass, 1e-12)).mean()),
            "on_anchor": float(((a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)) @ w_unit).mean()),
            "amc_ratio": float((scores[t, layers] / ref[layers]).mean()),
            "would_steer": float((scores[t, layers] < cfg.asi.tau * ref[layers]).mean()),
            "position": t / max(len(maps) - 1, 1),
        })
    return rows


def summarise(rows: list[dict]) -> dict:
    out = {}
    for name, keep in (("correct", lambda r: not r["hallucinated"]), ("hallucinated", lambda r: r["hallucinated"]),
                       ("absent_partner", lambda r: r["partner"])):
        sel = [r for r in rows if keep(r)]
        out[name] = {"n": len(sel), **{s: float(np.mean([r[s] for r in sel])) if sel else None for s in SIGNALS}}
    return out


def run_diagnosis(backbone: Backbone, out: Path, split: str = "validation", limit: int = 100,
                  seed: int | None = None, cfg: AdaptConfig | None = None, cache: BiasCache | None = None,
                  max_new_tokens: int = 128) -> dict:
    """Write ``mentions.jsonl`` and ``diagnosis.json`` (means per group) under ``out``."""
    from ..world import DEFAULT_DESCRIBE_PROMPT, make_split

    cfg = cfg or AdaptConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with (out / "mentions.jsonl").open("w") as f:
        for scene in make_split(split, limit, seed=seed):
            for r in mentions(scene, backbone, cfg, cache, DEFAULT_DESCRIBE_PROMPT, max_new_tokens):
                f.write(json.dumps(r) + "\n")
                rows.append(r)
    result = {"split": split, "limit": limit, "seed": seed, "tau": cfg.asi.tau, "layers": cfg.asi.layers,
              **summarise(rows)}
    (out / "diagnosis.json").write_text(json.dumps(result, indent=1))
    return result
