"""What an intervention reads at the newest query row (:class:`AttentionPoint`), what it may write
(:class:`LogitBias`, :class:`ImageProbs`), and how a write corrects the layer's output on the image
block alone.

**The correction.** Let p be the row's attention over all keys (softmax of the logits z), I the image
keys, M = Σ_{i∈I} p_i the image mass (per head) and o = Σ_j p_j v_j the unsteered output. Both writes
keep the text keys' proportions: every text key is scaled by one factor r, and the image keys get new
probabilities p′_I. Then

    o′ = Σ_{j∉I} r·p_j v_j + Σ_{i∈I} p′_i v_i = r·o + Σ_{i∈I} (p′_i − r·p_i) v_i,

so the output is corrected with the image block of V alone (n keys), whatever the length of the row.

* :class:`ImageProbs` (p′_I given, new mass M′ = Σ p′_I ≤ 1): r = (1 − M′) / (1 − M).
* :class:`LogitBias` (z_i + b_i on I, softmax again over all keys): with the row's log-sum-exp
  L = log Σ_j e^{z_j}, p_j = e^{z_j − L}, so

      softmax(z + b)_j = e^{z_j + b_j} / Σ_k e^{z_k + b_k} = p_j e^{b_j} / Z′,
      Z′ = Σ_{k∉I} p_k + Σ_{i∈I} p_i e^{b_i} = (1 − M) + Σ_{i∈I} p_i e^{b_i},

  hence r = 1 / Z′ and p′_I = p_I e^{b_I} / Z′: the second softmax over all keys reduces to sums over the
  image block. For range, e^{b} is taken relative to c = max(0, max_i b_i) (numerator and Z′ scaled by
  e^{−c} alike), so any finite bias stays finite in float32.

Everything runs in float32 on the layer's own device; the output comes back in the value's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from .layout import ImageSpan

# Named hook points (TransformerLens style): what the recorder can cache by (hook, layer, step) and
# what an intervention reads. Both are the newest query row only, per head, image keys only.
HOOK_LOGITS = "attn.image_logits"  # before the softmax: scaled q·k (+ mask) at the image keys, [B, H, n]
HOOK_PROBS = "attn.image_probs"  # after it: probabilities over *all* keys, image columns, [B, H, n]
HOOKS = (HOOK_LOGITS, HOOK_PROBS)
# the newest row's probabilities over its last `window` keys (any keys: the generated text's, for
# OPERA), reduced over heads, at chosen layers; kept by TextWindowCapture, not by the recorder
HOOK_TEXT_WINDOW = "attn.text_window"


class AttentionPoint:
    """What an intervention sees at one (layer, step): both hook points, unsteered.

    ``logits`` and ``probs`` are ``[B, H, n_img]`` float32 on the layer's own device. The reductions
    (:attr:`attn`, :attr:`head_mass`, :attr:`mass`) are computed once, on first use, and shared by the
    policy, the write and the recorder. ``logits`` may be given as a callable, run on first use (a
    policy that reads only the probabilities never pays for them)."""

    def __init__(self, layer: int, step: int, logits: torch.Tensor | Callable[[], torch.Tensor] | None,
                 probs: torch.Tensor):
        self.layer, self.step, self.probs = layer, step, probs
        self._logits = logits
        self._attn = self._head_mass = self._mass = self._mass3 = None

    @property
    def logits(self) -> torch.Tensor:
        if callable(self._logits):
            self._logits = self._logits()
        return self._logits

    @property
    def attn(self) -> torch.Tensor:
        """Head-mean image attention ``[B, n_img]`` (the quantity AMC and the anchor use)."""
        if self._attn is None:
            self._attn = self.probs.mean(1)
        return self._attn

    def attn_into(self, out: torch.Tensor) -> torch.Tensor:
        """:attr:`attn` written into ``out`` (a buffer slot): taken there directly when not yet computed."""
        if self._attn is None:
            self._attn = torch.mean(self.probs, 1, out=out)
        else:
            out.copy_(self._attn)
        return out

    @property
    def head_mass(self) -> torch.Tensor:
        """Each head's total attention on the image keys, ``[B, H, 1]`` (kept 3-D: it scales rows)."""
        if self._head_mass is None:
            self._head_mass = self.probs.sum(-1, keepdim=True)
        return self._head_mass

    @property
    def mass3(self) -> torch.Tensor:
        """:attr:`mass` as ``[B, 1, 1]``: it broadcasts against ``[B, H, ·]`` rows without a reshape."""
        if self._mass3 is None:
            self._mass3 = self.head_mass.mean((1, 2), keepdim=True)
        return self._mass3

    @property
    def mass(self) -> torch.Tensor:
        """Head-mean total attention on the image keys, ``[B]``."""
        if self._mass is None:
            self._mass = self.mass3.view(-1)
        return self._mass


@dataclass
class LogitBias:
    """Write before the softmax: add ``bias`` (``[B, n]`` shared by heads, or ``[B, H, n]``) to the
    image-key logits, then softmax over all keys again (the image mass moves with it)."""

    bias: torch.Tensor


