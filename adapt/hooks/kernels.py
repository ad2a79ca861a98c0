"""The newest query row of one attention call, written once: scores, probabilities, output.

Everything here works on the un-repeated KV heads: with grouped-query attention the query heads of
one KV head are stacked as rows of one matmul (``repeat_kv``'s layout: query head h uses KV head
h // (H / Hkv)) instead of copying K and V.

Masks are what the model hands the attention function with transformers' SDPA mask builder
registered: ``None`` (no padding: causal, and the newest row sees every key), a boolean
``[B, 1, q, kv]`` (True = attend) or, from callers that pass their own, an additive float mask.
"""

from __future__ import annotations

import torch

_CONSTANTS: dict[float, torch.Tensor] = {}


def constant(value: float) -> torch.Tensor:
    """A 0-d float32 CPU tensor of ``value``, made once. An op of a tensor and a Python number wraps the
    number in a new tensor at every call (a third to two thirds of a small op's time on a CPU); a 0-d
    CPU tensor is passed as the same scalar, to a tensor on any device, with nothing made. The products
    are the ones the Python number gives (the scalar is read in float32 either way)."""
    t = _CONSTANTS.get(value)
    if t is None:
        t = _CONSTANTS[value] = torch.tensor(value, dtype=torch.float32)
    return t


def _batched(x: torch.Tensor) -> torch.Tensor:
    """``[B, Hkv, s, D]`` as ``[B·Hkv, s, D]`` (a view for the caches' layouts; bmm takes it directly,
    which a 4-D matmul would reach through several reshapes)."""
    return x.reshape(x.shape[0] * x.shape[1], x.shape[2], x.shape[3])


def grouped_logits(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """``query[B, H, q, D] @ key[B, Hkv, kv, D]ᵀ`` → ``[B, H, q, kv]`` without repeating K."""
    b, h, q, d = query.shape
    hkv = key.shape[1]
    qg = query.reshape(b * hkv, (h // hkv) * q, d)
    return torch.bmm(qg, _batched(key).transpose(1, 2)).view(b, h, q, key.shape[2])


def apply_mask(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``logits[B, H, q, kv]`` with ``mask`` (rows already chosen: ``[B, 1|H, q, ≥kv]``) applied."""
    if mask is None:
        return logits
    mask = mask[..., : logits.shape[-1]]
    if mask.dtype == torch.bool:
        return logits.masked_fill(~mask, float("-inf"))
    return logits + mask


def causal_rows(mask: torch.Tensor | None, rows: slice, q_len: int, kv_len: int,
                device: torch.device) -> torch.Tensor | None:
    """The mask of query ``rows`` of a ``q_len``-row call over ``kv_len`` keys. When the model passed
    none (no padding: SDPA runs with its causal flag), the causal block is built here: query i (at key
    position kv − q + i) sees keys up to its own position."""
    if mask is not None:
        return mask[:, :, rows]
    if rows.stop - rows.start == 1 and rows.stop == q_len:  # the last row of a causal call sees every key
        return None
    qpos = torch.arange(rows.start, rows.stop, device=device) + (kv_len - q_len)
    return (torch.arange(kv_len, device=device)[None, :] <= qpos[:, None])[None, None]


def row_logits(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, scaling: float) -> torch.Tensor:
    """The last query row's masked logits ``[B, H, 1, kv]``: with no mask (no padding) the newest row of
    a causal call sees every key, so nothing is added."""
    return apply_mask(grouped_logits(query[:, :, -1:, :], key) * scaling, None if mask is None else mask[:, :, -1:])


def decode_row(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
               scaling: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A decoding step's single query row, in one pass over K and V (what a decoding kernel reads).

    Returns ``(logits, probs, out)`` in the grouped layout of the matmuls (``[B·Hkv, H/Hkv, kv]``, probs
    in float32, and ``[B·Hkv, H/Hkv, D]``): its memory is ``[B, H, ·]`` (and ``out`` ``[B, 1, H, D]``, the
    layout the model expects back), so each is one view away from those shapes."""
    b, h, _, d = query.shape
    hkv = key.shape[1]
    g = h // hkv
    logits = torch.bmm(query.reshape(b * hkv, g, d), _batched(key).transpose(1, 2)).mul_(constant(scaling))
    if mask is not None:  # [B, 1|H, kv] in the grouped layout: row b·Hkv + j is batch row b
        m = mask[:, :, -1, :key.shape[2]]
        m = m.reshape(b * hkv, g, -1) if m.shape[1] == h else (m.repeat_interleave(hkv, 0) if b > 1 else m)
        logits = apply_mask(logits, m)
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
    p = probs if probs.dtype == value.dtype else probs.to(value.dtype)
    return logits, probs, torch.bmm(p, _batched(value))
