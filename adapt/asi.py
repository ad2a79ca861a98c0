"""Attention-Supervised Inference (paper Sec. 4.2): the AMC index and the steering policy.

The policy is called by :mod:`adapt.attention` inside every decoder layer at every step. It
keeps all state as tensors on the model's device, so deciding never forces a host sync on a
GPU; on the CPU it skips the re-normalisation when nothing fires.
"""

from __future__ import annotations

import numpy as np
import torch

from .config import ASIConfig


def amc(attn: torch.Tensor | np.ndarray, w: torch.Tensor | np.ndarray):
    """Eq. 10: S_AMC(a) = Σ_i a_i² · w_i / (Σ_i a_i)², over the last axis.

    ``w`` = W / max W ∈ [0, 1]. High when attention is concentrated *and* on anchor regions.
    """
    if isinstance(attn, np.ndarray):
        s = attn.sum(-1)
        return (attn ** 2 * w).sum(-1) / np.where(s > 0, s, 1.0) ** 2
    s = attn.sum(-1)
    return (attn.pow(2) * w).sum(-1) / s.clamp_min(1e-30).pow(2)


def steering_weights(anchor: np.ndarray) -> np.ndarray:
    """w = W / max(W), flattened row-major over the image-token grid."""
    w = np.asarray(anchor, dtype=np.float64).ravel()
    return w / w.max() if w.max() > 0 else np.ones_like(w)


class ASIPolicy:
    """Monitors AMC per (step, layer) and steers with α·log(w + ε) when it falls below threshold.

    Steps ``0..k-1`` are the anchor phase: never steered; in relative mode they set the
    reference S_ref,l (mean AMC of layer l over those steps) and the threshold is τ·S_ref,l.
    """

    def __init__(self, weights: np.ndarray, num_layers: int, layers: list[int], cfg: ASIConfig, k: int,
                 device: torch.device | str = "cpu"):
        self.cfg, self.k, self.num_layers = cfg, k, num_layers
        self.w = torch.as_tensor(weights, dtype=torch.float32, device=device)[None]  # [1, n]
        self.log_bias = cfg.alpha * torch.log(self.w + cfg.eps)  # Eq. 11's additive prior
        self.monitored = torch.zeros(num_layers, dtype=torch.bool)
        self.monitored[layers] = True
        self._monitored = set(layers)
        self.ref_sum = torch.zeros(num_layers, device=device)
        self.ref_count = torch.zeros(num_layers, device=device)
        self._sync_free = torch.device(device).type != "cpu"
        self.amc_log: list[list[torch.Tensor]] = []  # per step, per layer [B]
        self.fired_log: list[dict[int, torch.Tensor]] = []  # per step: layer → [B] bool

    def threshold(self, layer: int) -> torch.Tensor:
        if self.cfg.mode == "absolute":
            return torch.tensor(self.cfg.tau, device=self.w.device)
        return self.cfg.tau * self.ref_sum[layer] / self.ref_count[layer].clamp_min(1)

    def __call__(self, layer: int, step: int, attn: torch.Tensor) -> torch.Tensor | None:
        if layer == 0:
            self.amc_log.append([])
            self.fired_log.append({})
        score = amc(attn, self.w)  # [B]
        self.amc_log[-1].append(score)
        if step < self.k:
            self.ref_sum[layer] += score[0]
            self.ref_count[layer] += 1
            return None
        if layer not in self._monitored or not self.cfg.enabled:
            return None
        fired = score < self.threshold(layer)
        self.fired_log[-1][layer] = fired
        if not self._sync_free and not bool(fired.any()):
            return None
        return self.log_bias * fired[:, None].to(self.log_bias.dtype)

    # results ---------------------------------------------------------------------------------
    def amc_matrix(self) -> np.ndarray:
        """[steps, layers] AMC of batch row 0 (before steering)."""
        rows = [torch.stack(r)[:, 0] for r in self.amc_log if len(r) == self.num_layers]
        return torch.stack(rows).cpu().numpy() if rows else np.zeros((0, self.num_layers))

    def fired_matrix(self) -> np.ndarray:
        """[steps, layers] bool: where the bias was applied (batch row 0)."""
        out = np.zeros((len(self.amc_log), self.num_layers), dtype=bool)
        for t, d in enumerate(self.fired_log):
            for layer, f in d.items():
                out[t, layer] = bool(f[0])
        return out

    def thresholds(self) -> np.ndarray:
        return np.array([float(self.threshold(l)) for l in range(self.num_layers)])
