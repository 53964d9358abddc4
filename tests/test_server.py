"""The task server with real processes: a TaskServer forks its supervisor and
workers in these tests, tasks run there, and finishes come back here.

Every wait is bounded (``taskwait(timeout=)`` or :func:`wait_for`), and each
test checks that the pool's processes are gone after it closes.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    WAIT,
    Finishes,
    FinishLog,
    Signup,
    VipSignup,
    add,
    boom,
    double,
    fork_call,
    in_child,
    pids_gone,
    pool_processes,
    reap,
    sleep_then,
    wait_for_file,
    wait_until,
    welcome,
    whoami,
)

from taskmw import (
    PoolClosed,
    QueueFull,
    ServiceTask,
    Task,
    TaskEvent,
    TaskFailed,
    TaskFinishEvent,
    TaskServer,
    current_server,
    deferred,
    hookimpl,
)

# -- tasks (module level: they travel by reference) ------------------------------


def return_lock() -> Any:
    return threading.Lock()


def queue_inner(a: int) -> int:
    """A task that queues another task and waits for it (tasks may queue tasks)."""
    return current_server().taskwait(add, a, 100, timeout=WAIT)  # type: ignore[no-any-return]


_running = 0
_peak = 0


async def async_peak(seconds: float) -> int:
    """Sleeps on the worker's event loop; returns how many ran at once at most."""
    global _running, _peak
    _running += 1
    _peak = max(_peak, _running)
    await asyncio.sleep(seconds)
    _running -= 1
    return _peak


@deferred("mail.send")
def send_mail(to: str) -> tuple[str, int | None]:
    return f"sent to {to}", current_server().worker_id


# -- queuing and finishing ------------------------------------------------------------


def test_every_task_runs_once_in_a_worker_and_finishes_here(pool: TaskServer, finishes: FinishLog) -> None:
    ids = [pool.task(add, i, 1) for i in range(500)]
    assert ids == sorted(ids) and len(set(ids)) == 500
    got = finishes.wait(ids)
    assert [got[i].return_value for i in ids] == [i + 1 for i in range(500)]
    assert all(e.status == "ok" and e.error is None and e.worker_id in (0, 1) for e in got.values())
    assert all(len(finishes.deliveries[i]) == 1 for i in ids)
    assert finishes.pids == {os.getpid()}
    assert threading.get_ident() not in finishes.threads  # WSGI-style: a reader thread
    pid, ppid = pool.taskwait(whoami, timeout=WAIT)
    assert pid != os.getpid() and ppid == pool.supervisor_pid


def test_lambdas_closures_and_task_objects(pool: TaskServer) -> None:
    base = 10
    assert pool.taskwait(lambda x: x + base, 5, timeout=WAIT) == 15
    assert pool.taskwait(Task(add, 2, b=3), timeout=WAIT) == 5
    assert pool.taskwait(double, 21, timeout=WAIT) == 42


def test_errors_come_back_with_traceback_text(pool: TaskServer, finishes: FinishLog) -> None:
    with pytest.raises(TaskFailed) as info:
        pool.taskwait(boom, "no mail server", timeout=WAIT)
    ev = info.value.event
    assert ev.status == "error" and ev.error is not None
    assert ev.error.type == "ValueError" and ev.error.message == "no mail server"
    assert "in boom" in ev.error.traceback and "raise ValueError(message)" in ev.error.traceback
    assert finishes.wait([ev.task_id])[ev.task_id].status == "error"


def test_unpicklable_argument_is_a_type_error_at_task(pool: TaskServer) -> None:
    with pytest.raises(TypeError, match=r"task keyword argument 'lock' .*lock"):
        pool.task(add, 1, lock=threading.Lock())
    with pytest.raises(TypeError, match=r"task argument 1 "):
        pool.task(add, 1, threading.Lock())
    with pytest.raises(TypeError, match="only a plain callable takes arguments"):
        pool.task(Signup("a@b"), 1)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['to'\].*timeout= and retries="):
        pool.task(Task(add, 1, 2), to="x")
    assert pool.taskwait(add, 1, 1, timeout=WAIT) == 2  # nothing wedged


def test_unpicklable_return_value_finishes_error_naming_it(pool: TaskServer) -> None:
    with pytest.raises(TaskFailed, match="the return value cannot be pickled: _thread.lock"):
        pool.taskwait(return_lock, timeout=WAIT)


