"""The readings of Eq. 11: what ASI writes at a (step, layer) it has decided to steer.

Each operator reads the hook points of the newest query row (:class:`~adapt.hooks.AttentionPoint`,
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

from ..hooks import AttentionPoint, ImageProbs, LogitBias
from ..hooks.writes import compiled
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


def _hhi(a: torch.Tensor) -> torch.Tensor:
    p = a / a.sum(-1, keepdim=True).clamp_min(1e-30)
    return p.pow(2).sum(-1)


class LayerState:
    """What an operator needs at one layer that does not change from step to step, made once on the
    layer's device: (w + ε)^α, α·log(w + ε), the quality mask, the anchor phase's HHI."""

    def __init__(self, cfg: ASIConfig, w: torch.Tensor, m_ref: torch.Tensor, a_ref: torch.Tensor, heads: int = 1):
        self.m_ref, self.a_ref = m_ref, a_ref
        op = cfg.operator
        # [B, 1, n] and [B, 1, 1]: they broadcast against the [B, H, ·] rows as they are
        self.toward = (w + cfg.eps).pow(cfg.alpha)[:, None, :] if op in ("logprior-image", "mass-aware") else None
        self.log_bias = cfg.alpha * torch.log(w + cfg.eps)[:, None, :] if op == "logprior" else None
        self.boost = torch.full_like(w, cfg.boost)[:, None, :] if op == "image-boost" else None
        self.keep = None
        if op == "quality":  # a quantile of the anchor: the same at every step, computed here once
            thr = torch.quantile(w, cfg.quality_percentile / 100.0, dim=-1, keepdim=True)
            self.keep = (w >= thr).to(torch.float32)[:, None, :]
        self.hhi_ref = _hhi(a_ref).clamp_min(1e-30) if op == "hhi" else None
        # γ·M_ref times the head count: it meets the heads' summed mass (AttentionPoint.head_total) unscaled
        self.gamma_m_ref = (cfg.gamma * heads * m_ref).view(-1, 1, 1) if op == "mass-aware" else None
        self.kept = torch.full((), 1 - cfg.gamma, device=w.device) if op == "mass-aware" else None


def toward_anchor(p: torch.Tensor, toward: torch.Tensor, head_mass: torch.Tensor, total: torch.Tensor | None = None,
                  gamma_m_ref: torch.Tensor | None = None, kept: torch.Tensor | None = None) -> tuple:
    """``logprior-image`` (``total`` None) and ``mass-aware``: ``p [B, H, n]`` moved toward the anchor within
    the image, p·(w + ε)^α (``toward``) rescaled to each head's new image mass. ``total``: the heads'
    summed mass ``[B, 1, 1]``, ``gamma_m_ref`` γ·H·M_ref, ``kept`` 1 − γ. Returns the new probabilities
    and that mass ``[B, H, 1]``. Tensors in and out, shapes fixed for a layer (what the compile switch,
    :func:`adapt.hooks.writes.compile_writes`, compiles)."""
    head = head_mass
    if total is not None:
        # each head keeps its share of the image while the head-mean mass m moves to
        # m + γ·max(0, M_ref − m); a head never gives the image all of its mass (≤ 0.999).
        # For γ ≥ 0 that is m·c with c = max(1, (1 − γ) + γ·M_ref/m) = max(1, (1 − γ) + γ·H·M_ref/(H·m)),
        # one factor for every head
        c = torch.addcdiv(kept, gamma_m_ref, total.clamp_min(1e-30)).clamp_min_(1)
        head = (head_mass * c).clamp_max_(0.999)
    pw = p * toward
    return pw.mul_(torch.div(head, pw.sum(-1, keepdim=True).clamp_min_(1e-30))), head  # pw is ours: in place


def apply_operator(cfg: ASIConfig, point: AttentionPoint, w: torch.Tensor, fired: torch.Tensor,
                   m_ref: torch.Tensor, a_ref: torch.Tensor, state: LayerState | None = None,
                   every: bool = False) -> LogitBias | ImageProbs:
    """The write of ``cfg.operator`` for the rows in ``fired`` (``[B]`` or ``[B, 1, 1]`` bool). ``state``:
    the layer's precomputed constants (made here when not given). ``every``: the caller knows every row
    fired (trigger ``always``, or a decision read on the host), so no row is selected back."""
    st = state or LayerState(cfg, w, m_ref, a_ref, point.probs.shape[1])
    op = cfg.operator
    rows = None if every else (fired if fired.dim() == 3 else fired.view(-1, 1, 1))
    if op == "logprior":
        return LogitBias(st.log_bias if every else st.log_bias * rows)
    if op == "image-boost":
        return LogitBias(st.boost if every else st.boost * rows)
    p = point.probs  # [B, H, n]
    mass = None
    if op == "logprior-image":
        new, mass = compiled("toward_anchor", toward_anchor)(p, st.toward, point.head_mass)
    elif op == "mass-aware":
        new, mass = compiled("toward_anchor", toward_anchor)(p, st.toward, point.head_mass, point.head_total,
                                                             st.gamma_m_ref, st.kept)
    elif op == "hhi":
        beta = cfg.k1 * (1 - _hhi(point.attn) / st.hhi_ref).clamp(0, 1)  # [B]
        new = (1 - beta)[:, None, None] * p + beta[:, None, None] * st.a_ref[:, None, :]
    elif op == "quality":
        new = p * st.keep
        new = new * (point.head_mass / new.sum(-1, keepdim=True).clamp_min(1e-30))
    else:
        raise ValueError(f"unknown operator {op!r}")
    # every operator keeps each head's image mass below one (a blend of two such rows, a kept mass)
    if every:  # each head's new mass is known: no sum of the write
        return ImageProbs(new, bounded=True, mass=mass)
    return ImageProbs(torch.where(rows, new, p), bounded=True)
