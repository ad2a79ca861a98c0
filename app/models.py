"""Loaded backbones, shared by every visitor: an LRU cache, warm-up, and the missing-model notice."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path

from .names import shown_path

log = logging.getLogger("adapt.app")

EMBEDDED = "embedded"


class Models:
    """Loaded backbones, least recently used first out (at most ``capacity`` in memory)."""

    def __init__(self, default: str = EMBEDDED, capacity: int = 2, resolve=None):
        """``resolve``: name → what :func:`adapt.backbones.load_backbone` loads (the app's names for
        tuned models, such as ``job:<id>``, stand for server folders it does not show)."""
        self.default = default or EMBEDDED
        self.resolve = resolve or (lambda name: name)
        self.capacity = max(1, capacity)
        self._loaded: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()
        self.errors: dict[str, str] = {}

    @staticmethod
    def key(name: str | None) -> str:
        name = (name or "").strip()
        return name or EMBEDDED

    def get(self, name: str | None = None):
        """The backbone called ``name`` (``"embedded"``, a local directory or a hub id)."""
        from adapt.backbones import BackboneError, load_backbone

        key = self.key(name or self.default)
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
            source = self.resolve(key)
            try:
                bb = load_backbone(source)
            except BackboneError as exc:
                self.errors[key] = str(exc)
                raise
            except Exception as exc:  # a broken checkpoint, out of memory, ...
                self.errors[key] = f"{type(exc).__name__}: {exc}"
                raise BackboneError(f"could not load the model '{key}': {type(exc).__name__}: {exc}") from exc
            self.errors.pop(key, None)
            self._loaded[key] = bb
            while len(self._loaded) > self.capacity:
                self._loaded.popitem(last=False)
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
                    analyse(bb, load_image(path), question, knobs)
                except Exception as exc:  # a warm-up failure is only a slower first click
                    log.warning("warm-up on %s failed: %s", path, exc)

        threading.Thread(target=run, name="adapt-warm", daemon=True).start()

    def is_loaded(self, name: str | None) -> bool:
        return self.key(name) in self._loaded


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
    return (f"⚠️ **{what}** ({where}). Open a saved trace, or choose another backbone (a local LLaVA-1.5 / "
            "Qwen2.5-VL checkpoint directory or hub id) under *Method settings*.")