def test_taskwait_multi_and_timeout(pool: TaskServer) -> None:
    events = pool.taskwait_multi([Task(add, 1, 2), Task(sleep_then, 0.01, "x"), Signup("s")], timeout=WAIT)
    assert [e.status if e else None for e in events] == ["ok", "ok", "error"]
    assert events[0] is not None and events[0].return_value == 3
    assert events[2] is not None and events[2].error is not None
    assert "nothing handled the task" in events[2].error.message
    with pytest.raises(TimeoutError):
        pool.taskwait(sleep_then, 1.0, timeout=0.05)


def test_ids_increase_across_processes_and_finish_where_queued(
    pool: TaskServer, finishes: FinishLog, tmp_path: Path
) -> None:
    """Two forked processes share the pool: ids are unique across them, each
    process's ids increase, and each process gets exactly its own finishes."""
    mine = [pool.task(add, 0, i) for i in range(50)]

    def child() -> None:
        fin = Finishes()
        pool.plugins.register(fin)
        ids = [pool.task(add, 1, i) for i in range(200)]
        got = fin.wait(ids)
        right = all(got[i].return_value == 1 + k for k, i in enumerate(ids))
        extra = sorted(set(fin.events) - set(ids))
        (tmp_path / f"{os.getpid()}.pkl").write_bytes(pickle.dumps((ids, right, extra)))

    children = [fork_call(child) for _ in range(2)]
    assert [reap(pid) for pid in children] == [0, 0]
    results = [pickle.loads(p.read_bytes()) for p in tmp_path.glob("*.pkl")]
    assert len(results) == 2
    all_ids = set(mine)
    for ids, right, extra in results:
        assert right and extra == [] and ids == sorted(ids)
        assert not all_ids & set(ids)
        all_ids |= set(ids)
    finishes.wait(mine)
    assert set(finishes.events) == set(mine)  # none of the children's finishes came here


def test_a_task_can_queue_tasks(pool: TaskServer) -> None:
    assert pool.taskwait(queue_inner, 5, timeout=WAIT) == 105


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


def test_deferred_listener_runs_in_the_worker_once(pool: TaskServer, finishes: FinishLog) -> None:
    task_id = send_mail("bob")  # queues a ServiceTask on current_server()
    ev = finishes.wait([task_id])[task_id]
    assert ev.status == "ok" and ev.return_value[0] == "sent to bob" and ev.return_value[1] in (0, 1)
    assert send_mail.listener("x") == ("sent to x", None)  # the real listener, run here
    with pytest.raises(ValueError, match="already deferred"):
        deferred(welcome, "mail.send")


def test_task_delay_uses_the_current_server(pool: TaskServer, finishes: FinishLog) -> None:
    task_id = double.delay(4)
    assert finishes.wait([task_id])[task_id].return_value == 8
    assert double(5) == 10


def test_hook_wrappers_are_refused() -> None:
    class Wrapper:
        @hookimpl(wrapper=True)
        def on_finish(self, event: TaskFinishEvent) -> Any:
            return (yield)

    with pytest.raises(ValueError, match="cannot be a hook wrapper"):
        TaskServer(1, plugins=[Wrapper()], entrypoints=False)


def test_a_failing_on_finish_does_not_stop_the_others(caplog: pytest.LogCaptureFixture, finishes: FinishLog) -> None:
    class Broken:
        @hookimpl(tryfirst=True)
        def on_finish(self, event: TaskFinishEvent) -> None:
            raise RuntimeError("broken plugin")

    with TaskServer(1, plugins=[finishes, Broken()]) as server:
        task_id = server.task(add, 1, 2)
        assert finishes.wait([task_id])[task_id].return_value == 3
    assert "broken plugin" in caplog.text


# -- async ----------------------------------------------------------------------------


def test_async_tasks_run_concurrently_in_one_worker() -> None:
    with TaskServer(1, task_concurrency=8) as server:
        events = server.taskwait_multi([Task(async_peak, 0.2) for _ in range(8)], timeout=WAIT)
    peaks = [e.return_value for e in events if e is not None and e.ok]
    assert len(peaks) == 8 and max(peaks) > 1


