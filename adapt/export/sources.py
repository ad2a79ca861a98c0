"""What an export reads: a folder of images, a JSONL list, a Hugging Face dataset (parquet shards in
the Hub layout, a ``save_to_disk`` folder, or a Hub id), or rows given in memory (the app's uploads).

Every input becomes a :class:`Source` whose :meth:`Source.rows` yields :class:`Row` objects in a fixed
order, with a unique ``row_id`` that depends only on the input (so a rerun, or another process of a
sharded run, finds the same ids). Images stay undecoded here: the exporter decodes them beside the
model, with :func:`adapt.images.load_image`'s size checks. Nothing is written anywhere (parquet is read
with pyarrow, ``save_to_disk`` folders are memory-mapped, Hub ids are streamed), so no cache grows
outside the output folder.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ..images import EXTENSIONS
from .names import dedupe, safe_id, unique_ids

ROW_ID = "row_id"  # the unique key of every output row (the input's id, made unique, or its index)


class ExportError(ValueError):
    """The export cannot run as asked (unreadable input, unknown column, another configuration in
    OUT, ...), as opposed to one bad row, which becomes a row with ``status: error``."""


@dataclass
class Row:
    """One input row: its key, what a person calls it, its question and undecoded image."""

    index: int
    row_id: str
    name: str  # in reports: the user's file name, else the id
    question: str
    image: object  # bytes, a path, or None
    values: dict  # the input's columns (and ``row_id`` / ``question`` where the exporter adds them)
    error: str = ""  # a problem found while reading (no image, no question)


@dataclass
class Source:
    """An input dataset (see the module docstring); build one with :func:`open_source` or :func:`rows_source`."""

    kind: str  # folder | jsonl | parquet | disk | hub | rows
    description: str  # for the dataset card: where it came from (never a server scratch path)
    features: object  # datasets.Features of the output's input columns
    num_rows: int | None
    image_column: str
    question_column: str
    id_column: str | None
    default_question: str | None
    batches: Callable[[], Iterator[list[dict]]] = field(repr=False)
    base_dir: Path | None = None
    name_column: str | None = None  # file_name for folders, JSONL lists and uploads

    @property
    def writes_files(self) -> bool:
        """Folder-style inputs also get ``images/<id>.png`` and ``manifest.jsonl``."""
        return self.kind in ("folder", "jsonl", "rows")

    def rows(self) -> Iterator[Row]:
        seen: set[str] = set()
        index = 0
        for batch in self.batches():
            for raw in batch:
                yield self._row(index, raw, seen)
                index += 1

    def _row(self, index: int, raw: dict, seen: set[str]) -> Row:
        values = {k: raw.get(k) for k in self.features}
        key = raw.get(self.id_column) if self.id_column else None
        base = f"{index:08d}" if key is None or str(key) == "" else str(key)
        row_id, k = base, 1
        while row_id in seen:  # same-named rows never share an output
            k += 1
            row_id = f"{base}-{k}"
        seen.add(row_id)
        values[ROW_ID] = row_id
        question = str(raw.get(self.question_column) or "").strip() or (self.default_question or "")
        values[self.question_column] = question
        name = str(raw.get(self.name_column) or row_id) if self.name_column else row_id
        image, error = _image_ref(raw.get(self.image_column), self.base_dir)
        error = raw.get("_error") or error  # what the caller already found (an upload that is no image)
        if not error and not question:
            error = (f"no question (empty '{self.question_column}'; give --question for such rows)"
                     if self.question_column in raw else "no question: give --question")
        return Row(index=index, row_id=row_id, name=name, question=question, image=image, values=values, error=error)


def _image_ref(value, base: Path | None) -> tuple[object, str]:
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"], ""
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)) and value:
        return bytes(value), ""
    if isinstance(value, str) and value:
        path = Path(value)
        return str(path if path.is_absolute() or base is None else base / path), ""
    return None, "no image in this row"


def _features_for(kind_columns: dict):
    from datasets import Features, Image, Value

    return Features({k: Image() if v == "image" else Value("string") for k, v in kind_columns.items()})


def _file_rows(rows: list[dict]) -> Callable[[], Iterator[list[dict]]]:
    return lambda: iter([rows])


def rows_source(rows: list[dict], question: str | None = None, description: str = "uploaded files") -> Source:
    """Rows given in memory, ``{"file_name": the user's name, "image": bytes or None, "question": str,
    "error": optional reason}`` (the app's uploads): ids follow :func:`~adapt.export.names.unique_ids`,
    and a row with an ``error`` is written as an error row with it."""
    ids = unique_ids([r["file_name"] for r in rows])
    table = [{"row_id": i, "file_name": r["file_name"], "question": r.get("question") or "",
              "image": {"bytes": r.get("image"), "path": r["file_name"]}, "_error": r.get("error") or ""}
             for i, r in zip(ids, rows)]
    return Source(kind="rows", description=description, num_rows=len(table), image_column="image",
                  question_column="question", id_column="row_id", default_question=question,
                  features=_features_for({"file_name": "str", "image": "image", "question": "str"}),
                  batches=_file_rows(table), name_column="file_name")


def _folder(path: Path, question: str | None) -> Source:
    qfile = path / "questions.jsonl"
    if qfile.exists() and question is None:
        return _jsonl(qfile, None)
    if not question:
        raise ExportError("a folder of images needs --question (or a questions.jsonl inside it)")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in EXTENSIONS and p.is_file())
    if not files:
        raise ExportError(f"no images ({', '.join(sorted(EXTENSIONS))}) in {path}")
    table = [{"row_id": i, "file_name": p.name, "question": question, "image": {"bytes": None, "path": p.name}}
             for i, p in zip(unique_ids([p.name for p in files]), files)]
    return Source(kind="folder", description=f"folder {path.name}", num_rows=len(table), image_column="image",
                  question_column="question", id_column="row_id", default_question=question,
                  features=_features_for({"file_name": "str", "image": "image", "question": "str"}),
                  batches=_file_rows(table), base_dir=path, name_column="file_name")


def _jsonl(path: Path, question: str | None) -> Source:
    table, names, given = [], [], []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            if not isinstance(d, dict):
                raise TypeError("not an object")
        except (json.JSONDecodeError, TypeError) as exc:
            raise ExportError(f"{path.name}:{n}: not a JSON object with 'image' and 'question' ({exc})") from None
        image = str(d.get("image") or "")
        table.append({"file_name": image, "question": str(d.get("question") or ""),
                      "image": {"bytes": None, "path": image} if image else None})
        names.append(image or f"line-{n}")
        given.append(d.get("id"))
    if not table:
        raise ExportError(f"{path.name}: no rows")
    auto = unique_ids(names)
    ids = dedupe([safe_id(g) if g else a for g, a in zip(given, auto)])
    for row, i in zip(table, ids):
        row["row_id"] = i
    return Source(kind="jsonl", description=f"list {path.name}", num_rows=len(table), image_column="image",
                  question_column="question", id_column="row_id", default_question=question,
                  features=_features_for({"file_name": "str", "image": "image", "question": "str"}),
                  batches=_file_rows(table), base_dir=path.parent, name_column="file_name")


def _parquet_files(path: Path, split: str) -> list[Path]:
    if path.is_file():
        return [path]
    from datasets.data_files import DataFilesDict, get_data_patterns

    try:
        patterns = get_data_patterns(str(path))
        files = DataFilesDict.from_local_or_remote(patterns, base_path=str(path))
    except Exception as exc:  # datasets raises its own EmptyDatasetError / FileNotFoundError
        raise ExportError(f"{path}: no data files in the Hub layout ({type(exc).__name__})") from None
    if split not in files:
        raise ExportError(f"{path}: no split {split!r} (splits: {', '.join(files) or 'none'}); give --split")
    return [Path(f) for f in files[split] if str(f).endswith(".parquet")]


def _table_source(kind: str, description: str, features, num_rows, batches, image_column, question_column,
                  id_column, question, base_dir) -> Source:
    from datasets import Value

    columns = list(features)
    if not columns:
        raise ExportError(f"{description}: no columns")
    if image_column not in features:
        raise ExportError(f"no image column {image_column!r} in {description} (columns: {', '.join(columns)}); "
                          "give --image-column")
    if id_column is not None and id_column not in features:
        raise ExportError(f"no id column {id_column!r} in {description} (columns: {', '.join(columns)})")
    if question_column not in features and not question:
        raise ExportError(f"no question column {question_column!r} in {description} (columns: "
                          f"{', '.join(columns)}); give --question-column or --question")
    features = features.copy()
    if question_column not in features:
        features[question_column] = Value("string")
    return Source(kind=kind, description=description, features=features, num_rows=num_rows,
                  image_column=image_column, question_column=question_column, id_column=id_column,
                  default_question=question, batches=batches, base_dir=base_dir)


def open_source(input: str | Path, question: str | None = None, image_column: str = "image",
                question_column: str = "question", id_column: str | None = None, split: str = "train") -> Source:
    """The input named by ``input`` (see the module docstring). ``id_column`` defaults to ``id`` where the
    dataset has one, else the row's index; a column named but absent, or no question at all, is an
    :class:`ExportError`."""
    text = str(input)
    path = Path(text).expanduser()
    if path.is_file() and path.suffix == ".jsonl":
        return _jsonl(path, question)
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        return _disk(path, question, image_column, question_column, id_column, split)
    if path.is_file() and path.suffix == ".parquet" or path.is_dir() and next(path.rglob("*.parquet"), None):
        return _parquet(path, question, image_column, question_column, id_column, split)
    if path.is_dir():
        return _folder(path, question)
    if path.exists():
        raise ExportError(f"{text}: not a folder of images, a .jsonl list, parquet shards or a dataset folder")
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text) and not text.startswith("."):
        return _hub(text, question, image_column, question_column, id_column, split)
    raise ExportError(f"{text}: no such file or folder")


def _default_id(features, id_column):
    return id_column if id_column is not None else ("id" if "id" in features else None)


def _parquet(path, question, image_column, question_column, id_column, split) -> Source:
    import pyarrow.parquet as pq
    from datasets import Features

    files = _parquet_files(path, split)
    if not files:
        raise ExportError(f"{path}: no parquet files for split {split!r}")
    try:
        features = Features.from_arrow_schema(pq.read_schema(files[0]))
        num_rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    except Exception as exc:
        raise ExportError(f"{files[0].name}: not a readable parquet file ({type(exc).__name__})") from None

    def batches():
        for f in files:
            for b in pq.ParquetFile(f).iter_batches(batch_size=256):
                yield b.to_pylist()

    src = _table_source("parquet", f"parquet {path.name} ({split})", features, num_rows, batches, image_column,
                        question_column, _default_id(features, id_column), question, path if path.is_dir() else path.parent)
    if num_rows == 0:
        raise ExportError(f"{path}: the dataset has no rows")
    return src


def _disk(path, question, image_column, question_column, id_column, split) -> Source:
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except Exception as exc:
        raise ExportError(f"{path}: not a readable save_to_disk folder ({type(exc).__name__})") from None
    if isinstance(ds, DatasetDict):
        if split not in ds:
            raise ExportError(f"{path}: no split {split!r} (splits: {', '.join(ds)}); give --split")
        ds = ds[split]
    if len(ds) == 0:
        raise ExportError(f"{path}: the dataset has no rows")

    def batches():
        for b in ds.with_format("arrow").iter(batch_size=256):
            yield b.to_pylist()

    return _table_source("disk", f"dataset {path.name} ({split})", ds.features, len(ds), batches, image_column,
                         question_column, _default_id(ds.features, id_column), question, path)


def _hub(name, question, image_column, question_column, id_column, split) -> Source:
    from datasets import Image, load_dataset

    try:  # streamed: nothing is cached outside OUT
        ds = load_dataset(name, split=split, streaming=True)
    except Exception as exc:
        raise ExportError(f"{name}: cannot open it on the Hub ({type(exc).__name__}: {exc})") from None
    features = ds.features
    if features is None:
        raise ExportError(f"{name}: the Hub gives no column types for streaming; download it and pass the folder")
    if isinstance(features.get(image_column), Image):
        ds = ds.cast_column(image_column, Image(decode=False))

    def batches():
        for b in ds.iter(batch_size=64):
            yield [dict(zip(b, vals)) for vals in zip(*b.values())]

    return _table_source("hub", f"{name} ({split})", features, None, batches, image_column, question_column,
                         _default_id(features, id_column), question, None)
