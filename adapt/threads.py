"""How many CPU threads torch uses for a backbone: small models decode fastest on one."""

from __future__ import annotations

import os

import torch

from .argtypes import MAX_THREADS

SMALL_MODEL_PARAMS = 50_000_000
_DEFAULT_THREADS = torch.get_num_threads()  # torch's own choice, before anything here changes it


def use_threads(backbone, requested: int | None = None) -> int:
    """Set torch's intra-op threads for work on ``backbone`` and return the number.

    ``requested`` wins (and is remembered for the backbone's later calls), then
    ``$ADAPT_TORCH_THREADS``. Otherwise small models (the embedded one: a few million parameters)
    run on one thread: their ops are too small to split, and on a busy 2-core machine two spinning
    OpenMP threads made decoding 50x slower than one. Large checkpoints keep torch's default.
    ``requested`` beyond :data:`adapt.argtypes.MAX_THREADS` is a ValueError; the variable is capped there
    (far above it OpenMP cannot start the threads and the process dies)."""
    if requested is not None and not 1 <= requested <= MAX_THREADS:
        raise ValueError(f"threads must be 1 … {MAX_THREADS}, got {requested}")
    n = requested or getattr(backbone, "_adapt_threads", None)
    if n is None:
        env = os.environ.get("ADAPT_TORCH_THREADS", "").strip()
        if env.isdigit() and int(env) > 0:
            n = min(int(env), MAX_THREADS)
        else:
            try:
                params = sum(p.numel() for p in backbone.model.parameters())
            except Exception:
                params = SMALL_MODEL_PARAMS + 1
            n = 1 if params < SMALL_MODEL_PARAMS else _DEFAULT_THREADS
    try:
        backbone._adapt_threads = n
    except AttributeError:  # a backbone that takes no attributes is simply asked again next time
        pass
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
