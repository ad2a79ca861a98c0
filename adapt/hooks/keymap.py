"""A key map per layer: which key columns of *this layer's* cache are a row's image keys.

The layout (:class:`~adapt.hooks.layout.ImageSpan`) gives the image keys' sequence positions. What a
layer's attention call sees depends on its kind (``config.layer_types`` in transformers 5):

* ``full_attention``: every key since the start, key index = sequence position: the positions.
* ``sliding_attention`` (Gemma 3's local layers, Mistral-style windows): transformers'
  ``DynamicSlidingWindowLayer`` keeps the last ``sliding_window − 1`` keys, so a decoding step sees
  ``min(keys, window)`` of them and key index = position − (what the window dropped). A prefill sees
  every prompt key, and its mask hides those at distance ≥ window from the query. The image keys are
  the positions shifted by the dropped count while the whole image is inside the newest query's
  window; from the step the image starts leaving it, the layer is **not steerable here**: its capture
  still equals the model's attention (keys outside the window read 0, which is what the query gives
  them) but no write is attempted, and the step is reported (:meth:`BoundKeyMap.report`).
* ``linear_attention`` (Qwen3.5's gated delta-net layers): no softmax and no call to the attention
  interface; **not captured**. Captured maps cover the other layers only (``captured``; their row in
  the maps is ``slot[layer]``), so the anchor fuses and the policy steers captured layers alone.

* ``cross_attention`` (Mllama): the query is the text, the keys the vision states (fixed in number: the
  layer counts its own calls for its step); the layout's positions are those key columns. Captured and
  steered. ``text_self_attention``: Mllama's self-attention layers, whose keys hold one image token and
  no grid: not captured (handed to SDPA before the recorder), reported like linear layers.

Full-attention layers cost nothing here: one tuple lookup per (layer, step).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .layout import ImageSpan

FULL, SLIDING, LINEAR = "full_attention", "sliding_attention", "linear_attention"
# Mllama: cross-attention layers (text queries, the vision states as keys: every key an image key) and the
# self-attention layers beside them, whose keys hold one <|image|> token and no grid (not captured)
CROSS, TEXT_SELF = "cross_attention", "text_self_attention"
KINDS = (FULL, SLIDING, LINEAR, CROSS, TEXT_SELF)
NOT_CAPTURED = (LINEAR, TEXT_SELF)


class KeyMapError(ValueError):
    """A layer kind the capture cannot map (one readable line)."""


@dataclass(frozen=True)
class KeyMap:
    """The kind of every decoder layer, and the sliding window (keys a sliding layer keeps)."""

    kinds: tuple[str, ...]
    window: int | None = None

    def __post_init__(self):
        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown:
            raise KeyMapError(f"layers of kind {', '.join(unknown)} are not supported by the capture "
                              f"(known: {', '.join(KINDS)})")
        if SLIDING in self.kinds and not self.window:
            raise KeyMapError("sliding_attention layers need a sliding_window")

    @classmethod
    def full(cls, num_layers: int) -> "KeyMap":
        return cls((FULL,) * num_layers)

    @classmethod
    def from_config(cls, text_config) -> "KeyMap":
        """From a text config's ``layer_types``; absent, inferred as transformers' caches infer them
        (``cache_utils.get_layer_types_and_kwargs``: a ``sliding_window`` makes every layer sliding, an
        ``attention_chunk_size`` chunked, which is refused). A sliding layer without a window attends to
        everything: full."""
        n = text_config.num_hidden_layers
        window = getattr(text_config, "sliding_window", None)
        types = getattr(text_config, "layer_types", None)
        if types is None:
            chunked = getattr(text_config, "attention_chunk_size", None) is not None
            types = [SLIDING if window is not None else "chunked_attention" if chunked else FULL] * n
        types = list(types)
        if not window:
            types = [FULL if t == SLIDING else t for t in types]
        return cls(tuple(types), window or None)

    @property
    def captured(self) -> tuple[int, ...]:
        """Decoder layers whose attention is captured (every layer but linear and Mllama's self-attention ones)."""
        return tuple(i for i, k in enumerate(self.kinds) if k not in NOT_CAPTURED)

    @property
    def slot(self) -> dict[int, int]:
        """Decoder layer → its row in the captured maps."""
        return {layer: i for i, layer in enumerate(self.captured)}

    @property
    def plain(self) -> bool:
        """Every layer full attention: maps rows are decoder layers and nothing is ever out of reach."""
        return all(k == FULL for k in self.kinds)

    def describe(self) -> dict:
        """What a generation's info carries: each kind's layers and the window."""
        out = {kind: [i for i, k in enumerate(self.kinds) if k == kind] for kind in KINDS}
        report = {"captured": list(self.captured), "full": out[FULL], "sliding": out[SLIDING],
                  "not_captured": sorted(out[LINEAR] + out[TEXT_SELF]), "window": self.window}
        if out[CROSS]:
            report["cross"] = out[CROSS]
        return report

    def bind(self, span: ImageSpan) -> "BoundKeyMap":
        return BoundKeyMap(self, span)


class ShiftedSpan:
    """The image keys of one sliding layer-step: the span's columns less ``shift`` (keys the window
    dropped). While every image key is still cached this is a narrow or a gather like the span's; a
    key already dropped reads ``fill`` (its column is gone from the cache)."""

    def __init__(self, span: ImageSpan, shift: int, first: int):
        self.span, self.shift, self.complete = span, shift, shift <= first
        self._index: dict = {}

    def image_cols(self, x: torch.Tensor, dim: int = -1, fill: float = 0.0) -> torch.Tensor:
        dim = dim % x.ndim
        if not self.complete:  # rare (not steerable): put the dropped columns back, then read as the span
            pad = list(x.shape)
            pad[dim] = self.shift
            return self.span.image_cols(torch.cat([x.new_full(pad, fill), x], dim), dim)
        sl = self.span.contiguous_slice()
        if sl is not None:
            return x.narrow(dim, sl.start - self.shift, sl.stop - sl.start)
        idx = self._index.get(x.device)
        if idx is None:
            idx = self._index[x.device] = self.span.index(x.device) - self.shift
        shape = [idx.shape[0]] + [1] * (x.ndim - 1)
        shape[dim] = idx.shape[1]
        size = list(x.shape)
        size[dim] = idx.shape[1]
        return x.gather(dim, idx.view(shape).expand(size))


class BoundKeyMap:
    """A key map for one decoding run (one span): the recorder's per-(layer, step) question "where are
    the image keys in the keys this call sees, and may they be steered?", and what it answered."""

    def __init__(self, keymap: KeyMap, span: ImageSpan):
        self.keymap, self.span = keymap, span
        self.sliding = tuple(k == SLIDING for k in keymap.kinds)
        # layers whose key count does not grow by one per step count their own calls (a full window,
        # a cross-attention layer's fixed vision keys)
        self.counted = tuple(k in (SLIDING, CROSS) for k in keymap.kinds)
        self.window = keymap.window
        # host ints, read once: the earliest image key of any row (a window holds every row's image
        # while it holds that one)
        self.first = int(span.positions.min()) if SLIDING in keymap.kinds else 0
        self._full = (span, True)
        self._shifted: dict[int, ShiftedSpan] = {}  # one per shift: the sliding layers of a step share it
        self.left_window: dict[int, int] = {}  # sliding layer → first step it was not steerable

    def at(self, layer: int, step: int, kv_len: int, prefill_keys: int | None) -> tuple:
        """``(columns, steerable)`` for the newest query of ``layer`` at ``step``, whose call sees
        ``kv_len`` keys, after a prefill of ``prefill_keys`` (None: no prefill seen, nothing dropped)."""
        if not self.sliding[layer]:
            return self._full
        seq_len = kv_len if prefill_keys is None else prefill_keys + step  # the query's own key included
        shift = seq_len - kv_len
        steerable = self.first >= seq_len - self.window  # every image key within the query's window
        if not steerable and layer not in self.left_window:
            self.left_window[layer] = step
        if shift == 0 and steerable:
            return self._full
        cols = self._shifted.get(shift)
        if cols is None:
            self._shifted.clear()
            cols = self._shifted[shift] = ShiftedSpan(self.span, shift, self.first)
        return cols, steerable

    def report(self) -> dict:
        """The key map's kinds, plus ``not_steerable_from``: per sliding layer, the first step at which
        the image had (begun to) leave its window (absent: steerable at every step)."""
        out = self.keymap.describe()
        out["not_steerable_from"] = dict(sorted(self.left_window.items()))
        return out
