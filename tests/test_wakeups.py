"""Wake-ups of the pool's task workers: a task wakes one idle worker, not
all of them, and a worker killed while idle strands no task."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import psutil
from helpers import WAIT, add, wait_until, worker_pids

from taskmw import TaskServer


def _switches(pids: list[int]) -> int:
    """Voluntary context switches of every thread of these processes."""
    return sum(psutil.Process(pid).num_ctx_switches().voluntary for pid in pids)


def _submit(server: TaskServer) -> Any:
    return server.transport.pool.submit  # type: ignore[attr-defined]


def test_a_task_wakes_one_idle_worker() -> None:
    """Four idle workers, tasks queued one at a time: each wakes one worker
    (the submit ring's ``woken`` counts the sleeps a wake-up ended), and the
    idle workers' context switches stay near one per task plus their 100 ms
    re-checks, not four per task."""
    workers, n = 4, 40
    with TaskServer(workers, entrypoints=False) as server:
        pids = worker_pids(server)
        ring = _submit(server)
        woken, switches, started = ring.stats().woken, _switches(pids), time.monotonic()
        for i in range(n):
            assert server.taskwait(add, i, 1, timeout=WAIT) == i + 1
        elapsed = time.monotonic() - started
        woken, switches = ring.stats().woken - woken, _switches(pids) - switches
        print(
            f"\n{n} tasks in {elapsed:.2f} s: {woken} workers woken, {switches} context switches of {workers} workers"
        )
        assert woken <= n + 2, woken
        assert switches <= 2 * n + workers * (10 * elapsed + 3), switches


def test_a_worker_killed_while_idle_strands_no_task() -> None:
    """SIGKILL an idle worker (asleep in the submit ring): tasks queued at
    once still run promptly on the other one, before and after the
    supervisor replaced the dead one."""
    with TaskServer(2, entrypoints=False) as server:
        victim, other = worker_pids(server)
        os.kill(victim, signal.SIGKILL)
        for i in range(20):
            assert server.taskwait(add, i, 1, timeout=5.0) == i + 1
        assert wait_until(lambda: victim not in [w["pid"] for w in server.stats()["workers"]])
        assert other in worker_pids(server)
        assert server.taskwait(add, 2, 2, timeout=WAIT) == 4
