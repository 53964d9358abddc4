"""Fixtures for the IPC benchmarks (run: ``pytest bench/ --benchmark-only``).

``pytest`` run from the repository root does not collect this directory
(``testpaths = ["tests", "plugins/*/tests"]`` in pyproject.toml).
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from harness import Harness


@pytest.fixture
def harness() -> Iterator[Harness]:
    """A :class:`Harness` whose children and channels are cleaned up afterwards."""
    h = Harness()
    try:
        yield h
    finally:
        h.close()


def pytest_benchmark_update_json(config: pytest.Config, benchmarks: Any, output_json: dict[str, Any]) -> None:
    """Record the command line in the JSON, for ``bench/report.py``."""
    argv0 = sys.argv[0]
    prog = "python -m pytest" if argv0.endswith("__main__.py") else os.path.basename(argv0)
    output_json["command"] = f"{prog} {shlex.join(config.invocation_params.args)}"
    output_json["cwd"] = str(config.invocation_params.dir)
