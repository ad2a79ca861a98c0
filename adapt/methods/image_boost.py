"""Settings of the ADAPT-TF machinery that drop the anchor's direction (:data:`~adapt.methods.adapt_tf.PAI_LIKE`):
registered under their own names, PAI-like, never called ADAPT-TF."""

from __future__ import annotations

from ..config import AdaptConfig
from .adapt_tf import PAI_LIKE, AdaptTF, _settings
from .base import register


def _pai_like(variant, cfg, cache, name: str) -> AdaptTF:
    return AdaptTF((cfg or AdaptConfig()).replace(**PAI_LIKE[name]), cache, name=name)


for _name, _over in PAI_LIKE.items():
    register(_name, "PAI-like (no anchor direction), " + _settings(_over))(_pai_like)
