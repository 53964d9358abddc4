"""Running a task through the hooks (:mod:`taskmw.pipeline`): ``on_task``
observers and handlers, the listeners' dispatcher, services, the error a
failing task finishes with, and the worker lifecycle hooks.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from helpers import WAIT, FinishLog, Signup, VipSignup, add, boom, module_function, pids_gone, pool_processes, welcome

from taskmw import ServiceTask, Task, TaskEvent, TaskFailed, TaskFinishEvent, TaskServer, _codec, hookimpl, records
from taskmw.listeners import Dispatcher
from taskmw.pipeline import run_task
from taskmw.plugins import implementations, plugin_manager
from taskmw.records import ERROR, OK


def test_errors_come_back_with_traceback_text(pool: TaskServer, finishes: FinishLog) -> None:
    with pytest.raises(TaskFailed) as info:
        pool.taskwait(boom, "no mail server", timeout=WAIT)
    ev = info.value.event
    assert ev.status == "error" and ev.error is not None
    assert ev.error.type == "ValueError" and ev.error.message == "no mail server"
    assert "in boom" in ev.error.traceback and "raise ValueError(message)" in ev.error.traceback
    assert finishes.wait([ev.task_id])[ev.task_id].status == "error"


# -- hooks, listeners, services --------------------------------------------------------


class Observer:
    def __init__(self, path: Path) -> None:
        self.path = path

    @hookimpl(tryfirst=True)
    def on_task(self, event: TaskEvent) -> None:
        with open(self.path / f"seen-{os.getpid()}", "a") as f:
            f.write(f"{event.task_id}\n")

    @hookimpl
    def on_worker_start(self, worker_id: int) -> None:
        (self.path / f"start-{worker_id}-{os.getpid()}").touch()

    @hookimpl
    def on_worker_stop(self, worker_id: int, server: TaskServer) -> None:
        assert server.worker_id == worker_id
        (self.path / f"stop-{worker_id}-{os.getpid()}").touch()


class Handler:
    """Completes every Signup itself: the dispatcher must not run."""

    @hookimpl
    def on_task(self, event: TaskEvent) -> None:
        if isinstance(event.data, Signup):
            event.set_return_value(("handled", event.data.email))
            event.complete()


class Services:
    @hookimpl
    def resolve_service(self, name: str) -> Any:
        return {"adder": add}.get(name)


def test_hooks_observers_complete_and_worker_lifecycle(tmp_path: Path, finishes: FinishLog) -> None:
    server = TaskServer(2, plugins=[finishes, Observer(tmp_path), Handler(), Services()])
    pids = pool_processes(server)
    try:
        assert server.taskwait(Signup("x@y"), timeout=WAIT) == ("handled", "x@y")
        assert server.taskwait(ServiceTask("adder", 2, 3), timeout=WAIT) == 5
        with pytest.raises(TaskFailed, match="no plugin resolved the service 'nope'"):
            server.taskwait(ServiceTask("nope"), timeout=WAIT)
        ids = [server.task(add, i, i) for i in range(20)]
        finishes.wait(ids)
    finally:
        server.close()
    assert pids_gone(pids)
    seen = [int(x) for p in tmp_path.glob("seen-*") for x in p.read_text().split()]
    assert set(ids) <= set(seen) and len(seen) == len(set(seen)) == 23
    starts = sorted(p.name.split("-")[1] for p in tmp_path.glob("start-*"))
    stops = sorted(p.name.split("-")[1] for p in tmp_path.glob("stop-*"))
    assert starts == stops == ["0", "1"]


def test_dispatcher_follows_the_mro(finishes: FinishLog) -> None:
    with TaskServer(1, plugins=[finishes, Services()], listeners={Signup: [welcome], VipSignup: ["adder"]}) as server:
        assert server.taskwait(Signup("a"), timeout=WAIT) == "welcome a"
        # VipSignup: its own listener (a service) fails on a Signup argument, proving it ran first
        with pytest.raises(TaskFailed, match="TypeError"):
            server.taskwait(VipSignup("b"), timeout=WAIT)


def test_dispatcher_validates_its_map() -> None:
    with pytest.raises(TypeError, match="keys must be classes"):
        Dispatcher({"Signup": [module_function]})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="must be a list"):
        Dispatcher({int: "svc"})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="neither callable nor a service name"):
        Dispatcher({int: [3]})  # type: ignore[list-item]


def test_hook_wrappers_are_refused() -> None:
    class Wrapper:
        @hookimpl(wrapper=True)
        def on_finish(self, event: TaskFinishEvent) -> Any:
            return (yield)

    with pytest.raises(ValueError, match="cannot be a hook wrapper"):
        TaskServer(1, plugins=[Wrapper()], entrypoints=False)


class LateHandler:
    """An ``on_task`` plugin registered after the built-in ones (it runs before the invoker)."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, tuple[Any, ...], int]] = []

    @hookimpl
    def on_task(self, event: TaskEvent) -> None:
        assert isinstance(event.data, Task)
        self.seen.append((event.data.fn, event.data.args, event.attempt))
        if event.data.args == (0, 0):
            event.set_return_value("late")
            event.complete()


