"""A Flask app written the way a user writes one, served by gunicorn in the
e2e tests (``gunicorn flask_app:app [--preload] -w 2``)."""

from __future__ import annotations

import itertools
import os
import threading
import time

from flask import Flask, jsonify, request
from jobs import add, boom
from recorder import Recorder

from taskmw import TaskMiddleware

flask_app = Flask(__name__)

_lock = threading.Lock()
_seq = itertools.count()  # order in which this process got its task ids


def _server():
    return request.environ["taskmw.server"]


@flask_app.get("/queue")
def queue_add():
    a, b = int(request.args["a"]), int(request.args["b"])
    delay = float(request.args.get("delay", 0))  # seconds the task sleeps after recording its run
    with _lock:
        task_id = _server().task(add, a, b, delay=delay) if delay else _server().task(add, a, b)
        seq = next(_seq)
    return jsonify(id=task_id, pid=os.getpid(), seq=seq)


@flask_app.get("/fail")
def queue_boom():
    msg = request.args["msg"]
    with _lock:
        task_id = _server().task(boom, msg)
        seq = next(_seq)
    return jsonify(id=task_id, pid=os.getpid(), seq=seq)


@flask_app.get("/wait")
def wait_add():
    a, b = int(request.args["a"]), int(request.args["b"])
    result = _server().taskwait(add, a, b, timeout=10)
    return jsonify(result=result, pid=os.getpid())


@flask_app.get("/pool")
def pool():
    # ?hold=S keeps this (sync) worker busy for S seconds, so that concurrent
    # requests reach the other HTTP workers: the tests use it to meet them all.
    hold = float(request.args.get("hold", 0))
    if hold:
        time.sleep(min(hold, 2.0))
    server = _server()
    return jsonify(pid=os.getpid(), ppid=os.getppid(), supervisor=server.supervisor_pid)


app = TaskMiddleware(flask_app, task_workers=2, plugins=[Recorder()])
