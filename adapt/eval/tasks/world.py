"""The synthetic world as a registered task: the same scenes, answers and figures as
``python -m adapt eval --benchmark world`` (it calls :mod:`adapt.eval.world_bench`)."""

from __future__ import annotations

from pathlib import Path

from .. import world_bench
from .base import Task


class WorldTask(Task):
    """Exact CHAIR and POPE on world scenes (``split``, ``seeds``, ``limit`` scenes of each seed)."""

    name = "world"
    description = "exact CHAIR and POPE on the synthetic world (the embedded model's benchmark)"
    table_keys = world_bench.TABLE_KEYS

    def __init__(self, split: str = "test", seed: int | None = None, seeds: list[int] | None = None,
                 limit: int | None = None, pope: bool = True, describe_tokens: int = 128, batch_size: int = 32):
        self.run = world_bench.WorldRun(split=split, seed=seed, seeds=seeds, limit=limit, pope=pope,
                                        describe_tokens=describe_tokens, batch_size=batch_size)
        self.batch_size = batch_size
        self._scenes = None

    def params(self) -> dict:
        r = self.run
        return {"split": r.split, "seeds": r.seed_list(), "per_seed": r.per_seed(), "pope": r.pope,
                "describe_tokens": r.describe_tokens}

    def items(self) -> list:
        if self._scenes is None:
            self._scenes = world_bench.scenes_of(self.run)
        return list(range(len(self._scenes)))

    def item_id(self, item) -> str:
        return str(item)

    def run_batch(self, backbone, method, items: list) -> list[dict]:
        self.items()
        recs = world_bench.evaluate_scenes(backbone, method, [self._scenes[i] for i in items], list(items),
                                           self.run.describe_tokens, self.run.pope)
        for r in recs:
            r["id"] = str(r["index"])
        return recs

    def summarise(self, records: list[dict]) -> dict:
        return world_bench.summarise_items(sorted(records, key=lambda r: r["index"]))

    def summarise_run(self, run_dir: Path, methods: list[str], records: dict[str, list[dict]]) -> dict:
        # world_bench.summarise reads the merged items-<method>.jsonl the runner writes, so both paths
        # compute every figure (and the CIs against the first method) with the same code
        return world_bench.summarise(run_dir, [m for m in methods if m in records], len(self.items()))