def test_a_call_reaches_every_on_task_hook_its_calls_name_and_the_invoker_alone_runs_it_directly() -> None:
    """run_task() calls a task's function itself only while the invoker comes
    first in the calls it is given: a plugin registered later sees the Task
    and may complete it; a failure reads the same either way."""
    pm = plugin_manager([], None, False, [])
    server: Any = None  # no task here queues more
    kind = int(records.Kind.CALL)
    call, zero, fail = (
        _codec.encode_function_call(fn, args, {}) for fn, args in ((add, (2, 3)), (add, (0, 0)), (boom, ("x",)))
    )
    assert run_task(implementations(pm.hook.on_task), server, 1, 0, call, kind) == (OK, 5, None, "helpers.add")
    late = LateHandler()
    pm.register(late)
    calls = implementations(pm.hook.on_task)
    assert run_task(calls, server, 2, 0, call, kind, 2) == (OK, 5, None, "helpers.add")
    assert run_task(calls, server, 3, 0, zero, kind) == (OK, "late", None, "helpers.add")
    assert late.seen == [(add, (2, 3), 2), (add, (0, 0), 1)]
    assert_fails(calls, server, fail, kind)  # through the plugin, then the invoker
    pm.unregister(late)
    assert_fails(implementations(pm.hook.on_task), server, fail, kind)  # the invoker alone


def assert_fails(calls: list[Any], server: Any, payload: bytes, kind: int) -> None:
    status, value, error, name = run_task(calls, server, 4, 0, payload, kind)
    assert (status, value, name) == (ERROR, None, "helpers.boom") and error is not None
    assert error.message == "x" and error.traceback.count("File ") == 1  # from the task's own frame on


class _Marker:
    """Completes a call whose first argument is ``"mark"``."""

    @hookimpl
    def on_task(self, event: TaskEvent) -> None:
        if isinstance(event.data, Task) and event.data.args[:1] == ("mark",):
            event.set_return_value("marked")
            event.complete()


class _RegistersAtStart:
    @hookimpl
    def on_worker_start(self, worker_id: int, server: TaskServer) -> None:
        server.plugins.register(_Marker())


def test_an_on_task_plugin_registered_at_worker_start_sees_every_task_of_the_worker() -> None:
    """The worker takes its ``on_task`` calls after ``on_worker_start``: a
    plugin registered there stands before the invoker (they were taken
    before, and it never ran)."""
    with TaskServer(1, plugins=[_RegistersAtStart()], entrypoints=False) as server:
        assert server.taskwait(add, "mark", "x", timeout=WAIT) == "marked"
        assert server.taskwait(add, 2, 3, timeout=WAIT) == 5
