"""Capture and steer text-to-image attention through transformers' attention extension point.

One attention function, registered under the name :data:`ATTN_IMPL` with
``transformers.AttentionInterface`` (and the eager float-mask builder beside it with
``AttentionMaskInterface``: without that registration the model would silently pass no causal
mask). The decoder is switched to it with ``attn_implementation={"text_config": ATTN_IMPL}``;
the vision tower keeps its stock attention. No model source is patched.

While no :class:`AttentionRecorder` is active the function is plain SDPA. Inside
``with recorder:`` it additionally, for every decoder layer and every decoding step:

* computes the post-softmax attention of the newest query token over the image keys (the
  prefill's last row is step 0: it is the query that predicts the first generated token),
  averaged over heads (or per head), and keeps it as a small ``[B, n_img]`` tensor;
* offers an intervention the two named hook points of that row (:data:`HOOK_LOGITS`, the
  image-key logits before the softmax, and :data:`HOOK_PROBS`, the probabilities after it, per
  head) and applies what it writes back: an additive logit bias (:class:`LogitBias`, then the
  softmax runs again over all keys) or new image probabilities with an explicit image mass
  (:class:`ImageProbs`, the other keys rescaled so the row sums to one); the layer's output for
  that token is computed from the edited weights. The readings of Eq. 11 built on these are in
  :mod:`adapt.steering.operators`.

A third hook point, :data:`HOOK_TEXT_WINDOW`, reads attention among the *text*: inside
``with TextWindowCapture(window, layers):`` the newest query row's probabilities over its last
``window`` keys are kept for the chosen layers (one ``[B, window]`` row per layer, replaced at every
forward pass: memory O(B · window · layers) whatever the length of the decoding). OPERA's
over-trust penalty reads it. It only reads: the layer's output is unchanged.

Everything stays on the device; the policy gets tensors and returns tensors, so nothing on
the hot path forces a host sync.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Protocol

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask

ATTN_IMPL = "adapt"

_ACTIVE: contextvars.ContextVar["AttentionRecorder | None"] = contextvars.ContextVar(
    "adapt_active_recorder", default=None
)
_WINDOW: contextvars.ContextVar["TextWindowCapture | None"] = contextvars.ContextVar(
    "adapt_active_text_window", default=None
)


class SteeringPolicy(Protocol):
    """The simple form of an intervention: an additive bias on the image-key logits (all heads)."""

    def __call__(self, layer: int, step: int, attn: torch.Tensor) -> torch.Tensor | None:
        """``attn``: ``[B, n_img]`` float32 head-mean attention over the image keys (unsteered).

        Return ``None`` (no change) or an additive float bias ``[B, n_img]``; rows that must
        not be steered carry zeros. The policy records its own decisions.
        """


# Named hook points (TransformerLens style): what the recorder can cache by (hook, layer, step) and
# what an intervention reads. Both are the newest query row only, per head, image keys only.
HOOK_LOGITS = "attn.image_logits"  # before the softmax: scaled q·k (+ mask) at the image keys, [B, H, n]
HOOK_PROBS = "attn.image_probs"  # after it: probabilities over *all* keys, image columns, [B, H, n]
HOOKS = (HOOK_LOGITS, HOOK_PROBS)
# the newest row's probabilities over its last `window` keys (any keys: the generated text's, for
# OPERA), reduced over heads, at chosen layers; kept by TextWindowCapture, not by the recorder
HOOK_TEXT_WINDOW = "attn.text_window"


@dataclass
class AttentionPoint:
    """What an intervention sees at one (layer, step): both hook points, unsteered.

    ``logits`` and ``probs`` are ``[B, H, n_img]`` float32 on the layer's own device."""

    layer: int
    step: int
    logits: torch.Tensor
    probs: torch.Tensor

    @property
    def attn(self) -> torch.Tensor:
        """Head-mean image attention ``[B, n_img]`` (the quantity AMC and the anchor use)."""
        return self.probs.mean(1)

    @property
    def mass(self) -> torch.Tensor:
        """Head-mean total attention on the image keys, ``[B]``."""
        return self.probs.sum(-1).mean(1)


@dataclass
class LogitBias:
    """Write before the softmax: add ``bias`` (``[B, n]`` shared by heads, or ``[B, H, n]``) to the
    image-key logits, then softmax over all keys again (the image mass moves with it)."""

    bias: torch.Tensor


@dataclass
class ImageProbs:
    """Write after the softmax: the image keys get ``probs`` (``[B, n]`` for every head or
    ``[B, H, n]``), whose sum is the new image mass; the other keys keep their proportions and are
    rescaled so the row sums to one. Rows meant to stay as they were carry their old probabilities."""

    probs: torch.Tensor


