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

import os
from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from .kernels import constant
from .layout import ImageSpan

# Named hook points (TransformerLens style): what the recorder can cache by (hook, layer, step) and
# what an intervention reads. Both are the newest query row only, per head, image keys only.
HOOK_LOGITS = "attn.image_logits"  # before the softmax: scaled q·k (+ mask) at the image keys, [B, H, n]
HOOK_PROBS = "attn.image_probs"  # after it: probabilities over *all* keys, image columns, [B, H, n]
HOOKS = (HOOK_LOGITS, HOOK_PROBS)
# the newest row's probabilities over its last `window` keys (any keys: the generated text's, for
# OPERA), reduced over heads, at chosen layers; kept by TextWindowCapture, not by the recorder
HOOK_TEXT_WINDOW = "attn.text_window"


def head_mean(x: torch.Tensor, keepdim: bool = False) -> torch.Tensor:
    """``x.mean(1)`` as the sum and one division by the head count, the two steps ``mean`` takes on a CPU
    (so the same numbers) without its casts and its Python-number divisor wrapped at every call."""
    return torch.sum(x, 1, keepdim=keepdim).div_(constant(float(x.shape[1])))


class AttentionPoint:
    """What an intervention sees at one (layer, step): both hook points, unsteered.

    ``logits`` and ``probs`` are ``[B, H, n_img]`` float32 on the layer's own device. The reductions
    (:attr:`attn`, :attr:`head_mass`, :attr:`mass`, and the head sums they divide by H) are computed
    once, on first use, and shared by the policy, the write and the recorder. ``logits`` may be given as
    a callable, run on first use (a policy that reads only the probabilities never pays for them)."""

    def __init__(self, layer: int, step: int, logits: torch.Tensor | Callable[[], torch.Tensor] | None,
                 probs: torch.Tensor):
        self.layer, self.step, self.probs = layer, step, probs
        self._logits = logits
        self._attn = self._head_sum = self._head_mass = self._total = self._mass = self._mass3 = None

    @property
    def logits(self) -> torch.Tensor:
        if callable(self._logits):
            self._logits = self._logits()
        return self._logits

    @property
    def attn(self) -> torch.Tensor:
        """Head-mean image attention ``[B, n_img]`` (the quantity AMC and the anchor use)."""
        if self._attn is None:  # as probs.mean(1): the head sum divided by H
            self._attn = torch.div(self.head_sum, constant(float(self.probs.shape[1])))
        return self._attn

    @property
    def head_sum(self) -> torch.Tensor:
        """:attr:`attn` times H, ``[B, n_img]``: what a reader that is blind to scale (AMC) keeps."""
        if self._head_sum is None:
            self._head_sum = torch.sum(self.probs, 1)
        return self._head_sum

    @property
    def head_mass(self) -> torch.Tensor:
        """Each head's total attention on the image keys, ``[B, H, 1]`` (kept 3-D: it scales rows)."""
        if self._head_mass is None:
            self._head_mass = self.probs.sum(-1, keepdim=True)
        return self._head_mass

    @property
    def head_total(self) -> torch.Tensor:
        """The heads' image masses summed, ``[B, 1, 1]`` (:attr:`mass3` times H): a test against a threshold
        times H needs no division."""
        if self._total is None:
            self._total = torch.sum(self.head_mass, 1, keepdim=True)
        return self._total

    @property
    def mass3(self) -> torch.Tensor:
        """:attr:`mass` as ``[B, 1, 1]``: it broadcasts against ``[B, H, ·]`` rows without a reshape."""
        if self._mass3 is None:
            self._mass3 = torch.div(self.head_total, constant(float(self.probs.shape[1])))
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
    is then skipped). ``mass``: each head's new image mass ``[B, H, 1]`` (the sum of ``probs``), when the
    writer made ``probs`` to have it (so it is not summed again); bounded writes only."""

    probs: torch.Tensor
    bounded: bool = False
    mass: torch.Tensor | None = None


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


def _text_factor(m_new: torch.Tensor, head_mass: torch.Tensor) -> torch.Tensor:
    """r = (1 − M′) / (1 − M): the factor of the text keys when the image mass goes from M to M′."""
    one = constant(1.0)
    return torch.sub(one, m_new).div_(torch.sub(one, head_mass).clamp_min_(1e-12))


def resolve(edit, point: AttentionPoint) -> tuple[torch.Tensor, torch.Tensor]:
    """A write as ``(r [B, H, 1], p′_I [B, H, n])``: the text keys' factor and the new image probabilities."""
    p = point.probs
    if isinstance(edit, ImageProbs):  # the operators' write first: it is the hot one
        new = _on(edit.probs, p)
        if new.shape != p.shape:
            new = (new[:, None, :] if new.ndim == 2 else new).expand_as(p)
        m_new = edit.mass if edit.mass is not None and edit.bounded else new.sum(-1, keepdim=True)
        if not edit.bounded:  # an image mass above one is capped at one
            cap = m_new.clamp_min(1.0)
            new, m_new = new / cap, (m_new / cap).clamp_max(1.0)
        return _text_factor(m_new, point.head_mass), new
    if isinstance(edit, LogitBias):
        b = _on(edit.bias, p)
        b = b[:, None, :] if b.ndim == 2 else b
        c = b.amax(-1, keepdim=True).clamp_min(0)  # [B, 1|H, 1]
        q = p * torch.exp(b - c)
        scale = torch.exp(-c)  # e^{−c}
        z = torch.addcmul(q.sum(-1, keepdim=True), torch.sub(constant(1.0), point.head_mass), scale)  # Z′·e^{−c}
        return scale / z, q / z
    raise TypeError(f"an intervention returned {type(edit).__name__}; expected LogitBias, ImageProbs or None")


