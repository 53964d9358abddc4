"""taskmw-logging's tests. They test the distribution installed with pip
(``pip install ./plugins/taskmw-logging``, as ``.ci/run`` does) and run from
the repository root (``python -m pytest``) or from this distribution's folder.
Without it installed they are skipped, except in CI (``CI=true``): they fail.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

DIST = Path(__file__).resolve().parents[1]
# ``python -m pytest`` run in the distribution's folder puts it on sys.path: its source would shadow the installed one.
sys.path[:] = [p for p in sys.path if Path(p or os.curdir).resolve() != DIST]


@pytest.fixture(autouse=True)
def _installed() -> None:
    if importlib.util.find_spec("taskmw_logging") is None:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"taskmw-logging is not installed: pip install {DIST}")
