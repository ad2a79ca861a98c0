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
``separation`` gives, per signal, the probability that a random hallucinated mention is on the
hallucination side of a random correct one (the ROC AUC; 0.5 = no signal, 1 = a perfect trigger).

Per scene, the anchor's density (share of W per share of the grid) on the first object the
description names and on the scene's other objects says what the anchor points at.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..anchor import BiasCache
from ..steering import amc, steering_weights
from ..backbones import Backbone
from ..config import AdaptConfig, parse_layers
from ..anchor.build import build_anchor
from .formats import write_json
from .rundir import backbone_identity, open_run, record

SIGNALS = ("image_mass", "on_objects", "on_anchor", "amc_ratio", "would_steer", "position")


def cell_labels(scene, grid: tuple[int, int]) -> np.ndarray:
    """``[h*w]``: per grid cell, the category index + 1 of the object covering it (≥ 10 %), else 0."""
    from ..world.scenes import IMAGE_SIZE, patch_labels

    h, w = grid
    if h != w or IMAGE_SIZE % h:
        raise ValueError(f"grid {grid} does not tile the world's {IMAGE_SIZE}px images")
    return patch_labels(scene, IMAGE_SIZE // h)[0].reshape(-1)


# which way a hallucinated mention leans on each signal (+1: higher than on correct mentions)
_HALLUCINATION_SIDE = {"image_mass": -1, "on_objects": -1, "on_anchor": -1, "amc_ratio": -1, "would_steer": 1,
                       "position": 1}


def separation(correct: np.ndarray, hallucinated: np.ndarray, side: int) -> float | None:
    """ROC AUC of telling hallucinated from correct mentions by one signal (Mann–Whitney, ties 1/2)."""
    if len(correct) == 0 or len(hallucinated) == 0:
        return None
    diff = side * (hallucinated[:, None] - correct[None, :])
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def mentions(scene, backbone: Backbone, cfg: AdaptConfig, cache: BiasCache | None,
             question: str, max_new_tokens: int) -> tuple[list[dict], dict]:
    """One row per object-naming step of the unsteered description of ``scene``, and the scene's
    anchor densities (``anchor_first``, ``anchor_other``)."""
    from ..world.language import NOUN_TO_CATEGORY
    from ..world.scenes import CATEGORIES

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
    cells = cell_labels(scene, grid)
    on_obj = cells > 0
    w_unit = w / np.linalg.norm(w)
    truth = set(scene.categories)
    rows, named = [], []
    for t, piece in enumerate(gen.tokens[: len(maps)]):
        cat = NOUN_TO_CATEGORY.get(piece.strip().lower())
        if cat is not None and cat in truth:
            named.append(cat)
        if cat is None or t < k:  # the anchor phase is never steered: no row
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
    density = {}
    if named:
        first = cells == CATEGORIES.index(named[0]) + 1
        share = anchor.anchor.reshape(-1) / anchor.anchor.sum()
        for name, m in (("anchor_first", first), ("anchor_other", on_obj & ~first)):
            density[name] = float(share[m].sum() / m.mean()) if m.any() else None
    return rows, density


def summarise(rows: list[dict], densities: list[dict] = ()) -> dict:
    out = {}
    for name, keep in (("correct", lambda r: not r["hallucinated"]), ("hallucinated", lambda r: r["hallucinated"]),
                       ("absent_partner", lambda r: r["partner"])):
        sel = [r for r in rows if keep(r)]
        out[name] = {"n": len(sel), **{s: float(np.mean([r[s] for r in sel])) if sel else None for s in SIGNALS}}
    values = {s: np.array([r[s] for r in rows], dtype=float) for s in SIGNALS}
    bad = np.array([r["hallucinated"] for r in rows], dtype=bool)
    out["separation"] = {s: separation(v[~bad], v[bad], _HALLUCINATION_SIDE[s]) for s, v in values.items()}
    for key in ("anchor_first", "anchor_other"):
        vals = [d[key] for d in densities if d.get(key) is not None]
        out[key + "_density"] = float(np.mean(vals)) if vals else None
    return out


def run_diagnosis(backbone: Backbone, out: Path, split: str = "validation", limit: int = 100,
                  seed: int | None = None, cfg: AdaptConfig | None = None, cache: BiasCache | None = None,
                  max_new_tokens: int = 128, overwrite: bool = False) -> dict:
    """Write ``mentions.jsonl`` and ``diagnosis.json`` (means per group) under ``out``.

    A folder holding a diagnosis of another configuration is refused (:mod:`adapt.eval.rundir`) unless
    ``overwrite``; a finished one of the same configuration is returned as it is, an unfinished one
    is computed again (it keeps no partial state worth resuming)."""
    from ..world import DEFAULT_DESCRIBE_PROMPT, make_split

    cfg = cfg or AdaptConfig()
    out = Path(out)
    config = {"diagnose": "world", "split": split, "limit": limit, "seed": seed, "max_new_tokens": max_new_tokens,
              "question": DEFAULT_DESCRIBE_PROMPT, "method_config": cfg.to_dict(),
              "backbone": backbone_identity(backbone)}
    if open_run(out, config, overwrite=overwrite) and (out / "diagnosis.json").exists():
        try:
            return json.loads((out / "diagnosis.json").read_text())
        except (OSError, json.JSONDecodeError):
            pass  # torn by an interruption: computed again below
    (out / "diagnosis.json").unlink(missing_ok=True)
    record(out, config)
    rows, densities = [], []
    with (out / "mentions.jsonl").open("w") as f:
        for scene in make_split(split, limit, seed=seed):
            scene_rows, density = mentions(scene, backbone, cfg, cache, DEFAULT_DESCRIBE_PROMPT, max_new_tokens)
            for r in scene_rows:
                f.write(json.dumps(r) + "\n")
            rows += scene_rows
            densities.append(density)
    result = {"split": split, "limit": limit, "seed": seed, "tau": cfg.asi.tau, "layers": cfg.asi.layers,
              **summarise(rows, densities)}
    write_json(out / "diagnosis.json", result)
    return result