class Intervention(Protocol):
    """Reads both hook points of the newest row and may write one of them."""

    def intervene(self, point: AttentionPoint) -> LogitBias | ImageProbs | None:
        ...


@dataclass(frozen=True)
class ImageSpan:
    """Where the image tokens sit in the (padded) sequence, and their 2-D grid (row-major)."""

    positions: torch.Tensor  # [B, n_img] long, key positions of the image tokens per row
    grid: tuple[int, int]  # (rows, cols), rows * cols == n_img

    def __post_init__(self):
        if self.positions.ndim != 2:
            raise ValueError("ImageSpan.positions must be [batch, n_image_tokens]")
        h, w = self.grid
        if h * w != self.positions.shape[1]:
            raise ValueError(f"grid {h}x{w} does not match {self.positions.shape[1]} image tokens")

    @property
    def n(self) -> int:
        return self.positions.shape[1]

    def contiguous_slice(self) -> slice | None:
        """A single slice when every row has one contiguous run at the same offset."""
        p = self.positions
        start = int(p[0, 0])
        expected = torch.arange(start, start + p.shape[1], device=p.device)
        if bool((p == expected).all()):
            return slice(start, start + p.shape[1])
        return None


class AttentionRecorder:
    """Context manager that captures (and optionally steers) image attention of new tokens.

    ``policy`` is either an :class:`Intervention` (reads both hook points, writes a
    :class:`LogitBias` or :class:`ImageProbs`) or a plain :class:`SteeringPolicy` callable.
    ``cache`` names the hook points kept per (hook, layer, step); :data:`HOOK_PROBS` (what each
    token's query actually used, after any write) is always kept, head-mean unless ``per_head``.
    After generation, :meth:`maps` returns ``[steps, layers, B, n_img]`` (``[..., B, H, n_img]``
    per head) on the CPU; :meth:`cached` returns the other hook points.
    ``prefill_text_maps`` holds, per layer, the mean attention of the prompt tokens after the
    image over the image keys (``capture_prefill=True``).
    """

    def __init__(
        self,
        span: ImageSpan,
        num_layers: int,
        policy: "Intervention | SteeringPolicy | None" = None,
        per_head: bool = False,
        capture_prefill: bool = False,
        cache: tuple[str, ...] = (),
        lean: bool = False,
    ):
        unknown = set(cache) - set(HOOKS)
        if unknown:
            raise ValueError(f"unknown hook point(s) {sorted(unknown)}; available: {', '.join(HOOKS)}")
        self.span = span
        self.num_layers = num_layers
        self.policy = policy
        self._intervene = getattr(policy, "intervene", None)
        # lean: a (layer, step) the intervention says it does not read (``needs(layer, step)``) runs as
        # plain SDPA and is not captured; maps() then holds the steps every layer was captured at
        self._needs = getattr(policy, "needs", None) if lean else None
        self._step = -1
        self.per_head = per_head
        self.capture_prefill = capture_prefill
        self.cache_logits = HOOK_LOGITS in cache
        self._slice = span.contiguous_slice()
        self._gather_idx = span.positions[:, None, None, :]  # [B,1,1,n]
        self._idx_by_device: dict[torch.device, torch.Tensor] = {}
        self.steps: list[list[torch.Tensor]] = []
        self.logit_steps: list[list[torch.Tensor]] = []
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

    # results -------------------------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        return len(self.steps)

    def maps(self) -> torch.Tensor:
        """``[steps, layers, B, n_img]`` float32 on the CPU (``[steps, layers, B, H, n_img]`` per head).

        With ``device_map`` over several GPUs the layers' tensors live on different devices: they
        meet on the host only here, after decoding."""
        return self._stack(self.steps)

    def cached(self, hook: str) -> torch.Tensor:
        """A cached hook point, ``[steps, layers, B, H, n_img]`` float32 on the CPU."""
        if hook == HOOK_PROBS:
            return self.maps()
        if hook == HOOK_LOGITS and self.cache_logits:
            return self._stack(self.logit_steps)
        raise KeyError(f"hook point {hook!r} was not cached (pass cache=({hook!r},))")

    def open_step(self) -> None:
        """Called at layer 0 of every forward pass: layers run in order, so layer 0 opens a step."""
        self._step += 1
        self.steps.append([None] * self.num_layers)
        if self.cache_logits:
            self.logit_steps.append([None] * self.num_layers)

    def skips(self, layer: int) -> bool:
        return self._needs is not None and not self._needs(layer, self._step)

    def _stack(self, steps) -> torch.Tensor:
        if not steps:
            raise RuntimeError("nothing was captured: run a forward pass inside the recorder")
        complete = [s for s in steps if all(t is not None for t in s)]
        return torch.stack([torch.stack([t.to("cpu") for t in s]) for s in complete]).float()

    # hot path helpers ----------------------------------------------------------------------
    def _index(self, device: torch.device) -> torch.Tensor:
        idx = self._idx_by_device.get(device)
        if idx is None:  # one copy per device, made once: layers may sit on different GPUs
            idx = self._idx_by_device[device] = self._gather_idx.to(device)
        return idx

    def _image_cols(self, x: torch.Tensor) -> torch.Tensor:
        """Image-key columns of ``x[B, H, q, kv]``."""
        if self._slice is not None:
            return x[..., self._slice]
        idx = self._index(x.device).expand(x.shape[0], x.shape[1], x.shape[2], -1)
        return x.gather(-1, idx)

    def _add_to_image_cols(self, logits: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        bias = (bias[:, None, None, :] if bias.ndim == 2 else bias[:, :, None, :]).to(logits.dtype)
        if self._slice is not None:
            logits[..., self._slice] += bias
            return logits
        idx = self._index(logits.device).expand(logits.shape[0], logits.shape[1], 1, -1)
        return logits.scatter_add(-1, idx, bias.expand_as(idx).contiguous())

    def _set_image_probs(self, probs: torch.Tensor, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """``probs[B, H, 1, kv]`` with the image columns (``old[B, H, n]``) replaced by ``new``
        (``[B, n]`` or ``[B, H, n]``) and the other keys rescaled by (1 − new mass) / (1 − old mass),
        so each row still sums to one."""
        new = (new[:, None, :] if new.ndim == 2 else new).to(probs.dtype).expand_as(old)
        new = new / new.sum(-1, keepdim=True).clamp_min(1.0)  # an image mass above one is capped at one
        rest = (1 - new.sum(-1)).clamp_min(0) / (1 - old.sum(-1)).clamp_min(1e-12)  # [B, H]
        out = probs * rest[:, :, None, None]
        if self._slice is not None:
            out[..., self._slice] = new[:, :, None, :]
            return out
        idx = self._index(out.device).expand(out.shape[0], out.shape[1], 1, -1)
        return out.scatter(-1, idx, new[:, :, None, :].contiguous())

    def last_row(self, module, query, key, value, attention_mask, scaling):
        """Explicit attention of the newest query row: hook points, capture, steer, return its output.

        ``key``/``value`` are the un-repeated KV heads: with grouped-query attention the query
        heads of one KV head are stacked as rows of one matmul instead of copying K and V."""
        layer = module.layer_idx
        step = self._step
        logits = _grouped_logits(query[:, :, -1:, :], key) * scaling  # [B, H, 1, kv]
        if attention_mask is not None:
            logits = logits + attention_mask[:, :, -1:, : key.shape[-2]]
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        img = self._image_cols(probs)[:, :, 0, :]  # [B, H, n]
        img_logits = None
        if self.cache_logits or self._intervene is not None:
            img_logits = self._image_cols(logits)[:, :, 0, :].float()
        if self.cache_logits:
            self.logit_steps[step][layer] = img_logits
        edit = None
        if self._intervene is not None:
            edit = self._intervene(AttentionPoint(layer, step, img_logits, img))
        elif self.policy is not None:
            bias = self.policy(layer, step, img.mean(1))
            edit = None if bias is None else LogitBias(bias)
        if isinstance(edit, LogitBias):
            # fp32 so a large negative bias stays finite in half precision
            steered = self._add_to_image_cols(logits.float(), edit.bias.float())
            probs = torch.softmax(steered, dim=-1)
            img = self._image_cols(probs)[:, :, 0, :]
        elif isinstance(edit, ImageProbs):
            probs = self._set_image_probs(probs, img, edit.probs.float())
            img = self._image_cols(probs)[:, :, 0, :]
        elif edit is not None:
            raise TypeError(f"an intervention returned {type(edit).__name__}; expected LogitBias, ImageProbs or None")
        self.steps[step][layer] = img if self.per_head else img.mean(1)
        return _grouped_output(probs.to(value.dtype), value)  # [B, H, 1, D]

    def prefill_text(self, module, query, key, attention_mask, scaling):
        """Mean attention of the prompt rows after the last image token over the image keys."""
        end = int(self.span.positions[:, -1].max()) + 1
        q = query[:, :, end:, :]
        if q.shape[2] == 0:
            return
        logits = _grouped_logits(q, key) * scaling
        if attention_mask is not None:
            logits = logits + attention_mask[:, :, end:, : key.shape[-2]]
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        self.prefill_text_maps[module.layer_idx] = self._image_cols(probs).mean(dim=(1, 2))


class TextWindowCapture:
    """Context manager for :data:`HOOK_TEXT_WINDOW`: at each layer in ``layers`` and every forward pass,
    the newest query row's attention over the last ``window`` keys, ``rows[layer]``: ``[B, w]`` float32
    with w = min(window, keys).

    ``reduce`` says how the heads become one row: ``"mean"`` (a distribution over all keys, sliced), or
    ``"max"``, the per-key maximum over heads renormalised over all keys (OPERA's public code).
    ``image_positions`` (``[n]`` key positions shared by every row) adds ``image_mass[layer]``, ``[B]``:
    the reduced row's total on those keys. Only the latest pass is kept, so memory stays
    O(B · window · layers); it reads the unsteered probabilities and changes nothing. It can be active
    together with an :class:`AttentionRecorder`."""

    def __init__(self, window: int, layers: tuple[int, ...] | list[int], reduce: str = "max",
                 image_positions: torch.Tensor | None = None):
        if window < 1:
            raise ValueError(f"window must be ≥ 1, got {window}")
        if reduce not in ("max", "mean"):
            raise ValueError(f"reduce must be 'max' or 'mean', got {reduce!r}")
        self.window = window
        self.layers = frozenset(int(x) for x in layers)
        self.reduce = reduce
        self.image_positions = image_positions
        self.rows: dict[int, torch.Tensor] = {}
        self.image_mass: dict[int, torch.Tensor] = {}
        self._token: contextvars.Token | None = None

    def __enter__(self) -> "TextWindowCapture":
        if _WINDOW.get() is not None:
            raise RuntimeError("another TextWindowCapture is already active")
        self._token = _WINDOW.set(self)
        return self

    def __exit__(self, *exc) -> None:
        _WINDOW.reset(self._token)
        self._token = None
        self.rows, self.image_mass = {}, {}  # nothing outlives the decoding that needed it

    def capture(self, module, query, key, attention_mask, scaling) -> None:
        layer = module.layer_idx
        logits = _grouped_logits(query[:, :, -1:, :], key) * scaling  # [B, H, 1, kv]
        if attention_mask is not None:
            logits = logits + attention_mask[:, :, -1:, : key.shape[-2]]
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)[:, :, 0, :]  # [B, H, kv]
        if self.reduce == "max":
            row = probs.max(1).values
            row = row / row.sum(-1, keepdim=True)
        else:
            row = probs.mean(1)
        self.rows[layer] = row[:, -self.window:]
        if self.image_positions is not None:
            self.image_mass[layer] = row.index_select(-1, self.image_positions.to(row.device)).sum(-1)


def _grouped_logits(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """``query[B, H, q, D] @ key[B, Hkv, kv, D]ᵀ`` → ``[B, H, q, kv]`` without repeating K:
    query head h uses KV head h // (H / Hkv), as ``repeat_kv`` lays them out."""
    b, h, q, d = query.shape
    hkv = key.shape[1]
    qg = query.reshape(b, hkv, (h // hkv) * q, d)
    return torch.matmul(qg, key.transpose(2, 3)).view(b, h, q, key.shape[2])


def _grouped_output(probs: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``probs[B, H, q, kv] @ value[B, Hkv, kv, D]`` → ``[B, H, q, D]`` without repeating V."""
    b, h, q, kv = probs.shape
    hkv = value.shape[1]
    out = torch.matmul(probs.reshape(b, hkv, (h // hkv) * q, kv), value)
    return out.view(b, h, q, value.shape[-1])


def adapt_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
):
    """The registered attention function (transformers' signature; returns ``(out[B,q,H,D], None)``)."""
    rec = _ACTIVE.get()
    layer = getattr(module, "layer_idx", None)
    win = _WINDOW.get()
    if win is not None and layer in win.layers:
        win.capture(module, query, key, attention_mask, query.shape[-1] ** -0.5 if scaling is None else scaling)
    if rec is None or layer is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if layer == 0:
        rec.open_step()
    q_len = query.shape[2]
    if q_len == 1 and rec.skips(layer):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    if q_len == 1:
        out = rec.last_row(module, query, key, value, attention_mask, scaling)
        return out.transpose(1, 2).contiguous(), None
    out, _ = sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )  # [B, q, H, D]
    if rec.capture_prefill:
        rec.prefill_text(module, query, key, attention_mask, scaling)
    last = rec.last_row(module, query, key, value, attention_mask, scaling)
    if rec.policy is not None:  # the last row may have been steered: use its own output
        out = out.clone()
        out[:, -1:] = last.transpose(1, 2).to(out.dtype)
    return out, None


def register() -> str:
    """Register the attention function and its mask builder; idempotent. Returns the name."""
    AttentionInterface.register(ATTN_IMPL, adapt_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPL, eager_mask)
    return ATTN_IMPL


register()
