"""One recorder: the newest row's image attention of every (step, layer), logged where it was made.

Steps are explicit: a call whose query has more than one row is the prefill (step 0: its last row
predicts the first generated token); a single-row call is step ``keys − prefill keys``, read from the
cache length the layer sees. So the step does not depend on which layer runs first (a lean recorder
may skip layer 0) and nothing is counted per call, except in sliding-window layers, whose cache stops
growing at the window: there each layer counts its own decoding calls.

Where the image keys are in each layer's keys is the key map's answer (:mod:`adapt.hooks.keymap`): the
positions in full-attention layers, shifted (or out of reach: captured, never steered) in sliding-window
layers; linear-attention layers never reach the recorder, and the maps' layer axis holds the captured
layers only (``keymap.captured``).

Each (layer, step)'s map is its own small tensor (:class:`StepLog`) on the layer's own device
(``device_map`` over several GPUs); they meet on the host once, when the results are read after
decoding.
"""

from __future__ import annotations

import contextvars

import torch

from .kernels import apply_mask, causal_rows, decode_row, grouped_logits, row_logits
from .keymap import KeyMap
from .layout import ImageSpan
from .writes import HOOK_LOGITS, HOOK_PROBS, HOOKS, AttentionPoint, LogitBias, write_row

_ACTIVE: contextvars.ContextVar["AttentionRecorder | None"] = contextvars.ContextVar(
    "adapt_active_recorder", default=None
)


class StepLog:
    """Per layer, the small tensor each (layer, step) made (a map, a decision), kept where it was made (the
    layer's device) and stacked on the host once, after decoding. Nothing is preallocated: writing each
    into a slot of a ``[T, ...]`` buffer instead costs a select and an ``out=`` write per call, on a CPU
    more than the op itself; on a GPU neither syncs with the host."""

    def __init__(self, num_layers: int):
        self.layers: list[dict[int, torch.Tensor]] = [{} for _ in range(num_layers)]

    def put(self, layer: int, step: int, t: torch.Tensor) -> None:
        self.layers[layer][step] = t

    def device(self, layer: int) -> torch.device | None:
        d = self.layers[layer]
        return next(iter(d.values())).device if d else None

    def host(self, layer: int, steps: int) -> tuple[list[int], torch.Tensor | None]:
        """The steps below ``steps`` that ``layer`` logged, and their tensors stacked on the CPU (one copy)."""
        d = self.layers[layer]
        kept = sorted(t for t in d if t < steps)
        return kept, (torch.stack([d[t] for t in kept]).cpu() if kept else None)

    def gather(self, steps: list[int]) -> torch.Tensor:
        """``[len(steps), L, *shape]`` on the CPU: the layers' tensors stacked per device (one copy each;
        on CUDA into pinned memory without blocking, one wait per device)."""
        if any(t not in d for d in self.layers for t in steps):
            raise RuntimeError("a layer was not written at every step asked for")
        by_device: dict[torch.device, list[int]] = {}
        for layer in range(len(self.layers)):
            by_device.setdefault(self.device(layer), []).append(layer)
        parts, pending = {}, []
        for dev, layers in by_device.items():
            stacked = torch.stack([self.layers[l][t] for l in layers for t in steps])
            stacked = stacked.view(len(layers), len(steps), *stacked.shape[1:])
            if dev is not None and dev.type == "cuda":
                host = torch.empty(stacked.shape, dtype=stacked.dtype, pin_memory=True)
                host.copy_(stacked, non_blocking=True)
                pending.append(dev)
            else:
                host = stacked.to("cpu")
            parts.update(zip(layers, host.unbind(0)))
        for dev in pending:
            torch.cuda.synchronize(dev)
        return torch.stack([parts[l] for l in range(len(self.layers))], 1)


