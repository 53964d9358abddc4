"""A Flask app with the dashboard at ``/_taskmw/`` (cancel enabled), one
pool (``gunicorn --preload -w 2 dash_wsgi:app``): ``POST /jobs``, ``GET /pool``."""

from __future__ import annotations

import os

import dash_jobs
from flask import Flask, jsonify, request

import taskmw.web
from taskmw import TaskMiddleware

flask_app = Flask(__name__)


@flask_app.post("/jobs")
def queue_job():
    server = request.environ["taskmw.server"]
    return jsonify(dash_jobs.queue(server, request.args["kind"], request.args.get("token", "")))


@flask_app.get("/pool")
def pool():
    return jsonify(pid=os.getpid())


flask_app.wsgi_app = taskmw.web.mount_wsgi(flask_app.wsgi_app, "/_taskmw", allow_cancel=True)  # type: ignore
app = TaskMiddleware(flask_app, task_workers=1)
