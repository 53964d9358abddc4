"""Adapters of the Celery benchmark (``bench/test_celery.py``), driven like
the task pools of ``tasks_harness`` (``queue``, ``wait``, ``round_trip``,
``close``): taskmw through Celery and plain Celery ``.delay()``, both on one
``celery worker`` (prefork, 2 pool processes) serving ``apps/celery_app.py``.

The Redis server and the worker are the Celery tests' own
(``plugins/taskmw-celery/tests/celery_procs.py``): started on a free port of
127.0.0.1, stopped afterwards and checked gone.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from tasks_harness import PAYLOAD, WAIT, TaskPool, _Countdown, _FinishCounter, trivial

from taskmw import TaskServer

ROOT = Path(__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "apps"
for _path in (ROOT / "plugins" / "taskmw-celery" / "tests", APPS):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from celery_procs import Redis, celery_worker, require  # noqa: E402

__all__ = ["CeleryDelayPool", "TaskmwCeleryPool", "Redis", "celery_worker", "require"]


class TaskmwCeleryPool(TaskPool):
    """``TaskServer(backend="celery")``: ``task()``; finishes counted by an ``on_finish`` plugin."""

    name = "taskmw_celery"

    def __init__(self, celery_app: Any) -> None:
        self._countdown = _Countdown()
        self._server = TaskServer(backend="celery", celery_app=celery_app, entrypoints=False, shutdown_timeout=WAIT,
                                  plugins=[_FinishCounter(self._countdown)])  # fmt: skip

    def queue(self, count: int) -> None:
        self._countdown.expect(count)
        task = self._server.task
        for _ in range(count):
            task(trivial, PAYLOAD)

    def wait(self) -> None:
        self._countdown.wait("taskmw_celery")

    def round_trip(self) -> None:
        self._countdown.expect(1)
        if self._server.taskwait(trivial, PAYLOAD, timeout=WAIT) != len(PAYLOAD):
            raise AssertionError("taskwait returned a wrong value")

    def counters(self) -> dict[str, Any]:
        return {"finished": self._countdown.finished}

    def close(self) -> None:
        self._server.close()


class CeleryDelayPool(TaskPool):
    """Plain Celery: ``plain.delay(payload)``; every result read back (``ResultSet.join_native``)."""

    name = "celery"

    def __init__(self, plain_task: Any) -> None:
        from celery.result import ResultSet

        self._task = plain_task
        self._results: list[Any] = []
        self._result_set = ResultSet
        self._finished = 0

    def queue(self, count: int) -> None:
        delay, results = self._task.delay, self._results
        for _ in range(count):
            results.append(delay(PAYLOAD))

    def wait(self) -> None:
        values = self._result_set(self._results).join_native(timeout=WAIT, propagate=True)
        if values != [len(PAYLOAD)] * len(self._results):
            raise AssertionError(f"celery: {len(values)} results, not all {len(PAYLOAD)}")
        self._finished += len(values)
        self._results.clear()

    def round_trip(self) -> None:
        if self._task.delay(PAYLOAD).get(timeout=WAIT) != len(PAYLOAD):
            raise AssertionError("wrong result")

    def counters(self) -> dict[str, Any]:
        return {"finished": self._finished}
