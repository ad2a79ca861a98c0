"""The attention function registered with transformers, and its mask builder.

One attention function, registered under the name :data:`ATTN_IMPL` with
``transformers.AttentionInterface``, and transformers' own SDPA mask builder beside it with
``AttentionMaskInterface`` (without a mask registration the model would pass no mask at all). The SDPA
builder hands the function no mask where SDPA needs none (no padding: the causal flag in a prefill,
nothing in a decoding step) and a boolean mask where there is padding, so every call handed on to SDPA
keeps its fast paths (flash, native grouped-query attention); the captured rows build their own
(:mod:`adapt.hooks.kernels`). The decoder is switched to it with
``attn_implementation={"text_config": ATTN_IMPL}``; the vision tower keeps its stock attention. No model
source is patched.

While no :class:`~adapt.hooks.recorder.AttentionRecorder` is active the function is plain SDPA.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .recorder import _ACTIVE
from .window import _WINDOW

ATTN_IMPL = "adapt"


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
    # every decoder layer of every step passes here: the calls handed on to SDPA stay few lines long
    rec = _ACTIVE.get()
    win = _WINDOW.get()
    layer = getattr(module, "layer_idx", None)
    if win is not None and layer in win.layers:
        win.capture(layer, query, key, attention_mask, query.shape[-1] ** -0.5 if scaling is None else scaling)
    if rec is None or layer is None or rec.slot_of[layer] is None:  # off, or a layer the key map does not capture
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    q_len = query.shape[2]
    step = rec.step_of(q_len, key.shape[2], layer)
    if q_len == 1 and rec.lean is not None and not rec.lean(rec.slot_of[layer], step):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    if q_len == 1:
        return rec.last_row(layer, step, query, key, value, attention_mask, scaling), None  # [B, 1, H, D]
    out, _ = sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )  # [B, q, H, D], a fresh tensor: the last row is corrected in place
    if rec.capture_prefill:
        rec.prefill_text(layer, query, key, attention_mask, scaling)
    last = out[:, -1]
    new = rec.last_row(layer, step, query, key, value, attention_mask, scaling, out=last)
    if new.data_ptr() != last.data_ptr():  # steered: its own output (unsteered: a view of `last`, which
        last.copy_(new)                    # copy_ refuses when the row is contiguous, as SDPA's may be)
    return out, None


def register() -> str:
    """Register the attention function and its mask builder; idempotent. Returns the name."""
    AttentionInterface.register(ATTN_IMPL, adapt_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPL, sdpa_mask)
    return ATTN_IMPL


register()
