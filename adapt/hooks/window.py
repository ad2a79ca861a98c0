"""The text-window hook point (:data:`~adapt.hooks.writes.HOOK_TEXT_WINDOW`): attention among the text.

Inside ``with TextWindowCapture(window, layers):`` the newest query rows' probabilities over the keys
are kept for the chosen layers, replaced at every forward pass (memory O(B · window · layers) whatever
the length of the decoding). OPERA's over-trust penalty reads it. It only reads: the layer's output is
unchanged.
"""

from __future__ import annotations

import contextvars

import torch

from .kernels import apply_mask, causal_rows, grouped_logits

_WINDOW: contextvars.ContextVar["TextWindowCapture | None"] = contextvars.ContextVar(
    "adapt_active_text_window", default=None
)



class TextWindowCapture:
    """At each layer in ``layers`` and every forward pass, the newest query row's attention over the last
    ``window`` keys, ``rows[layer]``: ``[B, w]`` float32 with w = min(window, keys).

    ``reduce`` says how the heads become one row: ``"mean"`` (a distribution over all keys, sliced), or
    ``"max"``, the per-key maximum over heads renormalised over all keys (OPERA's public code).
    ``image_positions`` (``[n]`` key positions shared by every row) adds ``image_mass[layer]``, ``[B]``:
    the reduced row's total on those keys. ``queries`` > 1 keeps the last ``queries`` query rows of a
    call instead (``full[layer]``: ``[B, q, kv]`` over all keys; ``rows`` and ``image_mass`` then hold
    the last one's): a call that feeds several candidates per row reads each one's attention. It can be
    active together with an :class:`~adapt.hooks.recorder.AttentionRecorder`."""

    def __init__(self, window: int, layers: tuple[int, ...] | list[int], reduce: str = "max",
                 image_positions: torch.Tensor | None = None, queries: int = 1):
        if window < 1:
            raise ValueError(f"window must be ≥ 1, got {window}")
        if reduce not in ("max", "mean"):
            raise ValueError(f"reduce must be 'max' or 'mean', got {reduce!r}")
        self.window = window
        self.layers = frozenset(int(x) for x in layers)
        self.reduce = reduce
        self.image_positions = image_positions
        self.queries = queries
        self.rows: dict[int, torch.Tensor] = {}
        self.full: dict[int, torch.Tensor] = {}
        self.image_mass: dict[int, torch.Tensor] = {}
        self.all_image_mass: dict[int, torch.Tensor] = {}
        self._token: contextvars.Token | None = None

    def __enter__(self) -> "TextWindowCapture":
        if _WINDOW.get() is not None:
            raise RuntimeError("another TextWindowCapture is already active")
        self._token = _WINDOW.set(self)
        return self

    def __exit__(self, *exc) -> None:
        _WINDOW.reset(self._token)
        self._token = None
        # nothing outlives the decoding that needed it
        self.rows, self.full, self.image_mass, self.all_image_mass = {}, {}, {}, {}

    def capture(self, layer: int, query, key, attention_mask, scaling) -> None:
        q_len, kv_len = query.shape[2], key.shape[2]
        rows = slice(max(0, q_len - self.queries), q_len)
        mask = causal_rows(attention_mask, rows, q_len, kv_len, query.device)
        logits = apply_mask(grouped_logits(query[:, :, rows, :], key) * scaling, mask)  # [B, H, q', kv]
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        if self.reduce == "max":
            red = probs.max(1).values
            red = red / red.sum(-1, keepdim=True)
        else:
            red = probs.mean(1)  # [B, q', kv]
        self.rows[layer] = red[:, -1, -self.window:]
        if self.queries > 1:
            self.full[layer] = red
        if self.image_positions is not None:
            mass = red.index_select(-1, self.image_positions.to(red.device)).sum(-1)  # [B, q']
            self.image_mass[layer] = mass[:, -1]
            self.all_image_mass[layer] = mass
