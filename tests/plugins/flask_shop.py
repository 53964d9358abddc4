"""A small Flask app written the way a user writes one: an app factory whose
pool comes from ``TaskMiddleware``, module-level tasks, a deferred listener
and a plugin that keeps each task's status. Its tests run it on a real pool
(``taskmw_pool``) and in eager mode (``taskmw_eager``)."""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, request

import taskmw
from taskmw import TaskFinishEvent, TaskMiddleware, deferred


def price_with_tax(cents: int) -> int:
    return round(cents * 1.2)


def where_am_i() -> dict[str, Any]:
    return {"pid": os.getpid(), "worker_id": taskmw.current_server().worker_id}


@deferred("shop.receipt")
def send_receipt(order_id: int, email: str) -> str:
    return f"receipt {order_id} sent to {email}"


class Statuses:
    """A plugin: the status of every finished task, by id."""

    def __init__(self) -> None:
        self.by_id: dict[int, str] = {}

    @taskmw.hookimpl
    def on_finish(self, event: TaskFinishEvent) -> None:
        self.by_id[event.task_id] = event.status


def create_app(server: Any = None) -> Flask:
    """The app; ``server`` shares an existing pool, else ``TaskMiddleware`` builds one."""
    app = Flask(__name__)
    statuses = Statuses()
    if server is None:
        middleware = TaskMiddleware(app.wsgi_app, task_workers=2, plugins=[statuses])
    else:
        server.plugins.register(statuses)  # reaches on_finish, which runs in this process
        middleware = TaskMiddleware(app.wsgi_app, server=server)
    app.wsgi_app = middleware  # type: ignore[method-assign]
    app.extensions["taskmw"] = middleware

    @app.post("/orders")
    def order() -> dict[str, Any]:
        pool = request.environ["taskmw.server"]
        total = pool.taskwait(price_with_tax, int(request.form["cents"]), timeout=20)
        receipt = send_receipt(7, request.form["email"])  # queued on the current pool
        return {"total": total, "receipt_task": receipt}

    @app.get("/tasks/<int:task_id>")
    def task_status(task_id: int) -> dict[str, Any]:
        return {"status": statuses.by_id.get(task_id)}

    @app.get("/where")
    def where() -> dict[str, Any]:
        return request.environ["taskmw.server"].taskwait(where_am_i, timeout=20)  # type: ignore[no-any-return]

    return app
