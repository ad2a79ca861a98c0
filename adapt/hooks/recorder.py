"""One recorder: the newest row's image attention of every (step, layer), in preallocated buffers.

Steps are explicit: a call whose query has more than one row is the prefill (step 0: its last row
predicts the first generated token); a single-row call is step ``keys − prefill keys``, read from the
cache length the layer sees. So the step does not depend on which layer runs first (a lean recorder
may skip layer 0) and nothing is counted per call, except in sliding-window layers, whose cache stops
growing at the window: there each layer counts its own decoding calls.

Where the image keys are in each layer's keys is the key map's answer (:mod:`adapt.hooks.keymap`): the
positions in full-attention layers, shifted (or out of reach: captured, never steered) in sliding-window
layers; linear-attention layers never reach the recorder, and the maps' layer axis holds the captured
layers only (``keymap.captured``).

The buffers (:class:`StepBuffer`) live on each layer's own device (``device_map`` over several
GPUs), grow by doubling when decoding runs past them, and meet on the host once, when the results
are read after decoding.
"""

from __future__ import annotations

import contextvars

import torch

from .kernels import apply_mask, causal_rows, decode_row, grouped_logits, row_logits
from .keymap import KeyMap
from .layout import ImageSpan
from .writes import HOOK_LOGITS, HOOK_PROBS, HOOKS, AttentionPoint, LogitBias, correct_output, resolve

_ACTIVE: contextvars.ContextVar["AttentionRecorder | None"] = contextvars.ContextVar(
    "adapt_active_recorder", default=None
)


class StepBuffer:
    """Per layer, a ``[steps, *shape]`` tensor on that layer's device, written in place at an explicit
    step; :meth:`gather` stacks the steps asked for into one ``[T, L, *shape]`` CPU tensor."""

    def __init__(self, num_layers: int, capacity: int, fill=0.0):
        self.num_layers, self.capacity, self.fill = num_layers, max(1, capacity), fill
        self.layers: list[torch.Tensor | None] = [None] * num_layers

    def slot(self, layer: int, step: int, like: torch.Tensor, dtype=torch.float32, drop: int = 0) -> torch.Tensor:
        """The slot of (layer, step), placed like ``like`` and shaped like it without dimension ``drop``
        (0: none; 1: the heads of a ``[B, H, n]`` map kept as its head mean)."""
        buf = self.layers[layer]
        if buf is None:
            shape = tuple(s for i, s in enumerate(like.shape) if not drop or i != drop)
            buf = self.layers[layer] = torch.full((max(self.capacity, step + 1), *shape), self.fill,
                                                  dtype=dtype, device=like.device)
        elif step >= buf.shape[0]:  # decoding ran past the buffer: double it (rare, amortised)
            more = torch.full((max(buf.shape[0], step + 1 - buf.shape[0]), *buf.shape[1:]), self.fill,
                              dtype=buf.dtype, device=buf.device)
            buf = self.layers[layer] = torch.cat([buf, more])
        return buf[step]

    def gather(self, steps: list[int]) -> torch.Tensor:
        """``[len(steps), L, *shape]`` on the CPU (the layers' buffers stacked per device, one copy each)."""
        bufs = self.layers
        if any(b is None for b in bufs):
            raise RuntimeError("a layer was never written")
        idx = torch.tensor(steps, dtype=torch.long)
        by_device: dict[torch.device, list[int]] = {}
        for layer, b in enumerate(bufs):
            by_device.setdefault(b.device, []).append(layer)
        parts, pending = {}, []
        for dev, layers in by_device.items():
            stacked = torch.stack([bufs[l].index_select(0, idx.to(dev)) for l in layers], 1)
            if dev.type == "cuda":  # into pinned memory without blocking; one wait per device below
                host = torch.empty(stacked.shape, dtype=stacked.dtype, pin_memory=True)
                host.copy_(stacked, non_blocking=True)
                pending.append(dev)
            else:
                host = stacked.to("cpu")
            parts.update(zip(layers, host.unbind(1)))
        for dev in pending:
            torch.cuda.synchronize(dev)
        return torch.stack([parts[l] for l in range(self.num_layers)], 1)


class AttentionRecorder:
    """Context manager that captures (and optionally steers) image attention of new tokens.

    ``policy`` is either an :class:`~adapt.hooks.writes.Intervention` (reads both hook points, writes a
    :class:`~adapt.hooks.writes.LogitBias` or :class:`~adapt.hooks.writes.ImageProbs`) or a plain
    :class:`~adapt.hooks.writes.SteeringPolicy` callable. ``cache`` names the hook points kept per
    (hook, layer, step); :data:`HOOK_PROBS` (what each token's query actually used, after any write) is
    always kept, head-mean unless ``per_head``. After generation, :meth:`maps` returns
    ``[steps, layers, B, n_img]`` (``[..., B, H, n_img]`` per head) on the CPU; :meth:`cached` returns the
    other hook points. ``prefill_text_maps`` holds, per layer, the mean attention of the prompt tokens
    after the image over the image keys (``capture_prefill=True``). ``max_steps`` sizes the buffers
    (they grow if decoding runs longer).

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
        self._maps = StepBuffer(num_layers, max_steps + 1)
        self._logits = StepBuffer(num_layers, max_steps + 1) if self.cache_logits else None
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
        if self.cache_logits:
            self._logits.slot(layer, step, img).copy_(point.logits)
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
            r, img = resolve(edit, point)
            o = correct_output(o, value, span, point.probs, r, img)
        if self.per_head:
            self._maps.slot(layer, step, img).copy_(img)
        elif edit is None:  # the unsteered head mean, shared with the policy if it took it
            point.attn_into(self._maps.slot(layer, step, img, drop=1))
        else:
            torch.mean(img, 1, out=self._maps.slot(layer, step, img, drop=1))
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
