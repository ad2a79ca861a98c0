"""The benchmark task registry: each task = dataset + prompt + scoring + aggregation.

==============  =====================================================================
name            what
==============  =====================================================================
``world``       exact CHAIR and POPE on the synthetic world (:mod:`.world`)
``chair-coco``  CHAIR on a fixed sample of COCO images (:class:`.coco_tasks.ChairCoco`)
``pope``        POPE question files (:class:`.coco_tasks.Pope`)
``amber``       AMBER generative and yes/no queries (:class:`.coco_tasks.Amber`)
``refcoco``     grounding from the anchor on RefCOCO-style items (:class:`.grounding.RefCoco`)
``world-grounding``  the same on the world's grounding items (:class:`.grounding.WorldGrounding`)
``mmhal``       MMHal-Bench answers rated by an LLM judge you configure (:class:`.mmhal.MMHal`)
==============  =====================================================================

Data are read from local paths only; nothing is downloaded.
"""

from __future__ import annotations

from .base import Task
from .coco_tasks import Amber, ChairCoco, Pope
from .grounding import RefCoco, WorldGrounding
from .mmhal import MMHal
from .world import WorldTask

TASKS: dict[str, type[Task]] = {"world": WorldTask, "chair-coco": ChairCoco, "pope": Pope, "amber": Amber,
                                "refcoco": RefCoco, "world-grounding": WorldGrounding, "mmhal": MMHal}


def get_task(name: str, **params) -> Task:
    """The task registered under ``name``, built with ``params`` (its constructor's arguments)."""
    try:
        cls = TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r} (available: {', '.join(TASKS)})") from None
    return cls(**params)


__all__ = ["TASKS", "Task", "get_task", "WorldTask", "ChairCoco", "Pope", "Amber", "RefCoco", "WorldGrounding", "MMHal"]
