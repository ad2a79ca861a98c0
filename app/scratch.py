"""Scratch folders for the files a request hands to the browser (downloads, re-opened images)."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path

SCRATCH = Path(os.environ.get("ADAPT_APP_SCRATCH") or Path(tempfile.gettempdir()) / "adapt-app")
SCRATCH_TTL = 6 * 3600


def scratch_dir(prefix: str = "run") -> Path:
    """A fresh folder for one request's downloads; folders older than SCRATCH_TTL are removed."""
    SCRATCH.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in SCRATCH.iterdir():
        try:
            if now - old.stat().st_mtime > SCRATCH_TTL:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass
    return Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=SCRATCH))


def safe_stem(name: str, fallback: str = "image") -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem).strip("._") or fallback
    return stem[:80]
