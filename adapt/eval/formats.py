"""Reading the benchmarks' public file formats with errors a user can act on.

Every problem with a data file is a :class:`DataError` whose message names the file and, for JSONL,
the line: the CLI prints it as one line and exits 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator


class DataError(ValueError):
    """A data file that is missing, unreadable or not in the expected format."""


def _open_error(path: Path, exc: Exception, expected: str, what: str) -> DataError:
    """The one-line error for a data file that could not be opened or decoded."""
    if isinstance(exc, FileNotFoundError):
        return DataError(f"{path}: no such {what}")
    if isinstance(exc, IsADirectoryError):
        return DataError(f"{path}: is a folder, expected {expected}")
    return DataError(f"{path}: cannot be read ({type(exc).__name__})")


def read_json(path: str | Path, what: str = "file"):
    """The JSON document at ``path``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _open_error(path, exc, f"a JSON {what}", what) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno} column {exc.colno})") from None


def iter_jsonl(path: str | Path, required: tuple[str, ...] = (), what: str = "file") -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for every non-blank line of a JSONL file; a line that is not a JSON
    object or lacks one of ``required`` is an error naming the file and the line."""
    path = Path(path)
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise _open_error(path, exc, f"a JSONL {what}", what) from None
    with handle:
        lineno = 0
        try:
            for lineno, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}, line {lineno}: not valid JSON ({exc.msg})") from None
                if not isinstance(obj, dict):
                    raise DataError(f"{path}, line {lineno}: expected a JSON object, got {type(obj).__name__}")
                missing = [k for k in required if k not in obj]
                if missing:
                    raise DataError(f"{path}, line {lineno}: missing field(s) {', '.join(missing)}")
                yield lineno, obj
        except UnicodeDecodeError:
            raise DataError(f"{path}, line {lineno + 1}: not UTF-8 text") from None


def write_json(path: str | Path, obj) -> None:
    """Write ``obj`` as indented JSON, atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1), encoding="utf-8")
    tmp.replace(path)
