"""Decoding methods, looked up by name by the world benchmark, the CLI and the app.

=======================  ===============================================================
name                     what
=======================  ===============================================================
``greedy``               greedy decoding, capture on, nothing steered (the steered numerics)
``greedy:sdpa``          greedy decoding with stock SDPA
``adapt-tf``             ADAPT-TF with the configuration given (the defaults of ``AdaptConfig``)
``adapt-tf:<variant>``   a named reading of the paper (:data:`adapt.methods.adapt_tf.VARIANTS`)
``pai``                  PAI: image attention amplified, guided away from the text-only prior (public defaults)
``pai:attn``             PAI's attention part alone (γ = 1)
``image-boost``          +0.5 on every image logit at every layer and step (PAI-like: no anchor)
``vcd``                  VCD: contrast with the image under forward noise, plausibility cutoff (greedy)
``opera``                OPERA: beam search with the over-trust penalty and rollback (retrospection)
=======================  ===============================================================

A method registers itself with the :func:`~adapt.methods.base.register` decorator (name, variants,
one line each); the CLI's ``--method`` choices, the app's comparison choice and the benchmarks read
this registry.
"""

from __future__ import annotations

from ..anchor import BiasCache
from ..config import AdaptConfig
from .base import REGISTRY, Answer, Method, Registered, register

# each module registers its methods with @register; the import order is the registry's order
from .greedy import Greedy  # noqa: E402  (registers greedy, greedy:sdpa)
from .adapt_tf import PAI_LIKE, VARIANTS, AdaptTF, variant_config  # noqa: E402  (adapt-tf and its variants)
from .pai import PAI, PAIConfig, attention_only  # noqa: E402  (pai, pai:attn)
from . import image_boost  # noqa: E402, F401  (the PAI-like settings of ADAPT-TF)
from .vcd import VCD, VCDConfig  # noqa: E402
from .opera import OPERA, OPERAConfig  # noqa: E402


def names() -> list[str]:
    """Every registered name, in registration order (read on each call: later registrations appear)."""
    return list(REGISTRY)


NAMES = names()  # the names registered by this package's own modules


def describe() -> dict[str, str]:
    """One line per registered method (the CLI's help and the app's choice show them)."""
    return {name: entry.description for name, entry in REGISTRY.items()}


def get_method(name: str, cfg: AdaptConfig | None = None, cache: BiasCache | None = None) -> Method:
    """The method registered under ``name`` (``adapt-tf`` and its variants use ``cfg``)."""
    entry = REGISTRY.get(name.strip())
    if entry is None:
        raise ValueError(f"unknown method {name.strip()!r}; available: {', '.join(names())}")
    return entry.build(cfg, cache)


def get_methods(names: list[str] | str, cfg: AdaptConfig | None = None, cache: BiasCache | None = None) -> list[Method]:
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    return [get_method(n, cfg, cache) for n in names]


__all__ = ["Answer", "Method", "Greedy", "AdaptTF", "PAI", "PAIConfig", "VCD", "VCDConfig", "OPERA",
           "OPERAConfig", "VARIANTS", "PAI_LIKE", "NAMES", "REGISTRY", "Registered", "register", "names",
           "describe", "get_method", "get_methods", "variant_config", "attention_only"]
