"""Eq. 10, the Attention-Map Consistency index, and the anchor weights it is measured against."""

from __future__ import annotations

import numpy as np
import torch


def amc(attn: torch.Tensor | np.ndarray, w: torch.Tensor | np.ndarray):
    """Eq. 10: S_AMC(a) = Σ_i a_i² · w_i / (Σ_i a_i)², over the last axis.

    ``w`` = W / max W ∈ [0, 1]. High when attention is concentrated *and* on anchor regions. It is
    invariant to scaling ``a``: it cannot see the total image mass fall (hence the mass trigger).
    """
    if isinstance(attn, np.ndarray):
        s = attn.sum(-1)
        return (attn ** 2 * w).sum(-1) / np.where(s > 0, s, 1.0) ** 2
    s = attn.sum(-1)
    return (attn.pow(2) * w).sum(-1) / s.clamp_min(1e-30).pow(2)


def amc_of(attn: torch.Tensor, w: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """Eq. 10 on the hot path: ``attn [B, n]`` with its sum ``mass [B]`` already known (the image mass
    the trigger reads)."""
    return torch.div((attn * attn * w).sum(-1), mass * mass)


def steering_weights(anchor: np.ndarray) -> np.ndarray:
    """w = W / max(W), flattened row-major over the image-token grid (one map)."""
    w = np.asarray(anchor, dtype=np.float64).ravel()
    return w / w.max() if w.max() > 0 else np.ones_like(w)
