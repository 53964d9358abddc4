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
from helpers import WAIT, FinishLog, add, local_pool, wait_for_file, wait_until

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
