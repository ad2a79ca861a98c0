"""``python -m app`` for the tests: the same app, plus the 'selftest' job kind of app_helpers."""

import sys
from pathlib import Path

_tests = Path(__file__).resolve().parent
sys.path.insert(0, str(_tests.parent))
sys.path.insert(1, str(_tests))

from app.__main__ import main  # noqa: E402
from app.jobs import register_kind  # noqa: E402
from app_helpers import selftest_kind  # noqa: E402

if __name__ == "__main__":
    register_kind(selftest_kind())
    raise SystemExit(main(sys.argv[1:]))
