"""gunicorn config of the HTTP benchmark: logs each HTTP worker's task finishes when it exits."""

from __future__ import annotations

from typing import Any


def worker_exit(server: Any, worker: Any) -> None:
    """Runs in the HTTP worker as it exits: one line the benchmark parses."""
    import os

    import wsgi_app

    counts = " ".join(f"{status}={n}" for status, n in sorted(wsgi_app.finishes.counts.items()))
    server.log.info("taskmw-bench finishes pid=%d %s", os.getpid(), counts)
