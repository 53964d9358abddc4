"""Finish delivery (:mod:`taskmw.delivery`): every ``on_finish`` runs
even if one fails, and a task finishes once. Tests marked
``no_process_left`` count this process's descendants before and after: none
may be left.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import WAIT, FinishLog, add, boom, local_pool, wait_until

from taskmw import TaskFailed, TaskFinishEvent, TaskServer, hookimpl, records

# -- tasks (module level: they travel by reference) ------------------------------


class TwoArgs(Exception):
    """Pickles (as its class and ``args``) but cannot be unpickled: its
    ``__init__`` wants two arguments and ``args`` holds one."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}-{b}")


def return_two_args() -> TwoArgs:
    return TwoArgs(1, 2)


def value(v: str) -> str:
    return v


class Raising:
    """An ``on_finish`` that raises what a task's return value names."""

    kinds = {"exit": SystemExit, "interrupt": KeyboardInterrupt, "base": BaseException}

    @hookimpl(tryfirst=True)
    def on_finish(self, event: TaskFinishEvent) -> None:
        if event.return_value in self.kinds:
            raise self.kinds[event.return_value](f"raised by the hook for {event.return_value}")


class Slow:
    """An ``on_finish`` taking ``seconds`` per finish, noting when the last ran."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.count = 0
        self.last = 0.0

    @hookimpl
    def on_finish(self, event: TaskFinishEvent) -> None:
        time.sleep(self.seconds)
        self.count += 1
        self.last = time.monotonic()


def test_a_failing_on_finish_does_not_stop_the_others(caplog: pytest.LogCaptureFixture, finishes: FinishLog) -> None:
    class Broken:
        @hookimpl(tryfirst=True)
        def on_finish(self, event: TaskFinishEvent) -> None:
            raise RuntimeError("broken plugin")

    with TaskServer(1, plugins=[finishes, Broken()]) as server:
        task_id = server.task(add, 1, 2)
        assert finishes.wait([task_id])[task_id].return_value == 3
    assert "broken plugin" in caplog.text


@pytest.mark.usefixtures("no_process_left")
def test_a_second_finish_for_a_task_is_dropped(finishes: FinishLog) -> None:
    """A worker that dies after sending a finish but before releasing its task
    makes the supervisor send ``lost`` for it too: only the first counts."""
    with TaskServer(1, plugins=[finishes]) as server:
        task_id = server.task(add, 1, 2)
        finishes.wait([task_id])
        late = records.FinishRecord(task_id, task_id, records.LOST, None, None, 0.0, 0).encode()
        pool = local_pool(server)
        assert pool.own_channel is not None
        pool.channels[pool.own_channel].push(late)
        assert server.taskwait(add, 2, 2, timeout=WAIT) == 4  # delivered after the duplicate
    assert [e.status for e in finishes.deliveries[task_id]] == ["ok"]


@pytest.mark.parametrize("on_loop", [False, True], ids=["thread", "loop"])
def test_a_hook_raising_a_base_exception_stops_no_delivery(
    on_loop: bool, caplog: pytest.LogCaptureFixture, finishes: FinishLog
) -> None:
    """``SystemExit``, ``KeyboardInterrupt`` and a bare ``BaseException`` from
    an ``on_finish`` are logged; the reader (a thread, or the event loop) goes on."""
    kinds = ["exit", "interrupt", "base"]
    with TaskServer(2, plugins=[finishes, Raising()]) as server:
        if on_loop:

            async def main() -> list[int]:
                ids = [server.task(value, k) for k in kinds]
                assert await asyncio.wait_for(server.task_async(add, 1, 1), 5.0) == 2
                return ids

            ids = asyncio.run(main())
        else:
            ids = [server.task(value, k) for k in kinds]
            assert server.taskwait(add, 1, 1, timeout=5.0) == 2
        finishes.wait(ids, timeout=5.0)
        assert server.taskwait(add, 2, 2, timeout=5.0) == 4
    for k in kinds:
        assert f"raised by the hook for {k}" in caplog.text


def test_a_return_value_that_cannot_be_unpickled_here_finishes_error_naming_it(
    caplog: pytest.LogCaptureFixture, finishes: FinishLog
) -> None:
    with TaskServer(1, plugins=[finishes]) as server:
        with pytest.raises(TaskFailed) as failed:
            server.taskwait(return_two_args, timeout=5.0)
        event = failed.value.event
        assert event.status == "error" and event.name.endswith("return_two_args") and event.worker_id == 0
        assert event.error is not None and "test_delivery.TwoArgs" in event.error.message
        assert "could not be unpickled" in event.error.message
        task_id = server.task(return_two_args)
        assert finishes.wait([task_id])[task_id].status == "error"
    assert "unreadable finish record was dropped" not in caplog.text


def test_close_delivers_every_finish_to_slow_hooks_before_it_returns() -> None:
    """4,000 tasks, 2 ms of ``on_finish`` each (8 s of hooks, longer than the
    reader used to be given), a short ``shutdown_timeout``: every finish has
    reached the hooks when ``close()`` returns, and none runs after."""
    slow = Slow(0.002)
    server = TaskServer(2, plugins=[slow], shutdown_timeout=0.5, channel_bytes=8 << 20, entrypoints=False)
    n = 4000
    for i in range(n):
        server.task(add, i, 1)
    assert wait_until(lambda: server.stats()["queue_depth"] == 0)  # all run: the rest is delivery
    server.close()
    returned, count = time.monotonic(), slow.count
    assert count == n
    assert slow.last <= returned
    assert not any(t.name.startswith("taskmw-finishes") for t in threading.enumerate())


_AT_EXIT = """
import atexit, sys, time
count = 0