def test_task_async_and_on_finish_on_the_event_loop(finishes: FinishLog) -> None:
    with TaskServer(2, plugins=[finishes]) as server:

        async def main() -> tuple[int, list[int], int]:
            loop_thread = threading.get_ident()
            one = await server.task_async(add, 1, 2)
            many = await asyncio.gather(*(server.task_async(add, i, 0) for i in range(50)))
            with pytest.raises(TaskFailed, match="ValueError"):
                await server.task_async(boom, "async boom")
            with pytest.raises(RuntimeError, match="would block the event loop"):
                server.taskwait(add, 1, 1)
            return one, list(many), loop_thread

        one, many, loop_thread = asyncio.run(asyncio.wait_for(main(), WAIT))
        assert one == 3 and many == list(range(50))
        assert finishes.threads == {loop_thread}
        # the loop is closed now: a new caller gets a reader thread
        assert server.taskwait(add, 2, 2, timeout=WAIT) == 4


# -- full queue, stop, crashes ------------------------------------------------------------


def test_full_queue_waits_then_raises_queue_full_and_drops_nothing(tmp_path: Path, finishes: FinishLog) -> None:
    gate = str(tmp_path / "gate")
    server = TaskServer(1, plugins=[finishes], queue_bytes=4096, queue_timeout=0.2)
    pids = pool_processes(server)
    try:
        ids = [server.task(wait_for_file, gate)]
        assert wait_until(lambda: server.stats()["workers"][0]["task_id"] == ids[0])  # the worker took it
        with pytest.raises(QueueFull, match="queue_timeout=0.2"):
            for _ in range(1000):
                ids.append(server.task(add, 1, 1))
        Path(gate).touch()
        got = finishes.wait(ids)
        assert all(e.ok for e in got.values())
    finally:
        server.close()
    assert pids_gone(pids)


def test_close_drains_queued_tasks(finishes: FinishLog) -> None:
    server = TaskServer(2, plugins=[finishes])
    pids = pool_processes(server)
    ids = [server.task(sleep_then, 0.001, i) for i in range(200)]
    server.close()
    assert pids_gone(pids)
    assert [finishes.deliveries[i][0].return_value for i in ids] == list(range(200))
    with pytest.raises(PoolClosed):
        server.task(add, 1, 1)


def test_close_right_after_start_still_runs_the_task() -> None:
    """A SIGTERM that reaches the supervisor before its loop runs must wait,
    pending, and not kill it: the queued task still runs (a regression: this
    lost the task in a few percent of tries)."""
    for _ in range(100):
        finishes = FinishLog()
        server = TaskServer(1, plugins=[finishes])
        pids = pool_processes(server)
        task_id = server.task(add, 2, 3)
        server.close()
        assert pids_gone(pids)
        assert [e.return_value for e in finishes.deliveries[task_id]] == [5]


def test_close_cancels_what_cannot_run_in_time(finishes: FinishLog) -> None:
    server = TaskServer(1, plugins=[finishes], shutdown_timeout=0.3)
    pids = pool_processes(server)
    ids = [server.task(sleep_then, 0.1) for _ in range(30)]
    server.close()
    assert pids_gone(pids)
    statuses = [finishes.deliveries[i][0].status for i in ids]
    assert all(len(finishes.deliveries[i]) == 1 for i in ids)
    assert statuses[0] == "ok" and statuses[-1] == "cancelled"
    assert set(statuses) <= {"ok", "lost", "cancelled"}


def test_a_killed_worker_is_replaced_and_its_task_finishes_lost(tmp_path: Path, finishes: FinishLog) -> None:
    server = TaskServer(1, plugins=[finishes])
    try:
        victim, _ = server.taskwait(whoami, timeout=WAIT)
        task_id = server.task(wait_for_file, str(tmp_path / "never"))
        assert wait_until(lambda: server.stats()["workers"][0]["task_id"] == task_id)  # the worker took it
        os.kill(victim, signal.SIGKILL)
        ev = finishes.wait([task_id])[task_id]
        assert ev.status == "lost" and ev.error is not None and "SIGKILL" in ev.error.message
        pid, _ = server.taskwait(whoami, timeout=WAIT)
        assert pid != victim
    finally:
        server.close()


def test_invalid_settings_name_the_problem() -> None:
    with pytest.raises(ValueError, match="task_workers must be an int in 1..1024, got 0"):
        TaskServer(0)
    with pytest.raises(ValueError, match="queue_timeout"):
        TaskServer(1, queue_timeout=-1)


def test_no_server_means_a_clear_error() -> None:
    code = in_child(lambda: _no_server_message())
    assert code == 0


def _no_server_message() -> None:
    from taskmw import tasks

    tasks._set_default(None)
    with pytest.raises(RuntimeError, match="no taskmw pool in this process"):
        current_server()
