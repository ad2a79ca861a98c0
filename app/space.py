"""Hugging Face Space entry point (README metadata: ``sdk: gradio``, ``app_file: app/space.py``).

Spaces run ``python app/space.py``: the script's own folder is then first on ``sys.path``, so it is
swapped for the repository root before the ``app`` package is imported. Spaces set
``GRADIO_SERVER_NAME``/``GRADIO_SERVER_PORT``; the embedded model needs no network and no GPU.
"""

import sys
from pathlib import Path

_here = Path(__file__).resolve().parent
_root = _here.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
sys.path.insert(0, str(_root))

from app import build_app, launch  # noqa: E402

demo = build_app()

if __name__ == "__main__":
    launch(demo)
