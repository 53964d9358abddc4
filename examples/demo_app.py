"""A small WSGI app with task workers, to curl or open in a browser.

Run it (from the repository root)::

    .venv/bin/gunicorn --preload -w 2 -b 127.0.0.1:8000 --chdir examples demo_app:app

Then::

    curl '127.0.0.1:8000/queue?seconds=2'     # queue a slow job: returns its id at once
    curl '127.0.0.1:8000/fail'                # queue a job that raises
    curl '127.0.0.1:8000/wait?a=2&b=3'        # queue a job and wait for its result
    curl '127.0.0.1:8000/'                    # finished jobs: id, status, duration, worker

With ``--preload`` gunicorn imports this module once, in its master, so one
pool of task workers serves both HTTP workers. Each finish comes back to the
HTTP worker that queued the job; this demo appends it to a JSON-lines file so
that every HTTP worker can list all of them.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from taskmw import TaskFailed, TaskFinishEvent, TaskMiddleware, hookimpl

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(message)s")
FINISHED = os.environ.get("TASKMW_DEMO_LOG", os.path.join(tempfile.gettempdir(), f"taskmw-demo-{os.getpid()}.jsonl"))


def slow_job(seconds: float) -> str:
    """A stand-in for real work (a report, a thumbnail, a mail)."""
    time.sleep(seconds)
    return f"slept {seconds}s in task worker pid {os.getpid()}"


def failing_job() -> None:
    raise RuntimeError("the mail server said no")


def add(a: int, b: int) -> int:
    return a + b


class FinishLog:
    """Appends one JSON line per finished job (runs in the HTTP worker that queued it)."""

    @hookimpl
    def on_finish(self, event: TaskFinishEvent) -> None:
        line = {
            "id": event.task_id,
            "status": event.status,
            "result": repr(event.return_value),
            "error": event.error.message if event.error else None,
            "duration": round(event.duration, 4),
            "worker": event.worker_id,
            "http_pid": os.getpid(),
        }
        with open(FINISHED, "a") as f:
            f.write(json.dumps(line) + "\n")


def demo(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    server = environ["taskmw.server"]
    query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    path = environ.get("PATH_INFO", "/")
    status = "200 OK"
    if path == "/queue":
        body: Any = {"queued": server.task(slow_job, float(query.get("seconds", 1))), "http_pid": os.getpid()}
    elif path == "/fail":
        body = {"queued": server.task(failing_job), "http_pid": os.getpid()}
    elif path == "/wait":
        try:
            body = {"result": server.taskwait(add, int(query.get("a", 1)), int(query.get("b", 2)), timeout=10)}
        except (TaskFailed, TimeoutError) as exc:
            status, body = "500 Internal Server Error", {"error": str(exc)}
    elif path == "/":
        try:
            with open(FINISHED) as f:
                body = {"finished": [json.loads(line) for line in f]}
        except FileNotFoundError:
            body = {"finished": []}
    else:
        status, body = "404 Not Found", {"error": "try /, /queue?seconds=2, /fail, /wait?a=2&b=3"}
    data = (json.dumps(body, indent=1) + "\n").encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


app = TaskMiddleware(demo, task_workers=2, plugins=[FinishLog()])
