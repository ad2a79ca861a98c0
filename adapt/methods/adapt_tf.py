"""ADAPT-TF (paper Sec. 4): the anchor (Eq. 1–9) and ASI (Eq. 10–11) in one decoding pass.

Steps 0…K−1 are never steered, so the anchor run's first K tokens are the steered answer's first
K tokens. One decoding therefore does both: the policy watches the anchor phase, builds each
row's anchor W at step K from the maps it has seen (the noise images' maps come from the cache,
run once per (question, grid) before decoding), and steers from step K on. No second prefill and
no repeated K steps: the result equals the two-pass version token for token (tested).

Two cases still decode twice: answering on the anchor-guided image (``enhance.enabled``: the image
changes, so its prefill must be redone after the anchor run on the original), and
``asi.second_pass``, steered from step 0 with the first pass's anchor and references: ``"short"``
takes the rows whose answer ended within the anchor phase (ASI never had a step to act on);
``"pointed"`` also every pointed question (not an open description, by the rule of H*(q)), whose
yes/no is its first token; ``"all"`` every row.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..anchor import BiasCache
from ..config import AdaptConfig, parse_layers
from ..enhance import enhance
from ..anchor.build import Anchor, anchor_from_maps, layer_maps_from, noise_layer_maps, window_kept
from ..steering import ASIPolicy, references_from_maps, second_pass_applies, stack_references, steering_weights
from .base import Answer, Method, register

# named readings (dotted config overrides on top of the defaults); DESIGN §4 and the README say
# how each scored on the world
VARIANTS: dict[str, dict] = {
    "paper": {"asi.operator": "logprior", "asi.trigger": "amc", "asi.mode": "relative", "asi.tau": 0.6,
              "asi.alpha": 0.5, "asi.layers": "all", "anchor.k": 5, "anchor.bias_lambda": "noise",
              "asi.ref_skip_step0": False, "asi.second_pass": "off"},
    "logprior": {"asi.operator": "logprior"},
    "mass-kept": {"asi.operator": "logprior-image"},
    "mass-aware": {"asi.operator": "mass-aware"},
    # the authors' public code: its five-criterion fusion and border halving, then its running modes
    "authors-hhi": {"anchor.fusion": "authors", "asi.operator": "hhi", "asi.trigger": "always",
                    "asi.second_pass": "off"},
    "authors-quality": {"anchor.fusion": "authors", "asi.operator": "quality", "asi.trigger": "always",
                        "asi.second_pass": "off"},
    # ADAPT as a whole: the setting the joint rule picked for the shipped tuned model
    # (assets/embedded-vagdpo; docs/whole.md): a tuned model has less image mass to give back
    "whole": {"asi.gamma": 0.75},
}
# the paper's ADAPT-TF answers on the anchor-guided image (Sec. 4.1.4): one reading per enhancement
# mode, the paper's fade toward white and the three that keep hue (adapt.enhance.fade_target)
VARIANTS.update({f"enhanced-{m}": {"enhance.enabled": True, "enhance.mode": m}
                 for m in ("paper", "background", "blur", "luminance")})


# Settings of the same machinery that drop the anchor's direction: PAI-like, never called ADAPT-TF.
# "image-boost" is the validation sweep's pick among them (same rule as the ADAPT reading).
PAI_LIKE: dict[str, dict] = {
    "image-boost": {"asi.operator": "image-boost", "asi.trigger": "always", "asi.boost": 0.5, "asi.layers": "all",
                    "asi.second_pass": "off"},
}


@dataclass
class AdaptRecord:
    """One ADAPT-TF answer as a full analysis reads it (:func:`adapt.pipeline.analyse` assembles the
    Trace from it): the anchor and its parts, and the decisions of the pass that gave the answer."""

    question: str  # as the backbone prepared it
    grid: object  # the image-token grid (h, w), or the layout's views
    anchor: Anchor  # layer maps, scores, λ, fused map, bias, debias mask, W
    layers: list[int]  # the monitored (steerable) layers
    amc: np.ndarray  # [T, L] AMC before steering (NaN where nothing computed it)
    fired: np.ndarray  # [T, L] bool, where the operator wrote
    threshold: np.ndarray  # [L] the AMC threshold (NaN where the trigger does not read AMC)
    image_used: str  # "original" or "enhanced"
    enhanced: Image.Image | None  # the anchor-guided image the answer read (enhance.enabled)
    bias_cache_hit: bool
    seconds_bias: float  # running the noise images (0 when cached)


def variant_config(base: AdaptConfig, variant: str | None) -> AdaptConfig:
    if not variant:
        return base
    if variant not in VARIANTS:
        raise ValueError(f"unknown adapt-tf variant {variant!r}; available: {', '.join(VARIANTS)}")
    return base.replace(**VARIANTS[variant])


DESCRIPTION = "ADAPT-TF: visual anchor + attention-supervised inference, one decoding pass"


def _settings(over: dict) -> str:
    return ", ".join(f"{k}={val}" for k, val in over.items())


@register("adapt-tf", DESCRIPTION, {v: "ADAPT-TF, " + _settings(over) for v, over in VARIANTS.items()})
class AdaptTF(Method):
    description = DESCRIPTION

    def __init__(self, cfg: AdaptConfig | None = None, cache: BiasCache | None = None, name: str = "adapt-tf",
                 lean: bool = True, record: bool = False):
        """``lean``: after the anchor phase, layers ASI does not monitor run as plain SDPA, uncaptured
        (an answer's ``generation.maps`` then holds the anchor phase only); ``False`` captures all.
        ``record``: each answer keeps an :class:`AdaptRecord` (what a full analysis shows)."""
        self.cfg = (cfg or AdaptConfig()).validate()
        self.lean = lean
        self.record = record
        self.cache = cache
        self.name = name

    def config_dict(self) -> dict:
        return self.cfg.to_dict()

    @classmethod
    def create(cls, variant, cfg, cache, name):
        return cls(variant_config(cfg or AdaptConfig(), variant), cache, name=name)

    def _noise(self, backbone, questions, sizes, grid) -> tuple[dict[str, np.ndarray | None], dict[str, bool]]:
        """Per question, the noise images' maps and whether they came from the cache."""
        out, hits = {}, {}
        for q, size in zip(questions, sizes):
            if q not in out:
                out[q], hits[q] = noise_layer_maps(backbone, q, size, grid, self.cfg, self.cache)
        return out, hits

    def _anchors(self, maps: np.ndarray, prefill: np.ndarray | None, questions, grid, noise, keep) -> list[Anchor]:
        k = self.cfg.anchor.k
        return [anchor_from_maps(layer_maps_from(maps[:, :, b], k, grid), q, self.cfg, noise[q],
                                 None if prefill is None else prefill[:, b], views=grid, keep=keep(b, maps.shape[0]))
                for b, q in enumerate(questions)]

    def _layers(self, backbone, anchors: list[Anchor]) -> list[list[int]]:
        return [parse_layers(self.cfg.asi.layers, backbone.num_layers, a.fusion.lam) for a in anchors]

    def _answer_group(self, backbone, images, questions, max_new_tokens, **generate_kwargs):
        cfg = self.cfg
        k = cfg.anchor.k
        prepared = backbone.prepare_batch(images, questions)
        questions, grid = prepared.questions, prepared.span.grid
        t0 = time.perf_counter()
        noise, hits = self._noise(backbone, questions, prepared.image_sizes, grid)
        seconds_bias = time.perf_counter() - t0
        model_target = cfg.anchor.target_entropy == "model"
        anchors: list[Anchor] = []
        first = prepared  # the anchor run's inputs: a sliding layer that lost the image feeds no anchor

        def keep(b, steps):
            return window_kept(backbone, first, b, min(k, steps))

        def anchor_fn(maps, prefill):
            anchors[:] = self._anchors(maps, prefill, questions, grid, noise, keep)
            return np.stack([steering_weights(a.anchor) for a in anchors]), anchors

        if cfg.enhance.enabled:  # the image changes: anchor run on the original, then re-prefill
            probe = backbone.generate_batch(prepared, max_new_tokens=k, capture_prefill=model_target)
            maps = np.stack([_pad_steps(g.maps.numpy(), k) for g in probe], axis=2)
            prefill = np.stack([g.prefill_maps.numpy() for g in probe], 1) if model_target else None
            anchor_fn(maps, prefill)
            enhanced = [enhance(im, a.anchor, cfg.enhance, geometry=backbone.layout_geometry(im.size, grid))
                        for im, a in zip(images, anchors)]
            prepared = backbone.prepare_batch(enhanced, questions)
            if prepared.span.grid != tuple(grid):
                raise ValueError("the enhanced image changed the image-token grid")
            weights = np.stack([steering_weights(a.anchor) for a in anchors])
            layers = self._layers(backbone, anchors)
            policy = ASIPolicy(backbone.num_layers, lambda _info: layers, cfg.asi, k, weights=weights)
        else:
            policy = ASIPolicy(backbone.num_layers, lambda info: self._layers(backbone, info), cfg.asi, k,
                               anchor_fn=anchor_fn)
        gens = backbone.generate_batch(prepared, max_new_tokens=max_new_tokens, policy=policy,
                                       capture_prefill=model_target, lean=self.lean, **generate_kwargs)
        lengths = [len(g.token_ids) for g in gens]
        fired, monitored = policy.fire_counts(lengths)
        answers = [Answer(g.text, g.token_ids, {"tokens": n, "fired": int(f), "monitored": int(m), "pass": 1}, g)
                   for g, n, f, m in zip(gens, lengths, fired, monitored)]
        used = enhanced if cfg.enhance.enabled else None

        def record(answer, b, anchor, layers, pol, row):
            if self.record:
                answer.record = AdaptRecord(
                    questions[b], grid, anchor, list(layers), pol.amc_matrix(row), pol.fired_matrix(row),
                    pol.thresholds(row), "enhanced" if used else "original", used[b] if used else None,
                    bool(hits[questions[b]]), seconds_bias)

        if self.record:  # the anchors are built by now (at step K, or when decoding stopped before it)
            for b, (a, layers) in enumerate(zip(answers, self._layers(backbone, anchors))):
                record(a, b, anchors[b], layers, policy, b)
        rows = self._second_pass_rows(lengths, questions)
        if rows:
            answers = self._second_pass(backbone, rows, answers, gens, questions, grid, noise,
                                        enhanced if cfg.enhance.enabled else images, max_new_tokens,
                                        anchors if cfg.enhance.enabled else None, record, keep)
        return answers

    def _second_pass(self, backbone, rows, answers, gens, questions, grid, noise, images, max_new_tokens,
                     anchors: list[Anchor] | None = None, record=None, keep=None):
        """Rows steered again from step 0 with their own first pass's anchor and references, built
        from the steps each row really generated (``anchors``: the anchor-run anchors of the original
        image, when the first pass answered on the enhanced one). ``record(answer, b, anchor, layers,
        policy, row)`` keeps what a full analysis reads."""
        cfg, k = self.cfg, self.cfg.anchor.k
        refs, layers, row_anchors = [], [], []
        for b in rows:
            maps = gens[b].maps.numpy()
            anchor = anchors[b] if anchors is not None else anchor_from_maps(
                layer_maps_from(maps, k, grid), questions[b], cfg, noise[questions[b]], views=grid,
                keep=keep(b, maps.shape[0]) if keep else None)
            row_anchors.append(anchor)
            w = steering_weights(anchor.anchor)
            refs.append(references_from_maps(maps, w, k, cfg.asi.ref_skip_step0))
            layers.append(parse_layers(cfg.asi.layers, backbone.num_layers, anchor.fusion.lam))
        policy = ASIPolicy(backbone.num_layers, lambda _info: layers, cfg.asi, k, refs=stack_references(refs))
        prepared = backbone.prepare_batch([images[b] for b in rows], [questions[b] for b in rows])
        gens2 = backbone.generate_batch(prepared, max_new_tokens=max_new_tokens, policy=policy, lean=self.lean)
        lengths = [len(g.token_ids) for g in gens2]
        fired, monitored = policy.fire_counts(lengths)
        for j, b in enumerate(rows):
            answers[b] = Answer(gens2[j].text, gens2[j].token_ids,
                                {"tokens": lengths[j], "fired": int(fired[j]), "monitored": int(monitored[j]),
                                 "pass": 2, "first_pass": answers[b].text}, gens2[j])
            if record is not None:
                record(answers[b], b, row_anchors[j], layers[j], policy, j)
        return answers

    def _second_pass_rows(self, lengths: list[int], questions: list[str]) -> list[int]:
        return [b for b, (n, q) in enumerate(zip(lengths, questions))
                if second_pass_applies(self.cfg.asi, self.cfg.anchor.k, q, n)]


def _pad_steps(maps: np.ndarray, k: int) -> np.ndarray:
    """``[T, L, n]`` with T < K (an answer shorter than the anchor phase) repeated to K steps' mean."""
    if maps.shape[0] >= k:
        return maps[:k]
    return np.concatenate([maps, np.repeat(maps.mean(0, keepdims=True), k - maps.shape[0], 0)])
