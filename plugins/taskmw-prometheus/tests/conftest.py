"""taskmw-prometheus's tests, each in a fresh subprocess (``prometheus_client``
picks its mode once per process), against the distribution installed with
pip (``.ci/run``). Without it, skipped; in CI (``CI=true``), failed."""

from __future__ import annotations

import importlib.util
import os

import pytest


@pytest.fixture(autouse=True)
def _installed() -> None:
    if importlib.util.find_spec("taskmw_prometheus") is None:
        (pytest.fail if os.environ.get("CI") else pytest.skip)("pip install ./plugins/taskmw-prometheus first")
