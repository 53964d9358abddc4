"""Completion channels that stay full: a process that stops reading its
finishes (SIGSTOPped, a stalled ``on_finish`` hook) never stalls the pool for
the others, loses none of its own finishes while it lives (not even the
supervisor's ``lost``), and once it is gone what was waiting for it is
dropped at once. Real processes and signals; every test counts this
process's descendants before and after: none may be left.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from helpers import WAIT, FinishLog, add, fork_call, local_pool, reap, wait_for_file, wait_until

from taskmw import TaskServer, hookimpl
from taskmw.events import TaskFinishEvent
from taskmw.pool import Pool

pytestmark = pytest.mark.usefixtures("no_process_left")


class StalledHook(FinishLog):
    """An ``on_finish`` hook that blocks (the reader thread with it) until
    :attr:`gate` is set, so the process stops reading its channel."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    @hookimpl
    def on_finish(self, event: TaskFinishEvent) -> None:
        self.gate.wait(4 * WAIT)
        super().on_finish(event)


def touch_then_wait(started: str, gate: str) -> str:
    Path(started).touch()
    return wait_for_file(gate)


def full(pool: Pool, index: int, slack: int = 1024) -> bool:
    """True if completion channel ``index`` has less than ``slack`` bytes free."""
    s = pool.channels[index].stats()
    return s.capacity - s.used_bytes < slack


def worker_of(server: TaskServer, task_id: int) -> dict[str, object] | None:
    """The worker row running ``task_id`` now."""
    return next((w for w in server.stats()["workers"] if w["task_id"] == task_id), None)


def test_a_lost_finish_waits_for_a_stalled_reader_and_the_supervisor_goes_on(tmp_path: Path) -> None:
    """A worker dies while its task's channel is full and stays full for
    longer than the 5 s the supervisor used to wait: the ``lost`` finish is
    delivered once the process reads again, and the dead worker is replaced
    meanwhile (the supervisor's loop did not wait on the channel)."""
    hook = StalledHook()
    started, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    with TaskServer(2, plugins=[hook], channel_bytes=4096, shutdown_timeout=10.0) as server:
        try:
            pool = local_pool(server)
            victim = server.task(touch_then_wait, started, gate)
            assert wait_until(lambda: os.path.exists(started) and worker_of(server, victim) is not None)
            fillers = [server.task(add, 0, i) for i in range(300)]  # ~24 KB of finishes for a 4 KiB channel
            index = pool.own_channel
            assert index is not None
            assert wait_until(lambda: full(pool, index))
            row = worker_of(server, victim)
            assert row is not None
            killed, worker_id = int(row["pid"]), int(row["worker_id"])  # type: ignore[call-overload]
            os.kill(killed, signal.SIGKILL)
            assert wait_until(lambda: server.status(victim).status == "lost")  # settled by the supervisor
            t0 = time.monotonic()

            def replaced() -> bool:
                return server.stats()["workers"][worker_id]["pid"] not in (0, killed)  # forked

            replaced_in = time.monotonic() - t0 if wait_until(replaced, 10.0) else None
            time.sleep(max(0.0, 5.5 - (time.monotonic() - t0)))  # longer than the supervisor's old patience
            assert not hook.events  # nothing was read meanwhile
            hook.gate.set()
            got = hook.wait([victim, *fillers])
            assert got[victim].status == "lost"
            assert [got[i].return_value for i in fillers] == list(range(300))
            assert all(len(hook.deliveries[i]) == 1 for i in [victim, *fillers])
            assert replaced_in is not None and replaced_in < 2.0, (
                f"the dead worker was replaced after {replaced_in}s: the supervisor waited on the full channel"
            )
        finally:
            hook.gate.set()
            Path(gate).touch()


def stopped_dispatcher(server: TaskServer, ready: Path, n: int) -> None:
    """In a forked child: stop reading finishes (a hook that never returns),
    queue ``n`` tasks, say which channel is ours, and wait to be stopped."""
    server.plugins.register(StalledHook())
    for i in range(n):
        server.task(add, 1, i)
    tmp = ready.with_suffix(".tmp")
    tmp.write_text(str(local_pool(server).own_channel))
    tmp.rename(ready)
    time.sleep(4 * WAIT)


