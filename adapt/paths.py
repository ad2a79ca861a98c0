"""Where the shipped files (``assets/``: the embedded models, the example scenes) are.

In a clone, and in an editable install (``pip install -e .``), they are the checkout's ``assets/``
beside the package. A plain ``pip install .`` copies them to ``<prefix>/share/adapt/assets``
(``[tool.setuptools.data-files]`` in pyproject.toml), since the package folder then sits in
site-packages with no checkout around it.
"""

from __future__ import annotations

import site
import sys
from pathlib import Path

CHECKOUT_ASSETS = Path(__file__).resolve().parents[1] / "assets"


def assets_dir() -> Path:
    """The folder holding ``embedded/``, ``embedded-vagdpo/`` and ``examples/`` (the checkout's
    when there is one; else the installed copy; the checkout's path, absent, when neither is)."""
    if CHECKOUT_ASSETS.is_dir():
        return CHECKOUT_ASSETS
    for prefix in (sys.prefix, getattr(site, "USER_BASE", None)):
        if prefix and (Path(prefix) / "share" / "adapt" / "assets").is_dir():
            return Path(prefix) / "share" / "adapt" / "assets"
    return CHECKOUT_ASSETS


def asset(name: str) -> Path:
    """``assets/<name>``, wherever :func:`assets_dir` finds it."""
    return assets_dir() / name
