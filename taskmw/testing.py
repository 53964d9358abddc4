"""The taskmw pytest plugin: fixtures to test an app that queues tasks.

Installed with taskmw (entry point ``pytest11``), so its fixtures are there
in every test suite, and cost nothing unless a test asks for one:

``taskmw_pool``
    A real pool with one task worker (``TaskServer(1)``), closed after the
    test; the test fails if any of its processes is left. It runs no
    periodic tasks (``schedule=[]``: the app's ``@taskmw.periodic``
    functions would fire during the tests); a test of them builds its own
    ``TaskServer(schedule=[...])``.
``taskmw_pool2``
    The same with two task workers.
``taskmw_eager``
    Eager mode: sets ``TASKMW_BACKEND=eager`` for the test, so every
    ``TaskServer``/``TaskMiddleware`` built during it (an app built by the
    test, or by an app factory) runs each task inline, in the caller, while
    every hook still fires (:mod:`taskmw.eager`); the fixture's value is one
    such server, closed after the test.

Installed plugins (entry-point group ``taskmw``) load in these pools as in
production. :class:`Finishes` records finish events for assertions::

    def test_signup(taskmw_pool):
        finishes = Finishes()
        taskmw_pool.plugins.register(finishes)      # on_finish runs in this process
        task_id = taskmw_pool.task(send_mail, "a@example.com")
        assert finishes.wait([task_id])[task_id].ok
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from taskmw import _proc
from taskmw.backends import BACKEND_ENV
from taskmw.events import TaskFinishEvent
from taskmw.hookspecs import hookimpl
from taskmw.server import TaskServer, create_server

WAIT = 30.0
"""Seconds a fixture waits for a pool's processes to be gone after closing it."""


class Finishes:
    """A plugin recording every finish event it sees, by task id."""

    def __init__(self) -> None:
        self.events: dict[int, TaskFinishEvent] = {}
        self._cond = threading.Condition()

    @hookimpl
    def on_finish(self, event: TaskFinishEvent) -> None:
        with self._cond:
            self.events[event.task_id] = event
            self._cond.notify_all()

    def wait(self, ids: list[int], timeout: float = WAIT) -> dict[int, TaskFinishEvent]:
        """The finish events of ``ids``, waiting up to ``timeout`` seconds for them.

        Raises:
            TimeoutError: some did not finish in time (the message lists them).
        """
        with self._cond:
            if not self._cond.wait_for(lambda: all(i in self.events for i in ids), timeout):
                missing = [i for i in ids if i not in self.events]
                raise TimeoutError(f"no finish within {timeout}s for task(s) {missing}")
            return {i: self.events[i] for i in ids}


def pool_processes(server: TaskServer) -> set[int]:
    """The pids of a pool's supervisor and its task workers (none: no local pool)."""
    sup = server.supervisor_pid
    if sup is None:
        return set()
    return {sup} | _proc.children(sup)


def close_pool(server: TaskServer) -> None:
    """Close a pool and wait until its processes are gone; fail the test
    (after killing them) if any is left."""
    pids = pool_processes(server)
    server.close()
    deadline = time.monotonic() + WAIT
    left = {p for p in pids if _proc.alive(p)}
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = {p for p in left if _proc.alive(p)}
    if left:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        pytest.fail(f"taskmw pool processes {sorted(left)} were left running after close(): killed them")


def _pool(workers: int, **settings: Any) -> Iterator[TaskServer]:
    server = TaskServer(workers, backend="local", queue_timeout=10.0, shutdown_timeout=10.0, schedule=[], **settings)
    try:
        yield server
    finally:
        close_pool(server)


@pytest.fixture
def taskmw_pool() -> Iterator[TaskServer]:
    """A real pool with one task worker, closed after the test; the test
    fails if a process of the pool is left."""
    yield from _pool(1)


@pytest.fixture
def taskmw_pool2() -> Iterator[TaskServer]:
    """A real pool with two task workers (see ``taskmw_pool``)."""
    yield from _pool(2)


@pytest.fixture
def taskmw_eager(monkeypatch: pytest.MonkeyPatch) -> Iterator[TaskServer]:
    """Eager mode for the test (``TASKMW_BACKEND=eager``): every pool built
    during it runs tasks inline. Its value is an eager server, closed after
    the test."""
    monkeypatch.setenv(BACKEND_ENV, "eager")
    server = create_server(1)
    assert server.backend == "eager", f"TASKMW_BACKEND=eager built {server!r}"
    try:
        yield server
    finally:
        server.close()
