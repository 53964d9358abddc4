"""A Flask app over :mod:`progress_jobs` (``gunicorn --preload -w 3
progress_wsgi:app``): POST /jobs (``?delay=`` seconds: later), GET /jobs/<id>, POST /jobs/<id>/cancel,
GET /kill-self, GET /pool. Every answer has the answering pid."""

from __future__ import annotations

import os

import progress_jobs
from flask import Flask, jsonify, request
from recorder import Recorder

from taskmw import TaskMiddleware

flask_app = Flask(__name__)


def _server():
    return request.environ["taskmw.server"]


@flask_app.post("/jobs")
def queue_job():
    args = request.args
    return jsonify(progress_jobs.queue(_server(), args["token"], bool(args.get("fail")), float(args.get("delay", 0))))


@flask_app.get("/jobs/<int:task_id>")
def job(task_id: int):
    progress_jobs.hold(float(request.args.get("hold", 0)))
    code, body = progress_jobs.job(_server(), task_id)
    return jsonify(body), code


@flask_app.post("/jobs/<int:task_id>/cancel")
def cancel(task_id: int):
    unless = request.args.get("unless_pid")
    code, body = progress_jobs.cancel(_server(), task_id, int(unless) if unless else None)
    return jsonify(body), code


@flask_app.get("/kill-self")
def kill_self():
    progress_jobs.kill_self(_server(), request.args["token"])
    return jsonify(error="still alive"), 500  # not reached


@flask_app.get("/pool")
def pool():
    progress_jobs.hold(float(request.args.get("hold", 0)))
    return jsonify(pid=os.getpid(), supervisor=_server().supervisor_pid)


app = TaskMiddleware(flask_app, task_workers=1, plugins=[Recorder()])
