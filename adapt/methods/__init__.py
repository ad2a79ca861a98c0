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
"""

from __future__ import annotations

from ..anchor import BiasCache
from ..config import AdaptConfig
from .adapt_tf import PAI_LIKE, VARIANTS, AdaptTF, variant_config
from .base import Answer, Method
from .greedy import Greedy
from .opera import OPERA, OPERAConfig
from .pai import PAI, PAIConfig, attention_only
from .vcd import VCD, VCDConfig

NAMES = ["greedy", "greedy:sdpa", "adapt-tf", *[f"adapt-tf:{v}" for v in VARIANTS], "pai", "pai:attn", *PAI_LIKE, "vcd", "opera"]


def describe() -> dict[str, str]:
    """One line per registered method (the CLI's help and the app's choice show them)."""
    out = {"greedy": Greedy().description, "greedy:sdpa": Greedy(capture=False).description,
           "adapt-tf": AdaptTF.description, "pai": PAI.description,
           "pai:attn": PAI(attention_only()).description,
           "vcd": VCD.description, "opera": OPERA.description}
    for v, over in VARIANTS.items():
        out[f"adapt-tf:{v}"] = "ADAPT-TF, " + ", ".join(f"{k}={val}" for k, val in over.items())
    for v, over in PAI_LIKE.items():
        out[v] = "PAI-like (no anchor direction), " + ", ".join(f"{k}={val}" for k, val in over.items())
    return out


def get_method(name: str, cfg: AdaptConfig | None = None, cache: BiasCache | None = None) -> Method:
    """The method registered under ``name`` (``adapt-tf`` and its variants use ``cfg``)."""
    name = name.strip()
    base, _, variant = name.partition(":")
    if name == "greedy":
        return Greedy()
    if name == "greedy:sdpa":
        return Greedy(capture=False)
    if name == "pai":
        return PAI()
    if name == "pai:attn":
        return PAI(attention_only(), name=name)
    if name == "vcd":
        return VCD()
    if name == "opera":
        return OPERA()
    if name in PAI_LIKE:
        return AdaptTF((cfg or AdaptConfig()).replace(**PAI_LIKE[name]), cache, name=name)
    if base == "adapt-tf":
        if variant and variant not in VARIANTS:
            raise ValueError(f"unknown method {name!r}; available: {', '.join(NAMES)}")
        return AdaptTF(variant_config(cfg or AdaptConfig(), variant or None), cache, name=name)
    raise ValueError(f"unknown method {name!r}; available: {', '.join(NAMES)}")


def get_methods(names: list[str] | str, cfg: AdaptConfig | None = None, cache: BiasCache | None = None) -> list[Method]:
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    return [get_method(n, cfg, cache) for n in names]


__all__ = ["Answer", "Method", "Greedy", "AdaptTF", "PAI", "PAIConfig", "VCD", "VCDConfig", "OPERA",
           "OPERAConfig", "VARIANTS", "NAMES", "describe", "get_method", "get_methods"]