def report():
    print("delivered", count, flush=True)

atexit.register(report)  # before taskmw's own exit handler is registered: runs after it
sys.path.insert(0, {tests!r})
from helpers import add
from taskmw import TaskServer, hookimpl

class Slow:
    @hookimpl
    def on_finish(self, event):
        global count
        time.sleep(0.002)
        count += 1

server = TaskServer(2, plugins=[Slow()], shutdown_timeout=0.5, channel_bytes=8 << 20, entrypoints=False)
for i in range({n}):
    server.task(add, i, 1)
while server.stats()["queue_depth"]:
    time.sleep(0.01)
"""


def test_interpreter_exit_delivers_every_finish_to_slow_hooks() -> None:
    n = 4000
    script = _AT_EXIT.format(tests=str(Path(__file__).parent), n=n)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"delivered {n}" in out.stdout, out.stdout + out.stderr


def test_a_failed_task_without_a_waiter_is_logged(caplog: pytest.LogCaptureFixture, finishes: FinishLog) -> None:
    """One WARNING line on ``taskmw.tasks`` (id, name, status, error), the
    traceback at DEBUG; nothing for a task someone waited for, nor when a
    plugin says it logs finishes itself."""
    caplog.set_level(logging.DEBUG, logger="taskmw.tasks")
    with TaskServer(1, plugins=[finishes], entrypoints=False) as server:
        task_id = server.task(boom, "nobody waits")
        finishes.wait([task_id])
        with pytest.raises(TaskFailed):
            server.taskwait(boom, "someone waits", timeout=5.0)
        assert server.taskwait(add, 1, 1, timeout=5.0) == 2
    lines = [r for r in caplog.records if r.name == "taskmw.tasks"]
    warnings = [r for r in lines if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        f"task {task_id} error: helpers.boom: ValueError: nobody waits (nobody waited for it)"
    ]
    debug = [r.getMessage() for r in lines if r.levelno == logging.DEBUG]
    assert len(debug) == 1 and f"task {task_id}" in debug[0] and "Traceback" in debug[0]
    assert "someone waits" not in caplog.text

    class LogsItself:
        taskmw_logs_finishes = True

        @hookimpl
        def on_finish(self, event: TaskFinishEvent) -> None:
            pass

    caplog.clear()
    with TaskServer(1, plugins=[finishes, LogsItself()], entrypoints=False) as server:
        task_id = server.task(boom, "the plugin logs it")
        finishes.wait([task_id])
    assert not [r for r in caplog.records if r.name == "taskmw.tasks"]
