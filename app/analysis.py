"""One analysis as the app runs it: the shared bias-map cache, thread policy and ground truth."""

from __future__ import annotations

import threading

from PIL import Image

from adapt.threads import use_threads

from .knobs import Knobs
from .scenes import add_hallucinations

_bias_cache = None
_bias_lock = threading.Lock()


def bias_cache():
    global _bias_cache
    with _bias_lock:
        if _bias_cache is None:
            from adapt.pipeline import default_bias_cache

            _bias_cache = default_bias_cache()
        return _bias_cache


def analyse(backbone, image: Image.Image, question: str, knobs: Knobs, meta: dict | None = None,
            progress=None):
    """One full analysis (anchor, both answers) → Trace, ground truth attached when known."""
    from adapt.pipeline import analyse as run

    config = knobs.config()
    use_threads(backbone)
    trace = run(backbone, image, question, config=config, bias_cache=bias_cache(), progress=progress,
                meta=dict(meta) if meta else None)
    if meta and not trace.meta:
        trace.meta = dict(meta)
    elif meta:
        for k, v in meta.items():
            trace.meta.setdefault(k, v)
    add_hallucinations(trace)
    return trace
