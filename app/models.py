"""Loaded backbones, shared by every visitor: the allow-list, an LRU cache, warm-up, and the
missing-model notice.

The app is public: a visitor never chooses a server path or makes the server fetch from a hub.
:meth:`Models.get` loads only the names it offers (:meth:`Models.allowed`): ``embedded``, the
operator's default (``--model`` / ``$ADAPT_MODEL``), the tuned models the app names itself
(``embedded-vagdpo``, ``job:<id>``) and what the operator lists in ``$ADAPT_MODELS``. Free text
(any folder or hub id) only with ``$ADAPT_ALLOW_ANY_MODEL=1``, and then a failed load says the
same thing whether or not the path exists.

Loading one model never waits for another's load to finish before a loaded one is handed out: the
cache lock is held only to look up and insert, each name has its own load lock (two visitors
asking for the same new model load it once), and :attr:`Models.compute` is the lock analyses
take *after* their model is loaded, so a slow load does not hold up analyses on loaded models.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Iterable

from .names import model_name, scrub, shown_path

log = logging.getLogger("adapt.app")

EMBEDDED = "embedded"
MODELS_ENV = "ADAPT_MODELS"  # the operator's extra models: comma-separated hub ids / folders
LEGACY_MODELS_ENV = "ADAPT_BACKBONES"  # the older name of the same list, still read
ANY_MODEL_ENV = "ADAPT_ALLOW_ANY_MODEL"  # "1": visitors may type any folder or hub id
FAILURE_MEMORY_S = 30.0  # a failed load is answered from memory this long (no retry storms)
ZERO_GPU_ENV = "SPACES_ZERO_GPU"  # set by Hugging Face on ZeroGPU hardware


def operator_models() -> list[str]:
    """The names the operator offers through ``$ADAPT_MODELS`` (and the older ``$ADAPT_BACKBONES``)."""
    raw = ",".join(os.environ.get(v, "") for v in (MODELS_ENV, LEGACY_MODELS_ENV))
    return list(dict.fromkeys(x.strip() for x in raw.split(",") if x.strip()))


def any_model_allowed() -> bool:
    """Whether the operator lets visitors type any folder or hub id (``$ADAPT_ALLOW_ANY_MODEL``)."""
    return os.environ.get(ANY_MODEL_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def supported_families() -> str:
    """The registered model families by name (:data:`adapt.backbones.CATALOG`), for messages."""
    from adapt.backbones import CATALOG, FAMILIES

    return ", ".join(CATALOG[k].name for k in FAMILIES)


def on_gpu(fn: Callable, duration: int = 120) -> Callable:
    """``fn`` under ``spaces.GPU`` where the ``spaces`` package is importable (on ZeroGPU hardware a GPU is
    attached for each call, at most ``duration`` seconds; elsewhere ``spaces.GPU`` changes nothing), else
    ``fn`` itself: nothing is imported then."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(duration=duration)(fn)


def load_device() -> str | None:
    """Where the app loads a model: ``cuda`` on ZeroGPU hardware (``$SPACES_ZERO_GPU``; ``spaces`` holds
    the weights until a ``spaces.GPU`` call attaches the GPU, where CUDA is not available before), else
    :func:`adapt.backbones.load_backbone`'s own choice."""
    return "cuda" if os.environ.get(ZERO_GPU_ENV, "").strip().lower() in ("1", "true") else None


def _shown_name(name: str, n: int = 80) -> str:
    name = " ".join(str(name).split())
    return name if len(name) <= n else name[: n - 1] + "…"


