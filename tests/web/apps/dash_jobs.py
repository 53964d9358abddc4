"""The jobs of the dashboard's e2e apps (``dash_wsgi``, ``dash_asgi``): one
that reports progress and waits for a flag file the test creates
(``go-<token>`` in ``$TASKMW_E2E_DIR``), one that returns at once, one that
raises."""

from __future__ import annotations

import os
import time
from typing import Any

import taskmw

JOB_LIMIT = 60.0  # seconds a job waits for its flag before it gives up (no test waits that long)


def wait_job(token: str) -> str:
    taskmw.progress(0.5, f"waiting for go-{token}")
    deadline = time.monotonic() + JOB_LIMIT
    while not os.path.exists(os.path.join(os.environ["TASKMW_E2E_DIR"], f"go-{token}")):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no go-{token} within {JOB_LIMIT}s")
        time.sleep(0.02)
    return token


def quick() -> int:
    return 42


def fail() -> None:
    raise ValueError("failed as asked")


def queue(server: Any, kind: str, token: str = "") -> dict[str, Any]:
    """``POST /jobs?kind=wait|quick|fail&token=...``."""
    if kind == "wait":
        return {"id": server.task(wait_job, token)}
    return {"id": server.task(quick if kind == "quick" else fail)}


def denied() -> bool:
    """The access check's switch: the file ``deny`` in ``$TASKMW_E2E_DIR``."""
    return os.path.exists(os.path.join(os.environ["TASKMW_E2E_DIR"], "deny"))
