"""The readings of Eq. 11: what ASI writes at a (step, layer) it has decided to steer.

Each operator reads the hook points of the newest query row (:class:`~adapt.attention.AttentionPoint`,
per head, unsteered) and returns a write for the rows in ``fired`` (other rows get their own values
back, so one batched call serves rows with different decisions). ``w`` = W / max W is the anchor
weights of each row, ``[B, n]``; ``m_ref`` and ``a_ref`` the layer's anchor-phase image mass ``[B]``
and head-mean attention ``[B, n]``.

=================  =====================================================  ==============  ============
name               write                                                  image mass      anchor used
=================  =====================================================  ==============  ============
``logprior``       logits += α·log(w + ε), softmax over all keys (paper)   falls           direction
``logprior-image`` p_img ∝ p_img·(w + ε)^α within the image keys           kept            direction
``mass-aware``     as logprior-image, then mass += γ·max(0, M_ref − M_t)  restored        direction
``hhi``            p_img ← (1 − β)·p_img + β·a_ref, β = k1·(1 − HHI/HHI₀)  towards M_ref   anchor phase
``quality``        zero p_img where w < its q-th percentile, mass kept    kept            mask
``image-boost``    logits += c on every image key                         rises           none (PAI-like)
=================  =====================================================  ==============  ============

``hhi`` and ``quality`` are the authors' public running modes (DESIGN §8): HHI is the
Herfindahl–Hirschman index Σ (a/Σa)² of the head-mean map, HHI₀ the anchor phase's; k1 = 0.4 and
the 40th percentile are that code's constants. ``quality``'s "refined map" is taken to be the anchor W.
"""

from __future__ import annotations

import torch

from ..attention import AttentionPoint, ImageProbs, LogitBias
from ..config import ASIConfig

OPERATOR_INFO = {
    "logprior": ("adds α·log(w+ε) to the image logits, softmax over all keys (the paper's text): image mass falls",
                 "falls", True),
    "logprior-image": ("moves attention toward the anchor within the image keys (the authors' Eq. 11 function): "
                       "mass kept", "kept", True),
    "mass-aware": ("moves attention toward the anchor within the image and gives back γ of the mass lost since "
                   "the anchor phase", "restored", True),
    "hhi": ("blends the anchor-phase attention back in, weight k1·(1 − HHI_t/HHI_anchor) (authors' code)",
            "towards anchor phase", True),
    "quality": ("zeroes image patches below the anchor's 40th percentile, mass kept within the image "
                "(authors' code)", "kept", True),
    "image-boost": ("adds a constant to every image logit: more image attention, no anchor direction (PAI-like, "
                    "not ADAPT)", "rises", False),
}


def _toward_anchor(probs: torch.Tensor, w: torch.Tensor, cfg: ASIConfig) -> torch.Tensor:
    """``probs[B, H, n]`` re-weighted by (w + ε)^α, each head keeping its image mass."""
    new = probs * (w + cfg.eps).pow(cfg.alpha)[:, None, :]
    return new * (probs.sum(-1, keepdim=True) / new.sum(-1, keepdim=True).clamp_min(1e-30))


def _hhi(a: torch.Tensor) -> torch.Tensor:
    p = a / a.sum(-1, keepdim=True).clamp_min(1e-30)
    return p.pow(2).sum(-1)


def apply_operator(cfg: ASIConfig, point: AttentionPoint, w: torch.Tensor, fired: torch.Tensor,
                   m_ref: torch.Tensor, a_ref: torch.Tensor) -> LogitBias | ImageProbs:
    """The write of ``cfg.operator`` for the rows in ``fired`` (``[B]`` bool)."""
    op = cfg.operator
    f = fired[:, None].to(torch.float32)
    if op == "logprior":
        return LogitBias(cfg.alpha * torch.log(w + cfg.eps) * f)
    if op == "image-boost":
        return LogitBias(torch.full_like(w, cfg.boost) * f)
    p = point.probs  # [B, H, n]
    if op == "logprior-image":
        new = _toward_anchor(p, w, cfg)
    elif op == "mass-aware":
        new = _toward_anchor(p, w, cfg)
        m = point.mass
        target = m + cfg.gamma * (m_ref - m).clamp_min(0)
        new = new * (target / m.clamp_min(1e-30))[:, None, None]
        head_mass = new.sum(-1, keepdim=True)
        new = new * (0.999 / head_mass).clamp(max=1.0)  # a head can never give the image all of its mass
    elif op == "hhi":
        beta = cfg.k1 * (1 - _hhi(point.attn) / _hhi(a_ref).clamp_min(1e-30)).clamp(0, 1)  # [B]
        new = (1 - beta)[:, None, None] * p + beta[:, None, None] * a_ref[:, None, :]
    elif op == "quality":
        thr = torch.quantile(w, cfg.quality_percentile / 100.0, dim=-1, keepdim=True)  # [B, 1]
        keep = (w >= thr).to(p.dtype)[:, None, :]
        new = p * keep
        new = new * (p.sum(-1, keepdim=True) / new.sum(-1, keepdim=True).clamp_min(1e-30))
    else:
        raise ValueError(f"unknown operator {op!r}")
    return ImageProbs(torch.where(fired[:, None, None], new, p))
