"""The pytest plugin (``taskmw.testing``, entry point ``pytest11``): a Flask
app tested on a real pool (``taskmw_pool``, ``taskmw_pool2``) and in eager
mode (``taskmw_eager``), where the app's own ``TaskMiddleware`` becomes
eager with no code change and every hook still fires."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import pytest

import taskmw
from taskmw import TaskFinishEvent, TaskServer, hookimpl
from taskmw.testing import pool_processes

from .flask_shop import create_app

WAIT = 20.0


def test_the_plugin_is_loaded_through_its_entry_point(request: pytest.FixtureRequest) -> None:
    assert request.config.pluginmanager.get_plugin("taskmw") is taskmw.testing


# -- a Flask app on a real pool ------------------------------------------------------


def test_flask_app_on_a_real_pool(taskmw_pool: TaskServer) -> None:
    app = create_app(server=taskmw_pool)
    client = app.test_client()
    where = client.get("/where").get_json()
    assert where["pid"] != os.getpid() and where["pid"] in pool_processes(taskmw_pool)
    assert where["worker_id"] == 0
    placed = client.post("/orders", data={"cents": "1000", "email": "a@example.com"}).get_json()
    assert placed["total"] == 1200
    receipt = placed["receipt_task"]
    deadline = time.monotonic() + WAIT
    status = None
    while status is None and time.monotonic() < deadline:  # the receipt finishes on the reader thread
        status = client.get(f"/tasks/{receipt}").get_json()["status"]
        time.sleep(0.01)
    assert status == "ok"


def test_two_workers(taskmw_pool2: TaskServer) -> None:
    ids = {taskmw_pool2.taskwait(where_worker, timeout=WAIT) for _ in range(4)}
    assert ids <= {0, 1}
    deadline = time.monotonic() + WAIT
    while len(pool_processes(taskmw_pool2)) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(pool_processes(taskmw_pool2)) == 3  # the supervisor and two task workers


def where_worker() -> int | None:
    return taskmw.current_server().worker_id


# -- the same app in eager mode --------------------------------------------------------


def test_flask_app_in_eager_mode_with_no_code_change(taskmw_eager: TaskServer) -> None:
    app = create_app()  # builds TaskMiddleware(app.wsgi_app, task_workers=2) itself
    pool = app.extensions["taskmw"].server
    try:
        assert pool.backend == "eager" and pool is not taskmw_eager
        client = app.test_client()
        assert client.get("/where").get_json() == {"pid": os.getpid(), "worker_id": 0}  # inline, as worker 0
        placed = client.post("/orders", data={"cents": "250", "email": "b@example.com"}).get_json()
        assert placed["total"] == 300
        # the deferred receipt already ran and its on_finish fired when the request returned
        assert client.get(f"/tasks/{placed['receipt_task']}").get_json() == {"status": "ok"}
    finally:
        pool.close()


class Journal:
    """Records every hook call, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    @hookimpl
    def on_worker_start(self, worker_id: int, server: Any) -> None:
        self.calls.append(("start", worker_id, server.worker_id))

    @hookimpl(tryfirst=True)
    def on_task(self, event: taskmw.TaskEvent) -> None:
        self.calls.append(("task", event.task_id, event.worker_id))

    @hookimpl
    def on_finish(self, event: TaskFinishEvent) -> None:
        self.calls.append(("finish", event.task_id, event.status, threading.get_ident()))

    @hookimpl
    def on_worker_stop(self, worker_id: int, server: Any) -> None:
        self.calls.append(("stop", worker_id))


def double(x: int) -> int:
    return 2 * x


def nested(x: int) -> int:
    return taskmw.current_server().taskwait(double, x) + 1  # type: ignore[no-any-return]


async def async_double(x: int) -> int:
    return 2 * x


def test_eager_fires_every_hook_inline(taskmw_eager: TaskServer) -> None:
    journal = Journal()
    me = threading.get_ident()
    with TaskServer(1, plugins=[journal]) as eager:
        assert eager.backend == "eager"
        first = eager.task(double, 2)
        assert journal.calls == [("start", 0, 0), ("task", first, 0), ("finish", first, "ok", me)]
        assert eager.task(double, 3) == first + 1  # ids increase
        assert eager.taskwait(nested, 5) == 11  # a task may queue tasks: they run inline too
        assert eager.taskwait(async_double, 4) == 8
        events = eager.taskwait_multi([taskmw.Task(double, 1), "nobody handles a str"])
        assert [e.status for e in events if e] == ["ok", "error"]
        with pytest.raises(taskmw.TaskFailed, match="nothing handled the task"):
            eager.taskwait("nobody handles a str")
        assert eager.worker_id is None  # 0 only while a task runs
    assert journal.calls[-1] == ("stop", 0) and eager.closed
    with pytest.raises(taskmw.PoolClosed):
        eager.task(double, 1)


def test_eager_pickles_like_the_pool(taskmw_eager: TaskServer) -> None:
    with pytest.raises(TypeError, match="task argument 0 cannot be pickled: _thread.lock"):
        taskmw_eager.task(double, threading.Lock())
    event = taskmw_eager.taskwait_multi([taskmw.Task(threading.Lock)])[0]
    assert event is not None and event.status == "error" and "return value cannot be pickled" in event.error.message


def test_eager_task_async(taskmw_eager: TaskServer) -> None:
    async def handler() -> tuple[int, int]:
        # an async task runs on a loop of its own: this one is busy running the handler
        return await taskmw_eager.task_async(double, 21), await taskmw_eager.task_async(async_double, 5)

    assert asyncio.run(handler()) == (42, 10)


_runs: list[int] = []


def flaky(fails: int) -> int:
    """Fails its first ``fails`` runs (in this process: eager runs inline)."""
    _runs.append(1)
    if len(_runs) <= fails:
        raise RuntimeError(f"run {len(_runs)} fails")
    return len(_runs)


def test_eager_retries_like_the_pool(taskmw_eager: TaskServer) -> None:
    _runs.clear()
    event = taskmw_eager.taskwait_multi([taskmw.Task(flaky, 2)])[0]
    assert event is not None and event.status == "error" and event.attempts == 1  # no retries by default
    _runs.clear()
    journal = Journal()
    taskmw_eager.plugins.register(journal)
    task_id = taskmw_eager.task(taskmw.Task(flaky, 2), retries=3)
    assert [c[1] for c in journal.calls if c[0] == "task"] == [task_id] * 3
    (finish,) = [c for c in journal.calls if c[0] == "finish"]
    assert finish[2] == "ok" and len(_runs) == 3
    with pytest.raises(ValueError, match="retries"):
        taskmw_eager.task(taskmw.Task(flaky, 0), retries=-1)
