"""The ASI policy: per-row state that the attention hook points call at every (step, layer).

Steps ``0..K−1`` are the anchor phase: never steered; they give each layer's references
S_ref,l (mean AMC), M_ref,l (mean image mass) and a_ref,l (mean attention). The anchor weights
``w`` are either known up front (two-pass: an earlier anchor run made them) or built from the
anchor phase itself by ``anchor_fn`` at the first step after it, inside the same decoding
(one-pass ADAPT-TF: the anchor run's first K tokens *are* the steered answer's first K tokens,
since nothing steers before K). With ``refs`` from an earlier pass, steering starts at step 0.

All state is per batch row and lives on the device of the layer that uses it, so one batched
decoding serves rows with different anchors and decisions, and ``device_map`` over several GPUs
works. On a GPU the hot path never syncs with the host (except once, when ``anchor_fn`` runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..attention import AttentionPoint, LogitBias
from ..config import ASIConfig
from .amc import amc
from .operators import apply_operator
from .triggers import fire

# anchor_fn(phase maps [K', L, B, n] float32, prefill maps [L, B, n] or None) -> weights w [B, n]
AnchorFn = Callable[[np.ndarray, np.ndarray | None], np.ndarray]


@dataclass
class References:
    """What the anchor phase measured, per layer and row (CPU tensors): enough to steer a second pass
    from step 0."""

    weights: torch.Tensor  # [B, n] w = W / max W
    s_ref: torch.Tensor  # [L, B]
    m_ref: torch.Tensor  # [L, B]
    a_ref: torch.Tensor  # [L, B, n]


def second_pass_applies(cfg: ASIConfig, k: int, question: str, answer_tokens: int) -> bool:
    """Whether ``cfg.second_pass`` steers this answer again from step 0: ``"short"`` when it ended
    within the anchor phase (ASI had no step to act on), ``"pointed"`` also for every question that is
    not an open description (a yes/no is its first token), ``"all"`` always."""
    from ..anchor import is_open_description

    if cfg.second_pass == "all":
        return True
    if cfg.second_pass == "off":
        return False
    short = answer_tokens <= k
    return short or (cfg.second_pass == "pointed" and not is_open_description(question))


def references_from_maps(maps: np.ndarray, weights: np.ndarray, k: int, skip_step0: bool = False) -> References:
    """One row's references from its captured (unsteered) maps ``[T, L, n]``: the first min(T, K)
    steps, as the anchor phase of a live decoding would give them."""
    phase = torch.as_tensor(np.asarray(maps[: max(1, min(k, maps.shape[0]))]), dtype=torch.float32)
    if skip_step0 and phase.shape[0] > 1:
        phase = phase[1:]
    w = torch.as_tensor(np.asarray(weights), dtype=torch.float32)
    return References(w[None], amc(phase, w).mean(0)[:, None], phase.sum(-1).mean(0)[:, None],
                      phase.mean(0)[:, None, :])


def stack_references(refs: list[References]) -> References:
    return References(torch.cat([r.weights for r in refs]), torch.cat([r.s_ref for r in refs], 1),
                      torch.cat([r.m_ref for r in refs], 1), torch.cat([r.a_ref for r in refs], 1))


_FROM_RECORDER = object()  # an AMC left to compute from the recorder's maps after decoding


class ASIPolicy:
    """Monitors each (step, layer) of each row, fires by ``cfg.trigger`` and writes ``cfg.operator``.

    ``weights``: ``[n]`` (every row) or ``[B, n]`` when known up front; else ``anchor_fn`` builds
    them at step K (and may return ``(weights, info)``). ``layers``: the monitored (and steerable)
    layers of every row, or a callable ``info -> [layers of row b, ...]`` resolved when the anchor
    is built (``top:N`` needs each row's λ)."""

    def __init__(self, num_layers: int, layers, cfg: ASIConfig, k: int, weights: np.ndarray | None = None,
                 anchor_fn: AnchorFn | None = None, refs: References | None = None):
        if weights is None and anchor_fn is None and refs is None:
            raise ValueError("ASIPolicy needs weights, an anchor_fn or references")
        self.cfg, self.k, self.num_layers = cfg, k, num_layers
        self.start = 0 if refs is not None else k
        self.anchor_fn = anchor_fn
        self._layers = layers
        self.monitored: set[int] = set(layers) if not callable(layers) else set()
        self._row_mask: torch.Tensor | None = None  # [L, B] bool when rows monitor different layers
        self._w_cpu = None
        if refs is not None:
            self._w_cpu = refs.weights.float()
        elif weights is not None:
            w = torch.as_tensor(np.asarray(weights), dtype=torch.float32)
            self._w_cpu = w[None] if w.ndim == 1 else w
        self._refs_cpu = refs
        self._dev: dict[tuple[str, int], torch.Tensor] = {}  # per-layer tensors on that layer's device
        self.ready = refs is not None
        if refs is not None and callable(layers):
            self._resolve_layers(None)
        self.phase: list[list[torch.Tensor]] = []  # anchor-phase head-mean maps, [step][layer] -> [B, n]
        self.amc_log: list[list[torch.Tensor | None]] = []  # [step][layer] -> [B]
        self.fired_log: list[dict[int, torch.Tensor]] = []  # [step] layer -> [B] bool
        self.recorder = None
        self.anchor_info = None  # what anchor_fn returned besides the weights (per row)

    def bind(self, recorder) -> None:
        self.recorder = recorder

    # state ----------------------------------------------------------------------------------------
    def _on(self, name: str, layer: int, device: torch.device, value: Callable[[], torch.Tensor]) -> torch.Tensor:
        key = (name, layer)
        t = self._dev.get(key)
        if t is None:
            t = self._dev[key] = value().to(device)
        return t

    def _finalise(self) -> None:
        """Build w (one-pass) and the per-layer references from the anchor phase."""
        phase = [s for s in self.phase if len(s) == self.num_layers]
        if self._w_cpu is None:
            maps = np.stack([np.stack([t.float().cpu().numpy() for t in s]) for s in phase])  # [T, L, B, n]
            prefill = None
            if self.recorder is not None and all(m is not None for m in self.recorder.prefill_text_maps):
                prefill = np.stack([m.float().cpu().numpy() for m in self.recorder.prefill_text_maps])
            out = self.anchor_fn(maps, prefill)
            weights, self.anchor_info = (out if isinstance(out, tuple) else (out, None))
            self._w_cpu = torch.as_tensor(np.asarray(weights), dtype=torch.float32)
        if callable(self._layers):
            self._resolve_layers(self.anchor_info)
        if not phase:  # K = 0 (hand-made policies only): no references; relative thresholds are 0
            B, n = self._shape
            w = self._w_cpu.expand(B, n)
            self._refs_cpu = References(w, torch.zeros(self.num_layers, B), torch.zeros(self.num_layers, B),
                                        torch.zeros(self.num_layers, B, n))
            self.ready = True
            return
        steps = range(1 if self.cfg.ref_skip_step0 and len(phase) > 1 else 0, len(phase))
        s_ref, m_ref, a_ref = [], [], []
        for layer in range(self.num_layers):
            dev = phase[0][layer].device
            w = self._w_cpu.to(dev)
            for t in range(len(phase)):
                self.amc_log[t][layer] = amc(phase[t][layer], w)
            a = torch.stack([phase[t][layer] for t in steps])  # [T', B, n]
            s_ref.append(torch.stack([self.amc_log[t][layer] for t in steps]).mean(0))
            m_ref.append(a.sum(-1).mean(0))
            a_ref.append(a.mean(0))
        self._refs_cpu = References(self._w_cpu, torch.stack([x.cpu() for x in s_ref]),
                                    torch.stack([x.cpu() for x in m_ref]), torch.stack([x.cpu() for x in a_ref]))
        for layer in range(self.num_layers):  # already on their devices: keep them there
            self._dev[("s_ref", layer)], self._dev[("m_ref", layer)] = s_ref[layer], m_ref[layer]
            self._dev[("a_ref", layer)] = a_ref[layer]
        self.ready = True

    def _resolve_layers(self, info) -> None:
        per_row = self._layers(info)
        mask = torch.zeros(self.num_layers, len(per_row), dtype=torch.bool)
        for b, layers in enumerate(per_row):
            mask[list(layers), b] = True
        self._row_mask = mask
        self.monitored = {int(l) for l in mask.any(1).nonzero()[:, 0]}

    def needs(self, layer: int, step: int) -> bool:
        """Whether the hook point of (layer, step) is read: the anchor phase everywhere, then only the
        monitored layers (the recorder's lean mode leaves the others to plain SDPA)."""
        return step < self.start or not self.ready or layer in self.monitored

    # the hook ---------------------------------------------------------------------------------------
    def intervene(self, point: AttentionPoint):
        layer, step = point.layer, point.step
        while len(self.amc_log) <= step:  # by step, not by layer 0: a lean recorder may skip layer 0
            self.amc_log.append([None] * self.num_layers)
            self.fired_log.append({})
        if step < self.start:
            if layer == 0:
                self.phase.append([])
            self.phase[-1].append(point.attn)  # head-mean, unsteered [B, n]
            return None
        if not self.ready:
            self._shape = (point.probs.shape[0], point.probs.shape[-1])
            self._finalise()
        if layer not in self.monitored or not self.cfg.enabled:
            # nothing steers this layer, so the map the recorder keeps is the unsteered one: its AMC is
            # computed after decoding (amc_matrix), off the hot path
            self.amc_log[step][layer] = _FROM_RECORDER
            return None
        a = point.attn
        dev = a.device
        w = self._on("w", layer, dev, lambda: self._w_cpu)
        score = amc(a, w)
        self.amc_log[step][layer] = score
        refs = self._refs_cpu
        s_ref = self._on("s_ref", layer, dev, lambda: refs.s_ref[layer])
        m_ref = self._on("m_ref", layer, dev, lambda: refs.m_ref[layer])
        fired = fire(self.cfg, score, point.mass, s_ref, m_ref, a.shape[-1])
        if self._row_mask is not None:
            fired = fired & self._on("mask", layer, dev, lambda: self._row_mask[layer])
        self.fired_log[step][layer] = fired
        if dev.type == "cpu" and not bool(fired.any()):
            return None  # nothing to re-normalise (on a GPU the check would cost a sync)
        a_ref = self._on("a_ref", layer, dev, lambda: refs.a_ref[layer])
        return apply_operator(self.cfg, point, w, fired, m_ref, a_ref)

    def __call__(self, layer: int, step: int, attn: torch.Tensor) -> torch.Tensor | None:
        """The bias-callable form (one head): for policies driven by hand, e.g. in tests."""
        edit = self.intervene(AttentionPoint(layer, step, torch.log(attn.clamp_min(1e-30))[:, None], attn[:, None]))
        if edit is None:
            return None
        if isinstance(edit, LogitBias):
            return edit.bias
        raise TypeError(f"operator {self.cfg.operator!r} writes probabilities; use it through the recorder")

    # results ------------------------------------------------------------------------------------------
    def references(self) -> References | None:
        """The anchor phase's references (built now if decoding stopped before step K)."""
        if not self.ready and self.phase and len(self.phase[0]) == self.num_layers:
            self._finalise()
        return self._refs_cpu

    @property
    def weights(self) -> np.ndarray | None:
        return None if self._w_cpu is None else self._w_cpu.numpy()

    def amc_matrix(self, row: int = 0) -> np.ndarray:
        """[steps, layers] AMC of one batch row (before steering)."""
        self.references()
        rec = self.recorder
        w = None if self._w_cpu is None else self._w_cpu[min(row, self._w_cpu.shape[0] - 1)]
        rows = []
        for t, r in enumerate(self.amc_log):
            vals = []
            for layer, x in enumerate(r):
                if (x is _FROM_RECORDER and rec is not None and t < len(rec.steps)
                        and rec.steps[t][layer] is not None):
                    m = rec.steps[t][layer][row].float().cpu()
                    vals.append(float(amc(m.mean(0) if m.ndim == 2 else m, w)))
                elif isinstance(x, torch.Tensor):
                    vals.append(float(x[row]))
                else:
                    vals.append(np.nan)
            rows.append(vals)
        return np.array(rows, dtype=np.float64).reshape(len(rows), self.num_layers)

    def fired_matrix(self, row: int = 0) -> np.ndarray:
        """[steps, layers] bool: where the operator was applied to one row."""
        out = np.zeros((len(self.amc_log), self.num_layers), dtype=bool)
        for t, d in enumerate(self.fired_log):
            for layer, f in d.items():
                out[t, layer] = bool(f[row])
        return out

    def fire_counts(self, lengths: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Per row: steered and monitored (step, layer) pairs within the row's own ``lengths[b]`` steps."""
        B = len(lengths)
        fired = np.zeros(B, dtype=np.int64)
        monitored = np.zeros(B, dtype=np.int64)
        mask = self._row_mask.numpy() if self._row_mask is not None else None
        for t, d in enumerate(self.fired_log):
            alive = np.array([t < n for n in lengths])
            for layer, f in d.items():
                mon = alive if mask is None else alive & mask[layer]
                monitored += mon
                fired += mon & f.cpu().numpy().astype(bool)
        return fired, monitored

    def thresholds(self, row: int = 0) -> np.ndarray:
        """Per layer, the AMC threshold of one row (NaN where the trigger does not use AMC)."""
        refs = self.references()
        if self.cfg.trigger not in ("amc", "amc+mass") or refs is None:
            return np.full(self.num_layers, np.nan)
        if self.cfg.mode == "absolute":
            return np.full(self.num_layers, self.cfg.tau / refs.weights.shape[-1])
        return (self.cfg.tau * refs.s_ref[:, row]).numpy().astype(np.float64)
