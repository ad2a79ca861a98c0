"""Output names: one rule for the CLI and the app, so ``a.png`` + ``a.jpg`` are ``a-png`` / ``a-jpg``
everywhere and no two inputs ever share an output."""

from __future__ import annotations

import re
from pathlib import PurePath


def safe_id(text: str) -> str:
    """``text`` reduced to a file-name-safe id (letters, digits, ``.``, ``_``, ``-``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._")[:120] or "item"


def unique_ids(names: list) -> list[str]:
    """One output id per file name, never two alike: the stem where it is unique, else the stem and the
    extension (``scene.png`` and ``scene.jpg`` → ``scene-png``, ``scene-jpg``), else a counter.

    Depends only on the names given, so a rerun over the same files finds its earlier outputs."""
    paths = [PurePath(str(n)) for n in names]
    stems = [safe_id(p.stem) for p in paths]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    bases = [f"{s}-{safe_id(p.suffix.lstrip('.').lower()) if p.suffix else 'img'}" if counts[s] > 1 else s
             for p, s in zip(paths, stems)]
    return dedupe(bases)


def dedupe(ids: list[str]) -> list[str]:
    """``ids`` with repeats made distinct by a counter in order of appearance (``x``, ``x-2``, ...)."""
    seen: set[str] = set()
    out = []
    for base in ids:
        uid, k = base, 1
        while uid in seen:
            k += 1
            uid = f"{base}-{k}"
        seen.add(uid)
        out.append(uid)
    return out
