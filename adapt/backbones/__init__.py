"""Model families behind one interface, and :func:`load_backbone` which picks the right one."""

from __future__ import annotations

import json
from pathlib import Path

from ..paths import asset
from .base import Backbone, BackboneError, Generation, Prepared
from .catalog import CATALOG, FamilyInfo
from .gemma3 import Gemma3Backbone
from .idefics3 import Idefics3Backbone, Idefics3TiledBackbone
from .internvl import InternVLBackbone
from .llava import LlavaBackbone
from .llava_next import LlavaNextBackbone
from .llava_onevision import LlavaOnevisionBackbone
from .mllama import MllamaBackbone
from .paligemma import PaliGemmaBackbone
from .qwen2_5_vl import Qwen2_5_VLBackbone
from .qwen2_vl import Qwen2VLBackbone
from .qwen3_5 import Qwen3_5Backbone
from .qwen3_vl import Qwen3VLBackbone, Qwen3VLMoeBackbone

FAMILIES: dict[str, type[Backbone]] = {
    "llava": LlavaBackbone,
    "llava_next": LlavaNextBackbone,
    "llava_onevision": LlavaOnevisionBackbone,
    "qwen2_vl": Qwen2VLBackbone,
    "qwen2_5_vl": Qwen2_5_VLBackbone,
    "qwen3_vl": Qwen3VLBackbone,
    "qwen3_vl_moe": Qwen3VLMoeBackbone,
    "paligemma": PaliGemmaBackbone,
    "idefics3": Idefics3Backbone,
    "gemma3": Gemma3Backbone,
    "qwen3_5": Qwen3_5Backbone,
    "internvl": InternVLBackbone,
    "mllama": MllamaBackbone,
}

EMBEDDED = "embedded"
EMBEDDED_DIR = asset("embedded")


def resolve(name_or_path: str) -> str:
    """``"embedded"`` → the shipped model's directory; anything else is a local path or hub id."""
    if name_or_path in (EMBEDDED, "", None):
        if not (EMBEDDED_DIR / "config.json").exists():
            raise BackboneError(f"the embedded model is missing from {EMBEDDED_DIR}")
        return str(EMBEDDED_DIR)
    return str(Path(name_or_path).expanduser()) if Path(name_or_path).expanduser().exists() else name_or_path


def model_type_of(path: str, trust_remote_code: bool = False) -> str:
    p = Path(path)
    if p.is_dir():
        cfg = p / "config.json"
        if not cfg.exists():
            raise BackboneError(f"{path} is a directory without a config.json: not a model checkpoint")
        return json.loads(cfg.read_text()).get("model_type", "")
    if p.exists():
        raise BackboneError(f"{path} is a file; give a model directory or a hub id")
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code).model_type
    except Exception as exc:  # hub id unknown, offline, no such path
        raise BackboneError(f"cannot find a model at '{path}' (no such directory, and the hub "
                            f"could not resolve it: {type(exc).__name__})") from exc


_ON = {"on": True, "true": True, "1": True, "yes": True, "off": False, "false": False, "0": False, "no": False}


def split_options(name_or_path: str) -> tuple[str, dict[str, bool]]:
    """``"DIR?image_splitting=off"`` → ``("DIR", {"image_splitting": False})``: a family's load options written
    after the model's name (so every place that takes a model name, the CLI's ``--backbone`` and the app's
    model list among them, can pass them). A name that is an existing path is kept whole."""
    name = str(name_or_path or "")
    if "?" not in name or Path(name).expanduser().exists():
        return name_or_path, {}
    name, _, query = name.rpartition("?")
    options = {}
    for part in filter(None, query.split("&")):
        key, eq, value = part.partition("=")
        key = key.strip()
        flag = _ON.get(value.strip().lower()) if eq else None
        if not key or flag is None:
            raise BackboneError(f"model option '{part}' after '?' must read name=on or name=off "
                                f"(e.g. {name}?image_splitting=off)")
        options[key] = flag
    return name, options


def _flag(key: str, value) -> bool:
    flag = _ON.get(value.strip().lower()) if isinstance(value, str) else value
    if not isinstance(flag, bool):
        raise BackboneError(f"model option {key}={value!r} must be on or off (True / False)")
    return flag


def load_backbone(name_or_path: str = EMBEDDED, dtype="auto", device: str | None = None, device_map=None,
                  trust_remote_code: bool = False, **options) -> Backbone:
    """Load a supported multimodal model (local directory, hub id, or ``"embedded"``).

    ``device_map`` (e.g. ``"auto"``, needs accelerate) is for GPU users; ``trust_remote_code``
    stays off unless asked for. ``options``: the family's load options (``Backbone.load_options``; Idefics3 /
    SmolVLM: ``image_splitting``), True / False, or None for the checkpoint's own setting; also written
    after the name, ``DIR?image_splitting=off`` (a keyword wins over the same option in the name).
    """
    name_or_path, written = split_options(name_or_path)
    options = {**written, **{k: _flag(k, v) for k, v in options.items() if v is not None}}
    path = resolve(name_or_path)
    model_type = model_type_of(path, trust_remote_code)
    family = FAMILIES.get(model_type)
    if family is None:
        raise BackboneError(f"unsupported model family '{model_type or '?'}' at {path}; "
                            f"supported: {', '.join(sorted(FAMILIES))} "
                            f"({', '.join(CATALOG[k].name for k in FAMILIES)}, and the embedded model)")
    return family.load(path, dtype=dtype, device=device, device_map=device_map,
                       trust_remote_code=trust_remote_code, **options)


__all__ = ["Backbone", "BackboneError", "Generation", "Prepared", "FAMILIES", "EMBEDDED", "load_backbone",
           "split_options", "LlavaBackbone", "LlavaNextBackbone", "LlavaOnevisionBackbone",
           "Qwen2VLBackbone", "Qwen2_5_VLBackbone", "Qwen3VLBackbone", "Qwen3VLMoeBackbone",
           "PaliGemmaBackbone", "Idefics3Backbone", "Idefics3TiledBackbone", "Gemma3Backbone", "Qwen3_5Backbone",
           "InternVLBackbone", "MllamaBackbone", "CATALOG", "FamilyInfo"]
