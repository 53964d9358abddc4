"""The facade with a real pool: ``task()``, ``taskwait()``,
``taskwait_multi()``, ``task_async()``, a full queue, and which backend a
``TaskServer`` gets. The pool's processes are checked gone after each test
(the ``pool`` fixture).
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    WAIT,
    FinishLog,
    Signup,
    add,
    boom,
    double,
    pids_gone,
    pool_processes,
    sleep_then,
    wait_for_file,
    wait_until,
    whoami,
)

import taskmw
from taskmw import QueueFull, Task, TaskError, TaskFailed, TaskFinishEvent, TaskServer, current_server

# -- tasks (module level: they travel by reference) ------------------------------


def return_lock() -> Any:
    return threading.Lock()


def queue_inner(a: int) -> int:
    """A task that queues another task and waits for it (tasks may queue tasks)."""
    return current_server().taskwait(add, a, 100, timeout=WAIT)  # type: ignore[no-any-return]


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


def test_unpicklable_argument_is_a_type_error_at_task(pool: TaskServer) -> None:
    with pytest.raises(TypeError, match=r"task keyword argument 'lock' .*lock"):
        pool.task(add, 1, lock=threading.Lock())
    with pytest.raises(TypeError, match=r"task argument 1 "):
        pool.task(add, 1, threading.Lock())
    with pytest.raises(TypeError, match="only a plain callable takes arguments"):
        pool.task(Signup("a@b"), 1)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['to'\].*task_timeout=, retries="):
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


def test_a_task_can_queue_tasks(pool: TaskServer) -> None:
    assert pool.taskwait(queue_inner, 5, timeout=WAIT) == 105


def test_task_failed_carries_the_event() -> None:
    ev = TaskFinishEvent(3, "error", None, TaskError("KeyError", "'k'", "Traceback: here"), 0.0, 0)
    exc = TaskFailed(ev)
    assert exc.event is ev and "task 3 finished 'error': KeyError: 'k'" in str(exc) and "Traceback: here" in str(exc)


# -- async ----------------------------------------------------------------------------


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


# -- a full queue, the backend -----------------------------------------------------------


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


def test_unknown_backend_names_the_installed_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"backend must be one of 'local'.*got 'nope'"):
        taskmw.TaskServer(1, backend="nope")
    monkeypatch.setenv("TASKMW_BACKEND", "from-env")
    with pytest.raises(ValueError, match="got 'from-env'"):
        taskmw.TaskServer(1)


# -- a waiter that is gone, a loop that closes -------------------------------------------


async def _until(predicate: Any, timeout: float = WAIT) -> bool:
    """``wait_until`` on an event loop (it goes on running meanwhile)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def _late(finishes: FinishLog) -> bool:
    return any(e.return_value == "late" for e in finishes.events.values())


def test_a_cancelled_task_async_loses_no_later_finish_on_the_loop(finishes: FinishLog) -> None:
    """``asyncio.wait_for`` gives up on a ``task_async``: its finish still
    reaches ``on_finish`` when it comes, and the loop's reader goes on with
    every finish after it."""
    with TaskServer(2, plugins=[finishes]) as server:

        async def main() -> list[int]:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(server.task_async(sleep_then, 0.3, "late"), 0.05)
            assert await _until(lambda: _late(finishes), 5.0), "the cancelled task's finish reached no hook"
            return list(await asyncio.wait_for(asyncio.gather(*(server.task_async(add, i, 1) for i in range(20))), 5))

        assert asyncio.run(asyncio.wait_for(main(), WAIT)) == [i + 1 for i in range(20)]


def test_a_waiter_whose_loop_closed_does_not_stop_the_reader_thread(finishes: FinishLog) -> None:
    """The reader is a thread (the first task was queued off any loop); a
    ``task_async`` on a short-lived loop is given up, and that loop closes
    before its finish comes: the thread goes on."""
    with TaskServer(2, plugins=[finishes]) as server:
        assert server.taskwait(add, 1, 1, timeout=WAIT) == 2  # a reader thread

        async def give_up() -> None:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(server.task_async(sleep_then, 0.3, "late"), 0.05)

        asyncio.run(give_up())  # the loop is closed now
        assert wait_until(lambda: _late(finishes), 5.0), "the late finish reached no hook"
        assert server.taskwait(add, 2, 2, timeout=5.0) == 4


def test_a_client_disconnecting_under_uvicorn_loses_no_later_finish(finishes: FinishLog, tmp_path: Path) -> None:
    """uvicorn serves an ASGI app whose handler awaits ``task_async`` and
    gives up when the client goes away (the usual way: a disconnect cancels
    the await); the requests after it still get their tasks' results."""
    import socket

    import httpx
    import uvicorn

    server = TaskServer(2, plugins=[finishes])

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await receive()  # the request
        if scope["path"] == "/slow":
            work = asyncio.ensure_future(server.task_async(sleep_then, 0.3, "late"))
            gone = asyncio.ensure_future(receive())  # http.disconnect when the client leaves
            done, _ = await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
            if gone in done:
                work.cancel()
                return
            gone.cancel()
            body = b"slow"
        else:
            body = str(await server.task_async(add, 2, 3)).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": body})

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    web = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=web.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: web.started)
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
            assert wait_until(lambda: any(w["task_id"] for w in server.stats()["workers"]))  # it runs
        assert wait_until(lambda: _late(finishes), 5.0), "the given-up task's finish reached no hook"
        assert httpx.get(f"http://127.0.0.1:{port}/add", timeout=5.0).text == "5"
    finally:
        web.should_exit = True
        thread.join(WAIT)
        server.close()
        sock.close()


def test_finishes_outstanding_when_the_loop_closes_come_on_a_thread(finishes: FinishLog, tmp_path: Path) -> None:
    """The first ``task()`` ran inside ``asyncio.run()``, so the reader was
    on that loop; the loop closes with 100 tasks still running: they are
    delivered all the same, on a thread, with no further ``task()`` call."""
    gate = tmp_path / "gate"
    with TaskServer(2, plugins=[finishes]) as server:

        async def queue() -> list[int]:
            return [server.task(wait_for_file, str(gate)) for _ in range(100)]

        ids = asyncio.run(queue())
        gate.touch()
        got = finishes.wait(ids, timeout=10.0)
        assert len(got) == 100 and all(e.ok for e in got.values())
        assert threading.get_ident() not in finishes.threads
        later = server.taskwait(add, 1, 2, timeout=WAIT)  # and from then on
        assert later == 3
