"""What a benchmark task gives the runner: its items, how a method answers a batch of them, and how the
answers are scored and aggregated."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from ..formats import DataError


class Task(ABC):
    """One registered benchmark task (dataset + prompt + scoring + aggregation).

    Subclasses set ``name`` and implement :meth:`items`, :meth:`run_batch` and :meth:`summarise`.
    Records are plain JSON objects carrying the item's ``"id"``; the runner writes one per item as it
    goes, so :meth:`summarise` sees only what is on disk."""

    name = ""
    description = ""
    table_keys: tuple[str, ...] = ()  # the figures of the summary tables, in order
    batch_size = 16

    def params(self) -> dict:
        """What defines the task's data and prompts (in ``run.json`` and the config hash)."""
        return {}

    @abstractmethod
    def items(self) -> list:
        """The task's items in a fixed order; each has a unique string :meth:`item_id`."""

    def item_id(self, item) -> str:
        return str(item["id"])

    @abstractmethod
    def run_batch(self, backbone, method, items: list) -> list[dict]:
        """One record per item, in order."""

    @abstractmethod
    def summarise(self, records: list[dict]) -> dict:
        """One method's figures from its records."""

    def summarise_run(self, run_dir: Path, methods: list[str], records: dict[str, list[dict]]) -> dict:
        """Every method's figures; a task may compare methods here (the world does, against the first)."""
        return {m: self.summarise(records[m]) for m in methods if m in records}

    def prepare(self, run_dir: Path) -> None:
        """Write what travels with the results (e.g. the sampled image ids) into ``run_dir``."""


def load_images(root: str | Path | None, names: list[str]):
    """The images ``names`` under ``root`` at their original size (the processor resizes)."""
    from ...images import ImageError, load_image

    out = []
    for name in names:
        path = Path(root) / name if root else Path(name)
        try:
            out.append(load_image(path, max_side=None))
        except ImageError as exc:
            raise DataError(f"{path}: {exc}") from None
    return out


def need(value, flag: str, task: str):
    """``value``, or a usage error saying which option the task needs."""
    if not value:
        raise DataError(f"task {task} needs {flag}")
    return value
