"""A WSGI app with a periodic task, served by ``gunicorn --preload -w 3
periodic_app:app``: ``tick`` runs every second and appends a line to
``$TASKMW_E2E_DIR/periodic-runs.txt``; every path answers the pool's
``stats()`` as JSON, with the answering pid."""

from __future__ import annotations

import json
import os
import time

import taskmw
from taskmw import TaskMiddleware

RUNS = os.path.join(os.environ["TASKMW_E2E_DIR"], "periodic-runs.txt")


@taskmw.periodic(every=1)
def tick() -> None:
    with open(RUNS, "a") as f:
        f.write(f"{time.time()} {os.getpid()}\n")


def wsgi(environ, start_response):
    body = json.dumps({"pid": os.getpid(), "stats": environ["taskmw.server"].stats()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


app = TaskMiddleware(wsgi, task_workers=2)
