"""Whether a plugin distribution is installed in the test environment (as
``.ci/run`` does it: ``pip install ./plugins/<name>``)."""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, distribution

import pytest


def require(dist: str) -> None:
    """Skip the test if ``dist`` is not installed; in CI (``CI=true``), fail it."""
    try:
        distribution(dist)
    except PackageNotFoundError:
        message = f"{dist} is not installed: pip install ./plugins/{dist} (as .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