class Models:
    """Loaded backbones, least recently used first out (at most ``capacity`` in memory)."""

    def __init__(self, default: str = EMBEDDED, capacity: int = 2, resolve=None,
                 offered: Callable[[], Iterable[str]] | None = None, allow_any: bool | None = None,
                 loader=None):
        """``resolve``: name → what ``loader`` (default :func:`adapt.backbones.load_backbone`) loads
        (the app's names for tuned models, such as ``job:<id>``, stand for server folders it does
        not show). ``offered``: the names a visitor may choose now (default: ``embedded``, the
        default and :func:`operator_models`); ``allow_any`` (default ``$ADAPT_ALLOW_ANY_MODEL``)
        lets any other name through."""
        self.default = default or EMBEDDED
        self.resolve = resolve or (lambda name: name)
        self.offered = offered or (lambda: [EMBEDDED, self.default, *operator_models()])
        self.allow_any = any_model_allowed() if allow_any is None else bool(allow_any)
        self.loader = loader
        self.capacity = max(1, capacity)
        self._loaded: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()  # the cache itself: held only to look up and insert
        self._loading: dict[str, threading.Lock] = {}  # one per name being loaded
        self._load_slot = threading.Lock()  # one load at a time (memory), never held by a lookup
        self._failed: dict[str, tuple[float, Exception]] = {}
        self.errors: dict[str, str] = {}
        self.compute = threading.Lock()  # analyses take turns on the shared models (taken after loading)

    @staticmethod
    def key(name: str | None) -> str:
        name = (name or "").strip()
        return name or EMBEDDED

    def canonical(self, name: str | None) -> str | None:
        """The offered model ``name`` stands for: itself, or the one it is the shown name of
        (:func:`app.names.model_name`: a folder by its own name, never the server's path); None when
        it is not offered."""
        key = self.key(name)
        values = list(dict.fromkeys(self.key(n) for n in self.offered()))
        if key in values:
            return key
        return next((v for v in values if model_name(v) == key), None)

    def allowed(self, name: str | None) -> bool:
        """Whether ``name`` may be loaded on a visitor's request."""
        return self.allow_any or self.canonical(name) is not None

    def check(self, name: str | None) -> str:
        """The cache key of ``name``; raises BackboneError (one line, naming the choices by their shown
        names) when it is not offered. The message is the same for any name: it says nothing about the
        server's files."""
        from adapt.backbones import BackboneError

        key = self.canonical(name)
        if key is not None:
            return key
        if self.allow_any:
            return self.key(name)
        choices = ", ".join(dict.fromkeys(model_name(self.key(n)) for n in self.offered()))
        raise BackboneError(f"the model '{_shown_name(self.key(name))}' is not offered on this server; "
                            f"choose one of: {choices}")

    def get(self, name: str | None = None):
        """The backbone called ``name`` (one of :meth:`allowed`), loaded on first use."""
        key = self.check(name or self.default)
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
            per_key = self._loading.setdefault(key, threading.Lock())
        with per_key:  # a second request for the same model waits for the first one's load
            with self._lock:
                if key in self._loaded:
                    self._loaded.move_to_end(key)
                    return self._loaded[key]
                failed = self._failed.get(key)
            if failed and time.monotonic() - failed[0] < FAILURE_MEMORY_S:
                raise failed[1]
            with self._load_slot:
                bb = self._load(key)
            with self._lock:
                self._loaded[key] = bb
                self._loaded.move_to_end(key)
                while len(self._loaded) > self.capacity:
                    self._loaded.popitem(last=False)
                self._loading.pop(key, None)
            return bb

    def preload(self, name: str | None) -> bool:
        """Start loading ``name`` in the background, so that the analysis asked for next finds it loaded
        and no queue slot waits for the load. False when it is loaded or already loading; raises
        BackboneError when it is not offered (at once, before any analysis)."""
        key = self.check(name)
        with self._lock:
            if key in self._loaded or key in self._loading:
                return False

        def run():
            try:
                self.get(key)
            except Exception as exc:  # remembered (FAILURE_MEMORY_S): the analysis reports it
                log.warning("model %r not preloaded: %s", key, exc)

        threading.Thread(target=run, name="adapt-preload", daemon=True).start()
        return True

    def _load(self, key: str):
        from adapt.backbones import BackboneError, load_backbone

        listed = self.canonical(key) is not None
        source = None
        try:
            source = self.resolve(key)
            bb = self.loader(source) if self.loader else load_backbone(source, device=load_device())
        except Exception as exc:  # BackboneError, a broken checkpoint, out of memory, ...
            detail = str(exc) if isinstance(exc, BackboneError) else f"{type(exc).__name__}: {exc}"
            self.errors[key] = detail
            log.warning("model %r not loaded: %s", key, detail)
            if listed:  # the operator's own model: the reason helps, without the server's folders in it
                if Path(str(source or key)).expanduser().is_absolute():
                    detail = scrub(detail, source, key)
                err = BackboneError(f"could not load the model '{_shown_name(model_name(key))}': {detail[:300]}")
            else:  # a visitor's free text, echoed as typed: the same words whether or not such a path exists
                err = BackboneError(f"could not load the model '{_shown_name(key)}': it is not a supported model "
                                    f"checkpoint (a folder or hub id of {supported_families()}) that this server "
                                    "can reach")
            with self._lock:
                self._failed[key] = (time.monotonic(), err)
                self._loading.pop(key, None)
            raise err from None
        with self._lock:
            self._failed.pop(key, None)
        self.errors.pop(key, None)
        return bb

    def warm(self, examples: list[tuple[str, str]] = ()) -> None:
        """Load the default backbone in the background (the first visitor does not wait) and fill
        the bias-map cache for the example questions (a short run: the cache key ignores length)."""
        def run():
            try:
                bb = self.get(self.default)
            except Exception as exc:
                log.warning("default model %s not loaded: %s", self.default, exc)
                return
            from adapt.images import load_image

            from .analysis import analyse
            from .knobs import Knobs

            knobs = Knobs.defaults()
            knobs.max_new_tokens = knobs.k + 1
            for path, question in list(dict.fromkeys(examples))[:4]:
                try:
                    with self.compute:
                        analyse(bb, load_image(path), question, knobs)
                except Exception as exc:  # a warm-up failure is only a slower first click
                    log.warning("warm-up on %s failed: %s", path, exc)

        threading.Thread(target=run, name="adapt-warm", daemon=True).start()

    def is_loaded(self, name: str | None) -> bool:
        return (self.canonical(name) or self.key(name)) in self._loaded


def embedded_available() -> bool:
    from adapt.backbones import EMBEDDED_DIR

    return (EMBEDDED_DIR / "config.json").exists()


def model_notice(default: str) -> str:
    """A warning for the page when the default model cannot be used ('' when all is well)."""
    if Models.key(default) == EMBEDDED:
        if embedded_available():
            return ""
        from adapt.backbones import EMBEDDED_DIR

        where = f"expected in `{shown_path(EMBEDDED_DIR)}`"
        what = "The embedded model is not installed"
    else:
        path = Path(default).expanduser()
        looks_local = default.startswith((".", "/", "~")) or path.exists()
        if not looks_local or (path / "config.json").exists():
            return ""
        where = f"`{path.name}` has no config.json"
        what = "The default model is missing"
    return (f"⚠️ **{what}** ({where}). Open a saved trace, or choose another backbone under *Method settings* "
            f"(the operator offers more with `{MODELS_ENV}`: folders or hub ids of {supported_families()}).")
