"""Anchor-guided datasets (paper Sec. 4.1.4) at scale: Hugging Face datasets in and out.

``export-anchors`` reads a folder of images, a JSONL list, parquet shards in the Hub layout, a
``save_to_disk`` folder or a Hub id (:mod:`.sources`); runs the anchor-only path — prefill + K greedy
steps, the anchor W, the enhancement — batched by image-token layout, one grid or several views
(:mod:`.anchors`); and writes a dataset the Hub accepts as is, resumable and shardable across
``accelerate launch`` processes (:mod:`.run`). File names follow one rule everywhere (:mod:`.names`).

Names are imported on first use, so the command line's parser does not load the model stack.
"""

from importlib import import_module

_WHERE = {
    "NoiseMaps": "anchors", "anchor_batch": "anchors", "anchor_columns": "anchors", "original_geometry": "anchors",
    "safe_id": "names", "unique_ids": "names",
    "Dist": "run", "ExportOptions": "run", "ExportResult": "run", "distributed": "run", "export_dataset": "run",
    "read_rows": "run", "shard_of": "run",
    "ROW_ID": "sources", "ExportError": "sources", "Row": "sources", "Source": "sources",
    "open_source": "sources", "rows_source": "sources",
}
__all__ = list(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