class AttentionRecorder:
    """Context manager that captures (and optionally steers) image attention of new tokens.

    ``policy`` is either an :class:`~adapt.hooks.writes.Intervention` (reads both hook points, writes a
    :class:`~adapt.hooks.writes.LogitBias` or :class:`~adapt.hooks.writes.ImageProbs`) or a plain
    :class:`~adapt.hooks.writes.SteeringPolicy` callable. ``cache`` names the hook points kept per
    (hook, layer, step); :data:`HOOK_PROBS` (what each token's query actually used, after any write) is
    always kept, head-mean unless ``per_head``. After generation, :meth:`maps` returns
    ``[steps, layers, B, n_img]`` (``[..., B, H, n_img]`` per head) on the CPU; :meth:`cached` returns the
    other hook points. ``prefill_text_maps`` holds, per layer, the mean attention of the prompt tokens
    after the image over the image keys (``capture_prefill=True``). ``max_steps`` (the decoding's length)
    is accepted for callers that know it; nothing is sized by it.

    ``keymap`` (default: ``num_layers`` full-attention layers) says each decoder layer's kind; then
    ``num_layers`` is the number of captured layers, and "layer" everywhere downstream (maps, the
    policy's ``layer``, ``prefill_text_maps``) is the captured layer's row, ``keymap.slot[layer]``.
    :meth:`keys_report` says which layers were not captured and from which step a sliding layer was
    not steerable.
    """

    def __init__(self, span: ImageSpan, num_layers: int, policy=None, per_head: bool = False,
                 capture_prefill: bool = False, cache: tuple[str, ...] = (), lean: bool = False,
                 max_steps: int = 64, keymap: KeyMap | None = None):
        unknown = set(cache) - set(HOOKS)
        if unknown:
            raise ValueError(f"unknown hook point(s) {sorted(unknown)}; available: {', '.join(HOOKS)}")
        keymap = keymap or KeyMap.full(num_layers)
        if len(keymap.captured) != num_layers:
            raise ValueError(f"the key map captures {len(keymap.captured)} layers, not {num_layers}")
        self.span = span
        self.num_layers = num_layers
        self.keys = keymap.bind(span)
        slots = keymap.slot
        self.slot_of = tuple(slots.get(i) for i in range(len(keymap.kinds)))  # decoder layer → maps row
        self._counted = self.keys.counted
        self._calls = [0] * len(keymap.kinds)  # sliding and cross layers' decoding calls
        self.policy = policy
        self._intervene = getattr(policy, "intervene", None)
        self._observe = getattr(policy, "observe", None)  # a point the key map keeps from steering
        # lean: a (layer, step) the intervention says it does not read (``needs(layer, step)``) runs as
        # plain SDPA and is not captured; maps() then holds the steps every layer was captured at
        self.lean = getattr(policy, "needs", None) if lean else None
        self.per_head = per_head
        self.capture_prefill = capture_prefill
        self.cache_logits = HOOK_LOGITS in cache
        self._maps = StepLog(num_layers)
        self._logits = StepLog(num_layers) if self.cache_logits else None
        self._written: list[int] = []  # per step: how many layers were captured (host-side counts)
        self._prefill_keys: int | None = None
        self.prefill_text_maps: list[torch.Tensor | None] = [None] * num_layers
        self._token: contextvars.Token | None = None

    # context management -------------------------------------------------------------------
    def __enter__(self) -> "AttentionRecorder":
        if _ACTIVE.get() is not None:
            raise RuntimeError("another AttentionRecorder is already active")
        self._token = _ACTIVE.set(self)
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE.reset(self._token)
        self._token = None

    # steps ---------------------------------------------------------------------------------
    def step_of(self, q_len: int, kv_len: int, layer: int | None = None) -> int:
        """The decoding step of a call to decoder ``layer``: the prefill is step 0, then one step per
        new key (a sliding-window layer, whose cache stops growing, counts its calls)."""
        if q_len > 1 or self._prefill_keys is None:
            self._prefill_keys = kv_len
            if layer is not None:
                self._calls[layer] = 0
            return 0
        if layer is not None and self._counted[layer]:
            self._calls[layer] += 1
            return self._calls[layer]
        return kv_len - self._prefill_keys

    @property
    def num_steps(self) -> int:
        return len(self._written)

    def _complete(self) -> list[int]:
        return [t for t, n in enumerate(self._written) if n == self.num_layers]

    # results -------------------------------------------------------------------------------
    def maps(self) -> torch.Tensor:
        """``[steps, layers, B, n_img]`` float32 on the CPU (``[steps, layers, B, H, n_img]`` per head):
        the steps at which every layer was captured. With ``device_map`` over several GPUs the layers'
        buffers live on different devices: they meet on the host only here, after decoding."""
        if not self._written:
            raise RuntimeError("nothing was captured: run a forward pass inside the recorder")
        return self._maps.gather(self._complete())

    def cached(self, hook: str) -> torch.Tensor:
        """A cached hook point, ``[steps, layers, B, H, n_img]`` float32 on the CPU."""
        if hook == HOOK_PROBS:
            return self.maps()
        if hook == HOOK_LOGITS and self.cache_logits:
            return self._logits.gather(self._complete())
        raise KeyError(f"hook point {hook!r} was not cached (pass cache=({hook!r},))")

    def skips(self, layer: int, step: int) -> bool:
        """Whether (captured layer, step) runs as plain SDPA, uncaptured (lean mode)."""
        return self.lean is not None and not self.lean(layer, step)

    def keys_report(self) -> dict:
        """Per layer kind: which decoder layers were captured (maps rows in this order), which were not
        (linear attention), and per sliding layer the first step it was not steerable."""
        return self.keys.report()

    # the hot path ----------------------------------------------------------------------------
    def last_row(self, layer: int, step: int, query, key, value, mask, scaling, out: torch.Tensor | None = None):
        """Hook points, capture and steering of the newest query row; returns its output.

        A decoding step (``out`` None) computes the row here in one pass over K and V and returns
        ``[B, 1, H, D]``; a prefill passes its last row's unsteered output from SDPA (``out``
        ``[B, H, D]``) and gets it back, or the steered one, corrected on the image keys alone.
        ``layer`` is the decoder layer; a layer-step the key map says is out of reach is captured and
        never offered to the policy."""
        span, steer = self.keys.at(layer, step, key.shape[2], self._prefill_keys)
        layer = self.slot_of[layer]
        b, h = query.shape[:2]
        if out is None:  # grouped layout [B·Hkv, H/Hkv, ·]
            logits, probs, o = decode_row(query, key, value, mask, scaling)
            shape = (b, 1, h, value.shape[-1])
        else:
            logits = row_logits(query, key, mask, scaling)
            probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
            o, shape = out, out.shape
        img = span.image_cols(probs.view(b, h, -1))  # [B, H, n] float32
        if steer or span is self.span:
            point = AttentionPoint(layer, step, lambda: span.image_cols(logits.view(b, h, -1)).float(), img)
        else:  # keys the window dropped read as masked, as a prefill's mask shows them
            point = AttentionPoint(layer, step, lambda: span.image_cols(logits.view(b, h, -1), fill=-torch.inf)
                                   .float(), img)
        if self.cache_logits:  # a view of this call's logits: copied, so they are not kept alive
            self._logits.put(layer, step, point.logits.clone())
        if not steer:
            edit = None
            if self._observe is not None:  # the anchor phase still reads a map it may not write
                self._observe(point)
        elif self._intervene is not None:
            edit = self._intervene(point)
        elif self.policy is not None:
            bias = self.policy(layer, step, point.attn)
            edit = None if bias is None else LogitBias(bias)
        else:
            edit = None
        if edit is not None:
            o, kept = write_row(edit, point, o, value, span, self.per_head)
        elif self.per_head:  # a view of this call's probabilities: copied
            kept = img.clone()
        else:  # the unsteered head mean, shared with the policy if it took it
            kept = point.attn
        self._maps.put(layer, step, kept)
        while len(self._written) <= step:
            self._written.append(0)
        self._written[step] += 1
        return o.view(shape)

    def prefill_text(self, layer: int, query, key, mask, scaling) -> None:
        """Mean attention of the prompt rows after the last image token over the image keys.

        Each batch row averages its own rows: under left padding a longer question ends its image
        earlier, so the rows after the *latest* image end would drop its first question tokens. A
        prefill sees every prompt key in every layer kind (a sliding layer's mask hides the far ones)."""
        layer = self.slot_of[layer]
        q_len, kv_len = query.shape[2], key.shape[2]
        # [B], one past each row's last image token in the sequence (a cross-attention layout's positions
        # are key columns of the vision states; its image token sits in the text: ``text_positions``)
        ends = getattr(self.span, "text_positions", self.span.positions)[:, -1].to(query.device) + 1
        start = int(ends.min())
        if start >= q_len:
            return
        rows = slice(start, q_len)
        logits = apply_mask(grouped_logits(query[:, :, rows, :], key) * scaling,
                            causal_rows(mask, rows, q_len, kv_len, query.device))
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        per_row = self.span.image_cols(probs).mean(dim=1)  # [B, rows, n]
        keep = (torch.arange(start, q_len, device=query.device)[None, :] >= ends[:, None]).float()  # [B, rows]
        self.prefill_text_maps[layer] = (per_row * keep[..., None]).sum(1) / keep.sum(1).clamp_min(1)[:, None]
