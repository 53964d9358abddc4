"""Fixtures of taskmw-celery's tests (the processes are in ``celery_procs.py``).

Run from the repository root (``python -m pytest``) or from this folder.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from celery_procs import APPS, Redis, require

if str(APPS) not in sys.path:
    sys.path.insert(0, str(APPS))  # cjobs: the tasks go by reference, as cjobs.<name>


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    require()
    server = Redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