def test_a_stopped_dispatcher_stalls_nobody_and_its_backlog_clears_when_it_dies(
    finishes: FinishLog, tmp_path: Path
) -> None:
    """One process queues 30,000 tasks, never reads their finishes and is
    SIGSTOPped with its channel full: another process's 1,000 tasks still
    finish promptly (the pool used to stop dead). Once it is SIGKILLed, the
    10,000+ finishes waiting for it are gone within a few seconds (they used
    to drain at about one per second per worker), and the pool runs on."""
    n = 30_000
    ready = tmp_path / "ready"
    with TaskServer(2, plugins=[finishes], max_dispatchers=4, shutdown_timeout=10.0) as server:
        pool = local_pool(server)
        assert server.taskwait(add, 0, 0, timeout=WAIT) == 0  # this process claims its channel first
        child = fork_call(lambda: stopped_dispatcher(server, ready, n))
        try:
            assert wait_until(ready.exists)
            index = int(ready.read_text())
            assert index != pool.own_channel
            assert wait_until(lambda: full(pool, index))
            os.kill(child, signal.SIGSTOP)
            t0 = time.monotonic()
            mine = [server.task(add, 2, i) for i in range(1000)]
            got = finishes.wait(mine, timeout=15.0)  # behind the rest of the child's tasks in the queue
            assert [got[i].return_value for i in mine] == [2 + i for i in range(1000)]
            print(f"1000 tasks past a stopped dispatcher: {time.monotonic() - t0:.2f}s")
            backlog = pool.backlogs[index]
            waiting = len(backlog)
            assert waiting >= 10_000, waiting
        finally:
            os.kill(child, signal.SIGKILL)
            reap(child)
        t0 = time.monotonic()
        assert wait_until(lambda: len(backlog) == 0, 5.0), f"{len(backlog)} finishes still wait for a dead process"
        print(f"backlog of {waiting} finishes for a dead dispatcher cleared in {time.monotonic() - t0:.2f}s")
        more = [server.task(add, 3, i) for i in range(1000)]
        assert len(finishes.wait(more, timeout=10.0)) == 1000
        assert all(len(finishes.deliveries[i]) == 1 for i in mine + more)


def test_a_stalled_reader_gets_its_whole_backlog_exactly_once_and_stalls_nobody(tmp_path: Path) -> None:
    """This process's hook stalls while 30,000 of its tasks finish (most of
    them wait in the backlog); a forked dispatcher's 1,000 tasks finish
    meanwhile; then the hook returns and every one of the 30,000 is
    delivered, exactly once."""
    n = 30_000
    hook = StalledHook()
    with TaskServer(2, plugins=[hook], max_dispatchers=4, shutdown_timeout=10.0) as server:
        try:
            pool = local_pool(server)
            ids = [server.task(add, 0, i) for i in range(n)]
            index = pool.own_channel
            assert index is not None
            assert wait_until(lambda: full(pool, index))

            def other() -> None:
                hook.gate.set()  # this process's copy of the hook: it reads its finishes
                fin = FinishLog()
                server.plugins.register(fin)
                theirs = [server.task(add, 5, i) for i in range(1000)]
                got = fin.wait(theirs, timeout=15.0)
                assert [got[i].return_value for i in theirs] == [5 + i for i in range(1000)]

            assert reap(fork_call(other), 30.0) == 0, "another dispatcher's tasks stalled behind a stalled reader"
            assert wait_until(lambda: server.stats()["queue_depth"] == 0)
            assert not hook.events
            hook.gate.set()
            got = hook.wait(ids, timeout=30.0)
            assert [got[i].return_value for i in ids] == list(range(n))
            assert all(len(hook.deliveries[i]) == 1 for i in ids)
            assert len(pool.backlogs[index]) == 0
        finally:
            hook.gate.set()