@dataclass
class ImageProbs:
    """Write after the softmax: the image keys get ``probs`` (``[B, n]`` for every head or
    ``[B, H, n]``), whose sum is the new image mass (capped at one); the other keys keep their
    proportions and are rescaled so the row sums to one. Rows meant to stay as they were carry their
    old probabilities. ``bounded``: the writer guarantees every head's new mass is below one (the cap
    is then skipped)."""

    probs: torch.Tensor
    bounded: bool = False


class SteeringPolicy(Protocol):
    """The simple form of an intervention: an additive bias on the image-key logits (all heads)."""

    def __call__(self, layer: int, step: int, attn: torch.Tensor) -> torch.Tensor | None:
        """``attn``: ``[B, n_img]`` float32 head-mean attention over the image keys (unsteered).

        Return ``None`` (no change) or an additive float bias ``[B, n_img]``; rows that must
        not be steered carry zeros. The policy records its own decisions."""


class Intervention(Protocol):
    """Reads both hook points of the newest row and may write one of them."""

    def intervene(self, point: AttentionPoint) -> LogitBias | ImageProbs | None:
        ...


def _on(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` as float32 on ``like``'s device: a write made elsewhere (a user's tensor, another GPU)
    moves to the layer that uses it."""
    if t.device != like.device or t.dtype != torch.float32:
        t = t.to(device=like.device, dtype=torch.float32)
    return t


_ONES: dict[torch.device, torch.Tensor] = {}


def _one(like: torch.Tensor) -> torch.Tensor:
    """A 0-d float32 one on ``like``'s device, made once: ``one − x`` with it is the same subtraction as
    ``torch.rsub(x, 1)`` without wrapping the Python scalar in a new tensor at every call (a third of
    the op's time on a CPU)."""
    one = _ONES.get(like.device)
    if one is None:
        one = _ONES[like.device] = torch.ones((), dtype=torch.float32, device=like.device)
    return one


def resolve(edit, point: AttentionPoint) -> tuple[torch.Tensor, torch.Tensor]:
    """A write as ``(r [B, H, 1], p′_I [B, H, n])``: the text keys' factor and the new image probabilities."""
    p = point.probs
    if isinstance(edit, ImageProbs):  # the operators' write first: it is the hot one
        new = _on(edit.probs, p)
        if new.shape != p.shape:
            new = (new[:, None, :] if new.ndim == 2 else new).expand_as(p)
        m_new = new.sum(-1, keepdim=True)
        if not edit.bounded:  # an image mass above one is capped at one
            cap = m_new.clamp_min(1.0)
            new, m_new = new / cap, (m_new / cap).clamp_max(1.0)
        one = _one(p)
        return torch.sub(one, m_new).div_(torch.sub(one, point.head_mass).clamp_min_(1e-12)), new
    if isinstance(edit, LogitBias):
        b = _on(edit.bias, p)
        b = b[:, None, :] if b.ndim == 2 else b
        c = b.amax(-1, keepdim=True).clamp_min(0)  # [B, 1|H, 1]
        q = p * torch.exp(b - c)
        scale = torch.exp(-c)  # e^{−c}
        z = torch.addcmul(q.sum(-1, keepdim=True), torch.sub(_one(p), point.head_mass), scale)  # Z′·e^{−c}
        return scale / z, q / z
    raise TypeError(f"an intervention returned {type(edit).__name__}; expected LogitBias, ImageProbs or None")


def correct_output(out: torch.Tensor, value: torch.Tensor, span: ImageSpan, p: torch.Tensor, r: torch.Tensor,
                   new: torch.Tensor) -> torch.Tensor:
    """o′ = r·o + (p′_I − r·p_I)·V_I for the newest row: ``out`` (``[B, H, D]``, or any tensor that reshapes
    to the grouped ``[B·Hkv, H/Hkv, D]``), ``value`` the layer's un-repeated ``[B, Hkv, kv, D]``, ``p``/``new`` ``[B, H, n]``,
    ``r`` ``[B, H, 1]``. Returns ``[B·Hkv, H/Hkv, D]`` (the grouped layout) in ``out``'s dtype."""
    b, h, n = p.shape
    hkv, dim = value.shape[1], value.shape[-1]
    d = torch.addcmul(new, r, p, value=-1)  # p′_I − r·p_I, float32
    if d.dtype != value.dtype:
        d = d.to(value.dtype)
    v_img = span.image_cols(value, dim=2).reshape(b * hkv, n, dim)  # [B·Hkv, n, D]
    g = h // hkv
    if out.shape != (b * hkv, g, dim):  # a prefill's row [B, H, D]; a decoding step's is grouped already
        out = out.reshape(b * hkv, g, dim)
    if out.dtype == torch.float32:
        return torch.baddbmm(out * r.view(b * hkv, g, 1), d.view(b * hkv, g, n), v_img)
    # half precision: r·o and the correction summed in float32
    dv = torch.bmm(d.view(b * hkv, g, n), v_img).float()
    return torch.addcmul(dv, r.view(b * hkv, g, 1), out.float()).to(out.dtype)
