"""A consumer lingering in pop (``Ring.pop_many(linger=...)``), and pushes
made with ``soon=True`` that leave it asleep; the pool's ``start_delay``,
which makes task workers linger at web request rates so that a task queued
with ``task()`` does not wake a process per task; and the workers'
``SCHED_BATCH`` policy."""

from __future__ import annotations

import os
import signal
import time

import pytest
from helpers import WAIT, add, wait_until, worker_pids
from test_ring_procs import Child, proc_state
from test_ring_procs import wait_until as wait_child

from taskmw import Ring, TaskServer
from taskmw.ring import lib


def _linger_pop(ring: Ring, linger: float, timeout: float) -> tuple[list[bytes], float]:
    started = time.monotonic()
    batch = ring.pop_many(4, timeout=timeout, linger=linger)
    return batch.records, time.monotonic() - started


def _lingering(ring: Ring, child: Child) -> None:
    wait_child(lambda: ring.stats().lingering and proc_state(child.pid) == "S", WAIT, "a lingering consumer", child)


def _asleep(ring: Ring, child: Child, base: int) -> None:
    """Wait until ``child`` sleeps in pop (``pop_waits`` above ``base``)."""
    wait_child(lambda: ring.stats().pop_waits > base and proc_state(child.pid) == "S", WAIT, "a sleeper", child)


def test_a_soon_push_leaves_a_lingering_consumer_asleep() -> None:
    """With a consumer lingering, a push with soon=True makes no wake call:
    the consumer takes the record when its linger ends."""
    ring = Ring(1 << 16, spin_us=0)
    with Child(_linger_pop, ring, 0.5, WAIT) as child:
        _lingering(ring, child)
        before = ring.stats()
        ring.push(b"soon", soon=True)
        after = ring.stats()
        records, _ = child.result(WAIT)
    assert records == [b"soon"]
    assert after.wakeups == before.wakeups, "a soon push woke the lingering consumer"
    assert ring.stats().woken == before.woken  # its linger ended by its own timeout


def test_a_push_wakes_a_lingering_consumer_at_once() -> None:
    """A push without soon (a task somebody waits for) wakes the lingerer:
    it returns long before its 60 s linger is over."""
    ring = Ring(1 << 16, spin_us=0)
    with Child(_linger_pop, ring, 60.0, 120.0) as child:
        _lingering(ring, child)
        ring.push(b"now")
        records, waited = child.result(WAIT)
    assert records == [b"now"]
    assert waited < 30.0
    assert not ring.stats().lingering


def test_one_consumer_lingers_at_a_time() -> None:
    """A second consumer asking to linger sleeps as usual, so a soon push
    made while the first lingers (60 s) is taken within a sleeper's 100 ms
    slice, not after the linger."""
    ring = Ring(1 << 16, spin_us=0)
    with Child(_linger_pop, ring, 60.0, 120.0) as lingerer:
        _lingering(ring, lingerer)
        base = ring.stats().pop_waits
        with Child(_linger_pop, ring, 60.0, 120.0) as sleeper:
            _asleep(ring, sleeper, base)
            ring.push(b"x", soon=True)
            assert wait_until(lambda: not ring.stats().records, timeout=WAIT)
            records, waited = sleeper.result(WAIT)
            assert records == [b"x"] and waited < 30.0
            assert ring.stats().lingering  # the first one lingers on


def test_a_consumer_killed_while_lingering_is_reclaimed() -> None:
    """SIGKILL a lingering consumer: until a supervisor's reclaim the ring
    believes it lingers (soon pushes wake nobody, records wait for the
    sleepers' slices); reclaim clears that, and soon pushes wake again."""
    ring = Ring(1 << 16, spin_us=0)
    child = Child(_linger_pop, ring, 60.0, 120.0)
    with child:
        _lingering(ring, child)
        child.kill()
    assert ring.stats().lingering  # the dead lingerer's flag, until reclaim
    assert ring.reclaim(child.pid) == []
    assert not ring.stats().lingering
    base = ring.stats().pop_waits
    with Child(_linger_pop, ring, 0.0, WAIT) as sleeper:
        _asleep(ring, sleeper, base)
        before = ring.stats().wakeups
        ring.push(b"after", soon=True)
        records, _ = sleeper.result(WAIT)
    assert records == [b"after"]
    assert ring.stats().wakeups > before


def test_a_push_with_an_unknown_wake_mode_is_refused() -> None:
    """The C core refuses a how that is not a TMW_WAKE_* (nothing pushed)."""
    ring = Ring(1 << 16, spin_us=0)
    slot = ring._my_slot()  # noqa: SLF001 - the C call needs this process's slot
    assert lib.tmw_ring_push_one(ring._r, slot, b"x", 1, 0, 0.0, 7) == lib.TMW_EINVAL  # noqa: SLF001
    assert ring.stats().records == 0


def test_start_delay_is_checked() -> None:
    for bad in (-0.001, 1.5, float("nan")):
        with pytest.raises(ValueError, match="start_delay"):
            TaskServer(1, start_delay=bad, entrypoints=False)


def test_tasks_at_web_rates_wake_a_worker_less_than_once_per_task() -> None:
    """Fire-and-forget tasks queued a few hundred a second: the task
    workers linger (start_delay) and take them without being woken, far
    fewer wake-ups than tasks; every task still runs once."""
    n = 300
    with TaskServer(2, start_delay=0.02, entrypoints=False) as server:
        ring = server.transport.pool.submit  # type: ignore[attr-defined]
        server.taskwait(add, 0, 0, timeout=WAIT)  # both started
        woken = ring.stats().woken
        ids = []
        for i in range(n):
            ids.append(server.task(add, i, 1))
            time.sleep(0.002)
        assert wait_until(lambda: all(server.status(t).state == "done" for t in ids[-5:]))
        assert [server.result(t, timeout=WAIT) for t in ids] == [i + 1 for i in range(n)]
        woken = ring.stats().woken - woken
        print(f"\n{n} tasks: {woken} sleeps ended by a wake-up")
        assert woken < n // 3, woken


