"""One analysis as the app runs it: the shared bias-map cache, thread policy and ground truth."""

from __future__ import annotations

import threading

from PIL import Image

from adapt.threads import use_threads

from .knobs import Knobs
from .models import supported_families
from .safe import md
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
            progress=None, compare: str | None = None):
    """One full analysis (anchor, both answers) → Trace, ground truth attached when known.

    ``compare`` names the registered method shown beside ADAPT-TF (default greedy); it answers in the
    unsteered slot, its name in ``trace.meta["compare"]`` so the views and a saved trace say which
    method it is (:func:`adapt.pipeline.analyse`)."""
    from adapt.pipeline import analyse as run

    config = knobs.config()
    compare = check_compare(compare)
    use_threads(backbone)
    trace = run(backbone, image, question, config=config, bias_cache=bias_cache(), progress=progress,
                meta=dict(meta) if meta else None, compare=compare)
    if meta:
        trace.meta = dict(trace.meta or {})
        for k, v in meta.items():
            trace.meta.setdefault(k, v)
    add_hallucinations(trace)
    return trace


# ---------------------------------------------------------------------------------- comparison
DEFAULT_COMPARE = "greedy"


def compare_choices() -> list[tuple[str, str]]:
    """(label, name) of every registered method ADAPT-TF can be compared with, greedy first.

    Read from the registry on each call, so methods registered later (VCD, OPERA, ...) appear
    without a change here. Plain ``adapt-tf`` is left out: with the tab's own knobs it is the
    steered run itself."""
    from adapt.methods import NAMES, describe

    about = describe()
    names = [DEFAULT_COMPARE] + [n for n in NAMES if n not in (DEFAULT_COMPARE, "adapt-tf")]
    return [(f"{n} — {_short(about.get(n, ''))}" if about.get(n) else n, n) for n in names]


def _short(text: str, n: int = 80) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def compare_names() -> list[str]:
    return [name for _, name in compare_choices()]


def check_compare(name) -> str:
    """The method name, or a readable error naming the choices."""
    from adapt.config import ConfigError

    name = (name or "").strip() or DEFAULT_COMPARE
    names = compare_names()
    if name not in names:
        raise ConfigError(f"unknown comparison method {name!r}; choose one of {', '.join(names)}")
    return name


# --------------------------------------------------------------------------- what the model knows
MODEL_KEY = "model"  # trace.meta: the app's name of the backbone (reopening a trace selects it again)
UNKNOWN_KEY = "unknown_words"  # trace.meta: the question's words the tokenizer read as its unknown token
WORLD_KEY = "world_model"  # trace.meta: True when the backbone only knows the synthetic world
REAL_CHECKPOINT = "llava-hf/llava-1.5-7b-hf"  # the example named in the note; any supported family works


def is_world_model(backbone) -> bool:
    """Whether ``backbone`` reads only the synthetic world's words (the embedded model and its
    tunings): its tokenizer's vocabulary is the world's vocabulary plus special tokens."""
    from adapt.world.language import vocabulary

    tok = getattr(backbone, "tokenizer", None)
    try:
        vocab = set(tok.get_vocab())
        specials = set(getattr(tok, "all_special_tokens", None) or [])
    except Exception:  # a tokenizer without a plain vocabulary is a real model's
        return False
    words = vocab - specials
    return bool(words) and words <= set(vocabulary())


def world_facts() -> dict:
    """What the embedded model was trained on, read from the world's own code."""
    from adapt.world.language import vocabulary
    from adapt.world.scenes import CATEGORIES, COLOUR_NAMES, IMAGE_SIZE

    return {"shapes": list(CATEGORIES), "colours": list(COLOUR_NAMES), "vocabulary": len(vocabulary()),
            "image_size": IMAGE_SIZE}


def answer_note(trace) -> str:
    """Markdown shown where the answers appear: what the model cannot know about this image and
    question ('' when there is nothing to say). Built from the library's facts; the only strings
    taken from the trace (the unknown words) are escaped, counted and cut short."""
    meta = trace.meta if isinstance(getattr(trace, "meta", None), dict) else {}
    parts = []
    if meta.get(WORLD_KEY) is True and not meta.get("objects"):
        f = world_facts()
        parts.append(
            f"**The embedded model knows only its synthetic world.** It was trained on {f['image_size']}×"
            f"{f['image_size']} scenes of {len(f['shapes'])} shapes ({', '.join(f['shapes'])}) in "
            f"{len(f['colours'])} colours ({', '.join(f['colours'])}), with a vocabulary of {f['vocabulary']} words "
            "and punctuation marks. On any other picture it still answers in those shapes, colours and places: "
            "its answers say nothing about what is in this image. For real photos, run a real checkpoint "
            f"({supported_families()}): `python -m app --model {REAL_CHECKPOINT}` on your own machine (or ask "
            f"this server's operator to offer it through `ADAPT_MODELS`), or `python -m adapt run --backbone "
            f"{REAL_CHECKPOINT} …`.")
    unknown = meta.get(UNKNOWN_KEY)
    if isinstance(unknown, list):
        words = [md(" ".join(str(w).split())[:40]) for w in unknown[:20]]
        words = [w for w in words if w]
        if words:
            more = f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""
            parts.append(f"**Words of the question this model does not know:** "
                         f"{', '.join(f'“{w}”' for w in words)}{more}. Its tokenizer has no token for them and "
                         "read each as the unknown token (`<unk>`): the answers cannot be about them.")
    return "\n\n".join(f"ℹ️ {p}" for p in parts)
