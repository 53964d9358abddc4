"""taskmw-svcs's tests: real pools whose task workers get their services from
the installed distribution (``pip install ./plugins/taskmw-svcs``). Run from
the repository root or from this folder; skipped without the distribution,
failed in CI (``CI=true``), which installs it."""

from __future__ import annotations

import importlib.util
import os

import pytest


@pytest.fixture(autouse=True)
def _installed() -> None:
    if importlib.util.find_spec("taskmw_svcs") is None:
        (pytest.fail if os.environ.get("CI") else pytest.skip)("pip install ./plugins/taskmw-svcs (as .ci/run does)")