def test_a_task_somebody_waits_for_does_not_wait_for_a_lingerer() -> None:
    """With the longest start_delay (1 s), taskwait still wakes a worker at
    once: 20 round trips take far less than 20 lingers."""
    with TaskServer(2, start_delay=1.0, entrypoints=False) as server:
        server.taskwait(add, 0, 0, timeout=WAIT)
        started = time.monotonic()
        for i in range(20):
            assert server.taskwait(add, i, 1, timeout=WAIT) == i + 1
        assert time.monotonic() - started < 10.0


def test_task_workers_run_under_sched_batch() -> None:
    """Task workers are SCHED_BATCH (a woken worker does not preempt the
    request running on its core); the process that built the pool is not."""
    with TaskServer(2, entrypoints=False) as server:
        for pid in worker_pids(server):
            assert os.sched_getscheduler(pid) == os.SCHED_BATCH, pid
        assert os.sched_getscheduler(0) == os.SCHED_OTHER


def test_a_task_taken_in_a_batch_behind_a_running_one_is_listed_queued(tmp_path) -> None:
    """One worker, lingering (start_delay 0.5 s): two tasks queued within one
    linger go out of the queue in one batch; while the first runs, the
    second is still listed (and reported) as queued, not lost from view."""
    from helpers import wait_for_file

    go = tmp_path / "go"
    with TaskServer(1, start_delay=0.5, entrypoints=False) as server:
        for i in range(8):  # quick tasks: the worker's batches grow and it lingers
            server.task(add, i, 1)
        assert wait_until(lambda: server.stats()["queue_depth"] == 0)
        first = server.task(wait_for_file, str(go))
        second = server.task(add, 1, 2)
        assert wait_until(lambda: server.status(first).state == "running")
        listed = server.tasks()
        assert [i.task_id for i in listed["running"]] == [first]
        assert second in [i.task_id for i in listed["queued"]], listed["queued"]
        assert server.status(second).state == "queued"
        go.touch()
        assert server.result(second, timeout=WAIT) == 3


def test_workers_linger_when_start_delay_is_longer_than_finish_delay() -> None:
    """A worker's pop waits no longer than its first lazy finish is due
    (finish_delay, 5 ms): a start_delay of 100 ms must still be lingered
    out (the rest of it after the finishes are woken), not dropped, or
    every task queued 10 ms apart wakes a worker."""
    n = 60
    with TaskServer(2, start_delay=0.1, finish_delay=0.005, entrypoints=False) as server:
        ring = server.transport.pool.submit  # type: ignore[attr-defined]
        server.taskwait(add, 0, 0, timeout=WAIT)
        woken = ring.stats().woken
        ids = []
        for i in range(n):
            ids.append(server.task(add, i, 1))
            time.sleep(0.01)
        assert [server.result(t, timeout=WAIT) for t in ids] == [i + 1 for i in range(n)]
        woken = ring.stats().woken - woken
        assert woken < n // 3, f"{woken} of {n} tasks woke a worker"


def test_workers_killed_while_one_lingers_leave_no_flag_and_tasks_flow() -> None:
    """SIGKILL the pool's task workers while one lingers (start_delay 1 s):
    the supervisor reclaims their slots, which clears the dead lingerer's
    flag (fresh workers start idle and do not linger), and fire-and-forget
    tasks queued next run once each."""
    with TaskServer(2, start_delay=1.0, finish_delay=0.0, entrypoints=False) as server:
        ring = server.transport.pool.submit  # type: ignore[attr-defined]
        server.taskwait(add, 0, 0, timeout=WAIT)
        for i in range(3):
            server.task(add, i, 1)
        assert wait_until(lambda: ring.stats().lingering, interval=0.001)
        old = set(worker_pids(server))
        for pid in old:
            os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: len(set(worker_pids(server)) - old) == 2)
        assert wait_until(lambda: not ring.stats().lingering), "a dead worker's linger flag was left set"
        ids = []
        for i in range(20):
            ids.append(server.task(add, i, 1))
            time.sleep(0.005)
        assert [server.result(t, timeout=WAIT) for t in ids] == [i + 1 for i in range(20)]


def test_a_task_taken_in_a_batch_behind_a_running_one_can_be_cancelled(tmp_path) -> None:
    """cancel() of a task its worker took in a batch behind a long one
    returns True at once (the worker reads the request before it could
    start it), the record says cancelled, and it never runs."""
    from helpers import wait_for_file

    go, ran = tmp_path / "go", tmp_path / "ran"
    with TaskServer(1, start_delay=0.5, entrypoints=False) as server:
        for i in range(8):
            server.task(add, i, 1)
        assert wait_until(lambda: server.stats()["queue_depth"] == 0)
        first = server.task(wait_for_file, str(go))
        second = server.task(_touch, str(ran))
        assert wait_until(lambda: server.status(first).state == "running")
        assert server.stats()["queue_depth"] == 0  # both taken: the second waits in the worker's batch
        started = time.monotonic()
        assert server.cancel(second) is True
        assert time.monotonic() - started < 5.0
        info = server.status(second)
        assert (info.state, info.status) == ("done", "cancelled")
        go.touch()
        assert server.result(first, timeout=WAIT) == str(go)
        assert wait_until(lambda: server.stats()["totals"]["cancelled"] == 1)
    assert not ran.exists()


def _touch(path: str) -> None:
    with open(path, "x"):
        pass