def _grouped(out: torch.Tensor, value: torch.Tensor, span: ImageSpan, p: torch.Tensor) -> tuple:
    """``out`` as ``[B·Hkv, H/Hkv, D]`` (a prefill's row is ``[B, H, D]``; a decoding step's is grouped
    already) and the image block of V, ``[B·Hkv, n, D]``."""
    b, h, n = p.shape
    hkv, dim = value.shape[1], value.shape[-1]
    v_img = span.image_cols(value, dim=2).reshape(b * hkv, n, dim)
    if out.shape != (b * hkv, h // hkv, dim):
        out = out.reshape(b * hkv, h // hkv, dim)
    return out, v_img


def _corrected(out: torch.Tensor, v_img: torch.Tensor, p: torch.Tensor, r: torch.Tensor,
               new: torch.Tensor) -> torch.Tensor:
    """o′ = r·o + (p′_I − r·p_I)·V_I in the grouped layouts (``out`` ``[B·Hkv, g, D]``, ``v_img``
    ``[B·Hkv, n, D]``, ``p``/``new`` ``[B, H, n]``, ``r`` ``[B, H, 1]``), in ``out``'s dtype."""
    bk, g = out.shape[:2]
    d = torch.addcmul(new, r, p, value=-1)  # p′_I − r·p_I, float32
    if d.dtype != v_img.dtype:
        d = d.to(v_img.dtype)
    if out.dtype == torch.float32:
        return torch.baddbmm(out * r.view(bk, g, 1), d.view(bk, g, -1), v_img)
    # half precision: r·o and the correction summed in float32
    dv = torch.bmm(d.view(bk, g, -1), v_img).float()
    return torch.addcmul(dv, r.view(bk, g, 1), out.float()).to(out.dtype)


def correct_output(out: torch.Tensor, value: torch.Tensor, span: ImageSpan, p: torch.Tensor, r: torch.Tensor,
                   new: torch.Tensor) -> torch.Tensor:
    """o′ = r·o + (p′_I − r·p_I)·V_I for the newest row: ``out`` (``[B, H, D]``, or any tensor that reshapes
    to the grouped ``[B·Hkv, H/Hkv, D]``), ``value`` the layer's un-repeated ``[B, Hkv, kv, D]``, ``p``/``new`` ``[B, H, n]``,
    ``r`` ``[B, H, 1]``. Returns ``[B·Hkv, H/Hkv, D]`` (the grouped layout) in ``out``'s dtype."""
    out, v_img = _grouped(out, value, span, p)
    return _corrected(out, v_img, p, r, new)


def _probs_write(p: torch.Tensor, head_mass: torch.Tensor, new: torch.Tensor, m_new: torch.Tensor,
                 out: torch.Tensor, v_img: torch.Tensor, per_head: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A bounded :class:`ImageProbs` with each head's new mass known, whole: the corrected output and the
    map the recorder keeps. Tensors in, tensors out, shapes fixed for a layer: what
    :func:`compile_writes` compiles."""
    o = _corrected(out, v_img, p, _text_factor(m_new, head_mass), new)
    return o, (new.clone() if per_head else head_mean(new))


_COMPILE = {"on": False}
_COMPILED: dict[str, Callable] = {}  # each compiled function by name, made on first use


def compile_writes(on: bool = True) -> None:
    """Run the per-(layer, step) math of a steered row through ``torch.compile`` (static shapes: the image
    block's, which do not change while decoding) or back in eager mode. It covers the write of the
    operators that move attention within the image (``logprior-image``, ``mass-aware``: the text keys'
    factor, the output's correction, the kept map) and those operators' own math
    (:func:`adapt.steering.operators.toward_anchor`). Off by default; ``ADAPT_COMPILE=1`` in the
    environment turns it on at import. Needs a C compiler on a CPU (inductor builds C++ kernels); the
    first steered row compiles (tens of seconds, a few with inductor's cache warm). On a CPU it is slower
    than eager mode (each compiled call costs ≈ 24 µs, more than the small ops it fuses); it is meant for
    a GPU, where each of those ops is a kernel launch. Measured: docs/performance.md."""
    _COMPILE["on"] = bool(on)


def compiled(name: str, eager: Callable) -> Callable:
    """``eager``'s compiled twin when :func:`compile_writes` is on (made on first use), else ``eager``."""
    if not _COMPILE["on"]:
        return eager
    fn = _COMPILED.get(name)
    if fn is None:
        graph = torch.compile(eager)

        def fn(*args):
            # the image columns are views of keys that grow by one each step, so their strides change every
            # step: compiled code guards on strides and would be rebuilt at each step; copies keep them fixed
            return graph(*(a.contiguous() if isinstance(a, torch.Tensor) else a for a in args))

        _COMPILED[name] = fn
    return fn


def write_row(edit, point: AttentionPoint, out: torch.Tensor, value: torch.Tensor, span: ImageSpan,
              per_head: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``edit`` to the newest row: its corrected output (grouped ``[B·Hkv, H/Hkv, D]``) and the map
    the recorder keeps (the steered head mean ``[B, n]``, or ``[B, H, n]`` with ``per_head``)."""
    if isinstance(edit, ImageProbs) and edit.bounded and edit.mass is not None and edit.probs.shape == point.probs.shape:
        out, v_img = _grouped(out, value, span, point.probs)
        return compiled("probs_write", _probs_write)(point.probs, point.head_mass, _on(edit.probs, point.probs),
                                                     edit.mass, out, v_img, per_head)
    r, new = resolve(edit, point)
    return correct_output(out, value, span, point.probs, r, new), (new.clone() if per_head else head_mean(new))


if os.environ.get("ADAPT_COMPILE", "") not in ("", "0"):
    compile_writes(True)
