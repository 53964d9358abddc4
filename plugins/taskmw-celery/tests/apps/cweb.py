"""A WSGI app written for the local pool, unchanged: gunicorn serves it with
``TASKMW_BACKEND=celery TASKMW_CELERY_APP=cclient:capp`` and its tasks run
on the Celery worker."""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import parse_qs

import cjobs

from taskmw import TaskMiddleware


def wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    server = environ["taskmw.server"]
    path = environ["PATH_INFO"]
    q = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    body: dict[str, Any] = {"pid": os.getpid(), "server": server.backend}
    if path == "/queue":
        body["id"] = server.task(cjobs.add, int(q["a"]), int(q["b"]))
    elif path == "/fail":
        body["id"] = server.task(cjobs.boom, q["m"])
    elif path == "/whoami":
        body["id"] = server.task(cjobs.whoami)
    elif path == "/wait":
        body["value"] = server.taskwait(cjobs.add, int(q["a"]), int(q["b"]), timeout=30)
    elif path != "/pool":
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(body).encode()]


app = TaskMiddleware(wsgi, plugins=[cjobs.Recorder()])
