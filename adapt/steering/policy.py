"""The ASI policy: per-row state that the attention hook points call at every (step, layer).

Steps ``0..K−1`` are the anchor phase: never steered; they give each layer's references
S_ref,l (mean AMC), M_ref,l (mean image mass) and a_ref,l (mean attention). The anchor weights
``w`` are either known up front (two-pass: an earlier anchor run made them) or built from the
anchor phase itself by ``anchor_fn`` at the first step after it, inside the same decoding
(one-pass ADAPT-TF: the anchor run's first K tokens *are* the steered answer's first K tokens,
since nothing steers before K). With ``refs`` from an earlier pass, steering starts at step 0.

All state is per batch row and lives on the device of the layer that uses it, so one batched
decoding serves rows with different anchors and decisions, and ``device_map`` over several GPUs
works. Decisions are made on the device: each (layer, step)'s decision and unsteered map stay there
(:class:`~adapt.hooks.StepLog`, as is the AMC an ``amc`` trigger reads) and are read on the host once,
after decoding. On a GPU the hot
path never syncs with the host (except once, when ``anchor_fn`` runs); on a CPU, where reading a
decision costs nothing, a single row's decision is read to skip the write of a row that did not fire.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..hooks import AttentionPoint, LogitBias, StepLog
from ..config import ASIConfig
from .amc import amc, amc_of
from .operators import LayerState, apply_operator
from .triggers import fire_rows, thresholds

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
        self._state: dict[int, dict] = {}  # per layer: its constants on that layer's device
        self.ready = refs is not None
        if refs is not None and callable(layers):
            self._resolve_layers(None)
        self.phase: dict[int, list] = {}  # anchor-phase head-mean maps, step -> [layer] -> [B, n]
        # where the trigger ran, per step (host-side sets: no tensor is read to know it)
        self._checked: list[set[int]] = []
        self._amc = StepLog(num_layers)  # per (layer, step): [B] AMC before steering, where computed
        self._fired = StepLog(num_layers)  # per (layer, step): [B, 1, 1] bool
        # the unsteered map (head sum) of a monitored (step, layer) whose AMC the trigger does not need:
        # its AMC is computed after decoding, off the hot path
        self._unsteered = StepLog(num_layers)  # per (layer, step): [B, n]
        self._amc_now = cfg.trigger in ("amc", "amc+mass")
        self._host = None
        self.recorder = None
        self.anchor_info = None  # what anchor_fn returned besides the weights (per row)

    def bind(self, recorder) -> None:
        self.recorder = recorder

    # state ----------------------------------------------------------------------------------------
    def _finalise(self) -> None:
        """Build w (one-pass) and the per-layer references from the anchor phase."""
        phase = [self.phase[t] for t in sorted(self.phase) if all(x is not None for x in self.phase[t])]
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
            a = torch.stack([phase[t][layer] for t in range(len(phase))])  # [T, B, n]
            scores = amc(a, w)  # [T, B]
            for t in range(len(phase)):
                self._amc.put(layer, t, scores[t])
            s_ref.append(scores[list(steps)].mean(0))
            m_ref.append(a[list(steps)].sum(-1).mean(0))
            a_ref.append(a[list(steps)].mean(0))
        self._refs_cpu = References(self._w_cpu, torch.stack([x.cpu() for x in s_ref]),
                                    torch.stack([x.cpu() for x in m_ref]), torch.stack([x.cpu() for x in a_ref]))
        self.ready = True

    def _resolve_layers(self, info) -> None:
        per_row = self._layers(info)
        mask = torch.zeros(self.num_layers, len(per_row), dtype=torch.bool)
        for b, layers in enumerate(per_row):
            mask[list(layers), b] = True
        self._row_mask = mask
        self.monitored = {int(l) for l in mask.any(1).nonzero()[:, 0]}

    def _layer(self, layer: int, device: torch.device, n: int, heads: int) -> dict:
        """The layer's constants on its own device, made at its first monitored step."""
        st = self._state.get(layer)
        if st is None:
            refs = self._refs_cpu
            w = self._w_cpu.to(device)
            s_ref, m_ref, a_ref = (x[layer].to(device) for x in (refs.s_ref, refs.m_ref, refs.a_ref))
            amc_thr, mass_thr = thresholds(self.cfg, s_ref, m_ref, n)
            # a row mask that keeps every row is no mask (read once, on the host, from a CPU tensor)
            rows = None if self._row_mask is None or bool(self._row_mask[layer].all()) else self._row_mask[layer]
            # decisions are [B, 1, 1]: they select whole [B, H, n] rows without a reshape
            # the mass test meets the heads' summed mass (AttentionPoint.head_total): its threshold times H
            st = self._state[layer] = dict(
                w=w, amc_thr=amc_thr.view(-1, 1, 1), mass_thr=(mass_thr * heads).view(-1, 1, 1),
                ones=torch.ones(w.shape[0], 1, 1, dtype=torch.bool, device=device),  # trigger "always"; never written
                op=LayerState(self.cfg, w.expand_as(a_ref), m_ref, a_ref, heads),
                mask=None if rows is None else rows.to(device).view(-1, 1, 1),
                # every row fires by construction: no row to select back
                every=self.cfg.trigger == "always" and rows is None,
                # on a CPU a decision is read for free (no device to wait for): a single row that did not
                # fire skips the operator, one that did skips the select
                host=device.type == "cpu")
        return st

    def needs(self, layer: int, step: int) -> bool:
        """Whether the hook point of (layer, step) is read: the anchor phase everywhere, then only the
        monitored layers (the recorder's lean mode leaves the others to plain SDPA)."""
        return step < self.start or not self.ready or layer in self.monitored

    # the hook ---------------------------------------------------------------------------------------
    def intervene(self, point: AttentionPoint):
        layer, step = point.layer, point.step
        self._host = None
        if step < self.start:
            self.phase.setdefault(step, [None] * self.num_layers)[layer] = point.attn  # unsteered [B, n]
            return None
        if not self.ready:
            self._shape = (point.probs.shape[0], point.probs.shape[-1])
            self._finalise()
        if layer not in self.monitored or not self.cfg.enabled:
            # nothing steers this layer, so the map the recorder keeps is the unsteered one: its AMC is
            # computed after decoding, off the hot path
            return None
        checked = self._checked
        while len(checked) <= step:
            checked.append(set())
        checked[step].add(layer)
        probs = point.probs
        st = self._state.get(layer) or self._layer(layer, probs.device, probs.shape[-1], probs.shape[1])
        score = None
        if self._amc_now:
            score = amc_of(point.attn, st["w"], point.mass)
            self._amc.put(layer, step, score)
            score = score.view(-1, 1, 1)
        else:  # the unsteered map kept (AMC is blind to scale: the head sum serves), its AMC computed after decoding
            self._unsteered.layers[layer][step] = point.head_sum
        fired = fire_rows(self.cfg, score, point.head_total, st["amc_thr"], st["mass_thr"], st["ones"])
        if st["mask"] is not None:
            fired = fired & st["mask"]
        self._fired.layers[layer][step] = fired
        every = st["every"]
        if st["host"] and not every and fired.numel() == 1:
            if not bool(fired):  # unsteered: the same output and map as a write of the row's own values
                return None
            every = True
        op = st["op"]
        return apply_operator(self.cfg, point, st["w"], fired, op.m_ref, op.a_ref, state=op, every=every)

    def observe(self, point: AttentionPoint) -> None:
        """A hook point the key map keeps from steering (a sliding window that lost part of the image): its
        unsteered map still belongs to the anchor phase, as the two-pass anchor run captures it."""
        if point.step < self.start:
            self.phase.setdefault(point.step, [None] * self.num_layers)[point.layer] = point.attn

    def __call__(self, layer: int, step: int, attn: torch.Tensor) -> torch.Tensor | None:
        """The bias-callable form (one head): for policies driven by hand, e.g. in tests. Returns the
        bias where the trigger fired (``None`` where no row did: read on the host, off the hot path)."""
        edit = self.intervene(AttentionPoint(layer, step, torch.log(attn.clamp_min(1e-30))[:, None], attn[:, None]))
        if edit is None:
            return None
        if not isinstance(edit, LogitBias):
            raise TypeError(f"operator {self.cfg.operator!r} writes probabilities; use it through the recorder")
        fired = self._fired.layers[layer][step]
        return edit.bias.view(attn.shape[0], -1) if bool(fired.any()) else None

    # results (after decoding: one copy of each log to the host) -------------------------------------
    def _logs(self) -> tuple[np.ndarray, np.ndarray]:
        """``amc [T, L, B]`` (NaN where nothing computed it) and ``fired [T, L, B]`` bool, on the host."""
        if self._host is not None:
            return self._host
        self.references()
        rec = self.recorder
        T = max(len(self._checked), max(self.phase, default=-1) + 1, rec.num_steps if rec is not None else 0)
        written = [next(iter(d.values())) for d in self._amc.layers + self._fired.layers if d]
        B = written[0].numel() if written else (self._w_cpu.shape[0] if self._w_cpu is not None else 1)
        amc_m = np.full((T, self.num_layers, B), np.nan)
        fired = self._fired_log(T, B)
        w = self._w_cpu
        for layer in range(self.num_layers):
            steps, host = self._amc.host(layer, T)
            if steps:
                amc_m[steps, layer] = host.numpy().reshape(len(steps), -1)
            steps, maps = self._unsteered.host(layer, T)
            if steps:  # monitored maps whose AMC was left for after decoding
                amc_m[steps, layer] = amc(maps, w).numpy()
        full = rec._complete() if rec is not None and rec.num_steps and w is not None else []
        if full:  # layers nothing steered: the recorder kept their unsteered maps
            maps = rec.maps()  # [T', L, B, n] (or per head)
            vals = amc(maps.mean(-2) if maps.ndim == 5 else maps, w).numpy()  # [T', L, B]
            for i, t in enumerate(full):
                missing = np.isnan(amc_m[t])
                amc_m[t][missing] = vals[i][missing]
        self._host = (amc_m, fired)
        return self._host

    def references(self) -> References | None:
        """The anchor phase's references (built now if decoding stopped before step K)."""
        complete = [t for t, s in self.phase.items() if all(x is not None for x in s)]
        if not self.ready and complete:
            self._shape = tuple(self.phase[complete[0]][0].shape)
            self._finalise()
        return self._refs_cpu

    @property
    def weights(self) -> np.ndarray | None:
        return None if self._w_cpu is None else self._w_cpu.numpy()

    def amc_matrix(self, row: int = 0) -> np.ndarray:
        """[steps, layers] AMC of one batch row (before steering)."""
        return self._logs()[0][:, :, row].astype(np.float64)

    def fired_matrix(self, row: int = 0) -> np.ndarray:
        """[steps, layers] bool: where the operator was applied to one row."""
        return self._logs()[1][:, :, row]

    def _fired_log(self, T: int, B: int) -> np.ndarray:
        """``fired [T, L, B]`` bool on the host: the decisions alone (no AMC is computed for them)."""
        fired = np.zeros((T, self.num_layers, B), dtype=bool)
        for layer in range(self.num_layers):
            steps, host = self._fired.host(layer, T)
            if steps:
                fired[steps, layer] = host.numpy().reshape(len(steps), -1)
        return fired

    def fire_counts(self, lengths: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Per row: steered and monitored (step, layer) pairs within the row's own ``lengths[b]`` steps."""
        T, B = len(self._checked), len(lengths)
        if self._host is not None:
            fired_all = self._host[1]
        elif any(self._fired.layers):
            fired_all = self._fired_log(T, B)
        else:  # nothing was monitored (it may still build the anchor, when decoding stopped before step K)
            fired_all = self._logs()[1]
        checked = np.zeros((T, self.num_layers), dtype=bool)
        for t, layers in enumerate(self._checked):
            checked[t, list(layers)] = True
        mon = checked[:, :, None] & (np.arange(T)[:, None] < np.asarray(lengths)[None, :])[:, None, :]  # [T, L, B]
        if self._row_mask is not None:
            mon &= self._row_mask.numpy()[None]
        return (mon & fired_all[:T, :, :B]).sum((0, 1)), mon.sum((0, 1))

    def thresholds(self, row: int = 0) -> np.ndarray:
        """Per layer, the AMC threshold of one row (NaN where the trigger does not use AMC)."""
        refs = self.references()
        if self.cfg.trigger not in ("amc", "amc+mass") or refs is None:
            return np.full(self.num_layers, np.nan)
        if self.cfg.mode == "absolute":
            return np.full(self.num_layers, self.cfg.tau / refs.weights.shape[-1])
        return (self.cfg.tau * refs.s_ref[:, row]).numpy().astype(np.float64)
