"""argparse ``type=`` checks shared by every subcommand: a value out of range is refused while the
command line is parsed (exit 2, one line naming the flag), before a model loads or a file is written."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

# torch's CPU pool above a few threads per core only spins; far above, OpenMP cannot create them (a
# segfault at 100 000)
MAX_THREADS = min(256, 4 * (os.cpu_count() or 1))


def int_range(lo: int, hi: int | None = None, why: str = ""):
    """A whole number in ``lo … hi`` (no upper bound when ``hi`` is None)."""
    span = f"{lo} … {hi}" if hi is not None else f"at least {lo}"

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number ({span}), got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be {span}{why}, got {value}")
        return value

    parse.__name__ = "whole number"
    return parse


def float_range(lo: float, hi: float, lo_open: bool = False):
    """A finite number in ``[lo, hi]`` (``(lo, hi]`` when ``lo_open``); never NaN or ±inf."""
    span = f"above {lo:g} and at most {hi:g}" if lo_open else f"{lo:g} … {hi:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number ({span}), got {text!r}") from None
        if not math.isfinite(value) or value < lo or value > hi or (lo_open and value == lo):
            raise argparse.ArgumentTypeError(f"must be a finite number {span}, got {text.strip()}")
        return value

    parse.__name__ = "number"
    return parse


positive_int = int_range(1)
non_negative_int = int_range(0)
threads = int_range(1, MAX_THREADS, f" (4 per CPU of this machine's {os.cpu_count() or 1}, at most 256)")


def out_dir(text: str) -> str:
    """A folder to write into: new or existing, never a file (nor under one)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an output folder is needed, got an empty path")
    p = Path(text).expanduser()
    for q in (p, *p.parents):
        if q.exists():
            if not q.is_dir():
                raise argparse.ArgumentTypeError(f"{text} is a file" if q == p else f"{q} is a file, not a folder")
            break
    return text


def out_file(text: str) -> str:
    """A file to write: new or existing, never a folder (nor under a file)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an output file is needed, got an empty path")
    p = Path(text).expanduser()
    if p.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name")
    for q in p.parents:
        if q.exists():
            if not q.is_dir():
                raise argparse.ArgumentTypeError(f"{q} is a file, not a folder")
            break
    return text


def name_list(known: list[str], what: str):
    """A comma-separated, non-empty list of distinct names out of ``known`` (kept as the cleaned string)."""

    def parse(text: str) -> str:
        names = [n.strip() for n in text.split(",") if n.strip()]
        if not names:
            raise argparse.ArgumentTypeError(f"name at least one {what} ({', '.join(known)})")
        unknown = [n for n in names if n not in known]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {what} {unknown[0]!r}; available: {', '.join(known)}")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise argparse.ArgumentTypeError(f"{what} {twice[0]!r} is named twice")
        return ",".join(names)

    parse.__name__ = what
    return parse


def int_list(item):
    """A comma-separated, non-empty list of distinct values of ``item`` (kept as the cleaned string)."""

    def parse(text: str) -> str:
        parts = [x.strip() for x in text.split(",") if x.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"expected comma-separated values, got {text!r}")
        values = [item(x) for x in parts]
        if len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"a value is given twice in {text!r}")
        return ",".join(map(str, values))

    parse.__name__ = "list"
    return parse


def shard(text: str) -> tuple[int, int]:
    """``i/n`` with 0 ≤ i < n."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected i/n, got {text!r}") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"{text!r} is not i/n with 0 <= i < n")
    return i, n
