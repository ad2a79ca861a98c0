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
* asks the recorder's policy for an additive bias on that layer's pre-softmax logits at the
  image keys (all heads); if one is returned it is added, the row is re-normalised and the
  layer's output for that token is computed from the steered weights (DESIGN §4, Eq. 11).

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


class SteeringPolicy(Protocol):
    """Decides, per (step, layer), whether to bias the image-key logits of the newest token."""

    def __call__(self, layer: int, step: int, attn: torch.Tensor) -> torch.Tensor | None:
        """``attn``: ``[B, n_img]`` float32 head-mean attention over the image keys (unsteered).

        Return ``None`` (no change) or an additive float bias ``[B, n_img]``; rows that must
        not be steered carry zeros. The policy records its own decisions.
        """


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

    After generation, :meth:`maps` returns ``[steps, layers, B, n_img]`` (or with a head axis
    when ``per_head``), the attention each generated token's query actually used.
    ``prefill_text_maps`` holds, per layer, the mean attention of the prompt tokens after the
    image over the image keys (``capture_prefill=True``).
    """

    def __init__(
        self,
        span: ImageSpan,
        num_layers: int,
        policy: SteeringPolicy | None = None,
        per_head: bool = False,
        capture_prefill: bool = False,
    ):
        self.span = span
        self.num_layers = num_layers
        self.policy = policy
        self.per_head = per_head
        self.capture_prefill = capture_prefill
        self._slice = span.contiguous_slice()
        self._gather_idx = span.positions[:, None, None, :]  # [B,1,1,n]
        self.steps: list[list[torch.Tensor]] = []
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
        """``[steps, layers, B, n_img]`` float32 (``[steps, layers, B, H, n_img]`` per head)."""
        if not self.steps:
            raise RuntimeError("nothing was captured: run a forward pass inside the recorder")
        complete = [s for s in self.steps if len(s) == self.num_layers]
        return torch.stack([torch.stack(s) for s in complete]).float()

    # hot path helpers ----------------------------------------------------------------------
    def _image_cols(self, x: torch.Tensor) -> torch.Tensor:
        """Image-key columns of ``x[B, H, q, kv]``."""
        if self._slice is not None:
            return x[..., self._slice]
        idx = self._gather_idx.to(x.device).expand(x.shape[0], x.shape[1], x.shape[2], -1)
        return x.gather(-1, idx)

    def _add_to_image_cols(self, logits: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        bias = bias[:, None, None, :].to(logits.dtype)
        if self._slice is not None:
            logits[..., self._slice] += bias
            return logits
        idx = self._gather_idx.to(logits.device).expand(logits.shape[0], logits.shape[1], 1, -1)
        return logits.scatter_add(-1, idx, bias.expand_as(idx).contiguous())

    def last_row(self, module, query, key, value, attention_mask, scaling):
        """Explicit attention of the newest query row: capture, steer, return its output.

        ``key``/``value`` are the un-repeated KV heads: with grouped-query attention the query
        heads of one KV head are stacked as rows of one matmul instead of copying K and V."""
        layer = module.layer_idx
        if layer == 0:  # layers run in order: layer 0 opens a new decoding step
            self.steps.append([])
        step = len(self.steps) - 1
        logits = _grouped_logits(query[:, :, -1:, :], key) * scaling  # [B, H, 1, kv]
        if attention_mask is not None:
            logits = logits + attention_mask[:, :, -1:, : key.shape[-2]]
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        img = self._image_cols(probs)[:, :, 0, :]  # [B, H, n]
        bias = None
        if self.policy is not None:
            bias = self.policy(layer, step, img.mean(1))
        if bias is not None:
            # fp32 so a large negative bias stays finite in half precision
            steered = self._add_to_image_cols(logits.float(), bias.float())
            probs = torch.softmax(steered, dim=-1)
            img = self._image_cols(probs)[:, :, 0, :]
        self.steps[step].append(img if self.per_head else img.mean(1))
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
    if rec is None or layer is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    q_len = query.shape[2]
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
