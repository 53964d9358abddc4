"""gunicorn config of the HTTP benchmark: logs each HTTP worker's task
finishes when it exits, and stops the hand-made queue's consumers when
gunicorn exits."""

from __future__ import annotations

from typing import Any


def worker_exit(server: Any, worker: Any) -> None:
    """Runs in the HTTP worker as it exits: one line the benchmark parses."""
    import os

    import wsgi_app

    server.log.info("%s", wsgi_app.finishes.line())
    server.log.info("taskmw-bench mpqueue pid=%d puts=%d", os.getpid(), wsgi_app.mpqueue_puts[0])


def on_exit(server: Any) -> None:
    """Runs in the master as gunicorn exits: the consumers drain the queue,
    log what they ran, and are reaped."""
    import wsgi_app

    wsgi_app.stop_consumers()
