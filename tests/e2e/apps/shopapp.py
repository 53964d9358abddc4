"""A Flask app built by a factory, the way Flask's tutorial writes one:
``taskmw start 'shopapp:create_app()'``, ``flask --app shopapp run --debug``,
``gunicorn --preload 'shopapp:create_app()'``. Every call of the factory is
recorded (``factory-<pid>.jsonl`` in ``TASKMW_E2E_DIR``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from flask import Flask, jsonify, request

import taskmw
from taskmw import TaskMiddleware


def add(a: int, b: int) -> int:
    return a + b


def rebuild() -> dict[str, object]:
    """A task that builds the app (as code reusing the factory does)."""
    built = create_app()
    server = built.wsgi_app.server
    return {"pid": os.getpid(), "joined": server is taskmw.current_server(), "worker_id": server.worker_id}


def _record_call() -> None:
    workdir = os.environ.get("TASKMW_E2E_DIR")
    if workdir:
        with open(Path(workdir) / f"factory-{os.getpid()}.jsonl", "a", encoding="utf-8") as out:
            out.write(json.dumps({"pid": os.getpid()}) + "\n")


def create_app(task_workers: int = 2) -> Flask:
    _record_call()
    flask_app = Flask(__name__)

    @flask_app.get("/")
    def index():
        return jsonify(pid=os.getpid())

    @flask_app.get("/wait")
    def wait():
        server = request.environ["taskmw.server"]
        return jsonify(result=server.taskwait(add, 2, 3, timeout=10), pid=os.getpid())

    @flask_app.get("/rebuild")
    def rebuild_in_a_task():
        return jsonify(request.environ["taskmw.server"].taskwait(rebuild, timeout=10))

    # Flask's own way to add a WSGI middleware: `flask run` needs the Flask object itself
    flask_app.wsgi_app = TaskMiddleware(flask_app.wsgi_app, task_workers=task_workers)  # type: ignore[method-assign]
    return flask_app
