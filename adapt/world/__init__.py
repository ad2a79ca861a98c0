"""The synthetic scene world: procedural scenes with exact ground truth, their text, benchmarks.

Public API::

    make_split(name, n, seed=None) -> list[Scene]      # "train" | "validation" | "test"
    Scene.image() -> PIL.Image; Scene.objects -> list[WorldObject]; Scene.is_trap
    Scene.description(rng=None) -> str; Scene.pope_questions(kind) -> list[dict]
    Scene.grounding_items() -> list[dict]; Scene.absent_partners -> list[str]
    read_objects(text) -> list[str]                     # category mentions, in order
    sample_scene(seed, trap=False, cfg=WorldConfig())  # one scene
"""
from .datasets import grounding_items, make_split, pope_questions, training_conversation, training_example, training_statistics
from .language import DEFAULT_DESCRIBE_PROMPT, describe, pope_question, read_object_spans, read_objects, vocabulary
from .scenes import (
    CATEGORIES,
    COLOUR_NAMES,
    IMAGE_SIZE,
    PAIRS,
    PARTNER,
    POSITIONS,
    Scene,
    WorldConfig,
    WorldObject,
    patch_labels,
    render,
    sample_scene,
)

__all__ = [
    "CATEGORIES",
    "COLOUR_NAMES",
    "DEFAULT_DESCRIBE_PROMPT",
    "IMAGE_SIZE",
    "PAIRS",
    "PARTNER",
    "POSITIONS",
    "Scene",
    "WorldConfig",
    "WorldObject",
    "describe",
    "grounding_items",
    "make_split",
    "patch_labels",
    "pope_question",
    "pope_questions",
    "read_object_spans",
    "read_objects",
    "render",
    "sample_scene",
    "training_conversation",
    "training_example",
    "training_statistics",
    "vocabulary",
]
