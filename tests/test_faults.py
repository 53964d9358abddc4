"""Fault injection: tasks and processes that misbehave, with real processes
and real signals. Each test asserts the exact finish of every task id, and
counts this process's descendants before and after: none may be left.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    WAIT,
    Finishes,
    FinishLog,
    add,
    alive,
    die,
    local_pool,
    pids_gone,
    pool_processes,
    sleep_then,
    wait_until,
    worker_pids,
)

from taskmw import PoolClosed, Task, TaskEvent, TaskServer, _codec, hookimpl, records

pytestmark = pytest.mark.usefixtures("no_process_left")

# -- tasks ---------------------------------------------------------------------


def pid_then_sleep(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


async def async_sleep(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "slept"


def fail_until(path: str, good_on: int) -> int:
    """Fail until the ``good_on``-th call (counted in a file): a flaky task."""
    with open(path, "a+") as f:
        f.write("x")
        f.seek(0)
        calls = len(f.read())
    if calls < good_on:
        raise RuntimeError(f"attempt {calls} fails")
    return calls


def die_on_first(path: str) -> int:
    """SIGKILL its worker the first time it runs; succeed the second time."""
    if not os.path.exists(path):
        Path(path).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return os.getpid()


def size_of(data: bytes) -> int:
    return len(data)


def make_bytes(n: int) -> bytes:
    return b"r" * n


def noop(_: int) -> None:
    return None


# -- helpers -------------------------------------------------------------------


class SeenInWorker:
    """A plugin writing ``task_id attempt`` of every task a worker starts to a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @hookimpl(tryfirst=True)
    def on_task(self, event: TaskEvent) -> None:
        with open(self.path, "a") as f:
            f.write(f"{event.task_id} {event.attempt}\n")

    def seen(self) -> list[tuple[int, int]]:
        return [(int(a), int(b)) for a, b in (line.split() for line in self.path.read_text().splitlines())]


# -- crashes -------------------------------------------------------------------


@pytest.mark.parametrize("how", ["sigkill", "exit", "segfault"])
def test_a_worker_dying_mid_task_is_replaced_and_its_task_finishes_lost(how: str) -> None:
    finishes = FinishLog()
    with TaskServer(2, plugins=[finishes]) as server:
        before = set(worker_pids(server))
        dead = server.task(die, how)
        event = finishes.wait([dead])[dead]
        assert event.status == "lost"
        assert event.error is not None and event.error.type == "WorkerLost"
        assert len(set(worker_pids(server)) - before) == 1  # one replaced, the other untouched
        assert server.taskwait(add, 2, 2, timeout=WAIT) == 4  # the pool keeps serving
        assert server.stats()["workers"][finishes.deliveries[dead][0].worker_id]["restarts"] == 1
    assert len(finishes.deliveries[dead]) == 1


# -- time limits ---------------------------------------------------------------


def test_a_sync_task_over_its_limit_finishes_timeout_and_its_worker_is_replaced() -> None:
    finishes = Finishes()
    with TaskServer(2, plugins=[finishes]) as server:
        slow = server.task(Task(pid_then_sleep, 30), timeout=0.5)
        quick = [server.task(add, i, i) for i in range(20)]
        fine = server.task(Task(add, 1, 1), timeout=10)
        got = finishes.wait([slow, fine, *quick])
        assert got[slow].status == "timeout"
        assert got[slow].error is not None and "time limit of 0.5s" in got[slow].error.message
        assert got[fine].return_value == 2 and [got[i].return_value for i in quick] == [2 * i for i in range(20)]
        assert server.stats()["totals"]["timeout"] == 1
        assert wait_until(lambda: all(w["state"] == "idle" for w in server.stats()["workers"]))


def test_the_pool_default_time_limit_and_async_tasks() -> None:
    finishes = Finishes()
    with TaskServer(1, plugins=[finishes], task_timeout=0.3) as server:
        pid = server.taskwait(pid_then_sleep, 0, timeout=WAIT)
        ids = [server.task(async_sleep, 10), server.task(async_sleep, 0.01)]
        got = finishes.wait(ids)  # (a sync timeout kills the worker: its async tasks in flight would be lost)
        ids.append(server.task(pid_then_sleep, 10))
        got = finishes.wait(ids)
        assert [got[i].status for i in ids] == ["timeout", "ok", "timeout"]
        assert "cancelled" in got[ids[0]].error.message  # type: ignore[union-attr]
        assert server.taskwait(pid_then_sleep, 0, timeout=WAIT) != pid  # the sync timeout replaced the worker
        assert server.stats()["totals"]["timeout"] == 2


# -- retries -------------------------------------------------------------------


def test_retries_run_a_failing_task_again_until_it_succeeds(tmp_path: Path) -> None:
    finishes = FinishLog()
    seen = SeenInWorker(tmp_path / "seen")
    with TaskServer(1, plugins=[finishes, seen], retry_backoff=0.01) as server:
        flaky = server.task(Task(fail_until, str(tmp_path / "a"), 3), retries=5)
        hopeless = server.task(Task(fail_until, str(tmp_path / "b"), 100), retries=2)
        lost_once = server.task(Task(die_on_first, str(tmp_path / "c")), retries=1)
        got = finishes.wait([flaky, hopeless, lost_once])
        assert (got[flaky].status, got[flaky].return_value, got[flaky].attempts) == ("ok", 3, 3)
        assert (got[hopeless].status, got[hopeless].attempts) == ("error", 3)
        assert "attempt 3 fails" in got[hopeless].error.message  # type: ignore[union-attr]
        assert (got[lost_once].status, got[lost_once].attempts) == ("ok", 2)
        # in the worker, every run of a task has the id task() returned, and its attempt number
        assert sorted(seen.seen()) == sorted(
            [(flaky, 1), (flaky, 2), (flaky, 3), (hopeless, 1), (hopeless, 2), (hopeless, 3)]
            + [(lost_once, 1), (lost_once, 2)]
        )
        timed = server.task(Task(add, 1, 1), timeout=5, retries=1)
        assert finishes.wait([timed])[timed].return_value == 2 and seen.seen()[-1] == (timed, 1)
        assert server.taskwait(Task(fail_until, str(tmp_path / "d"), 2), retries=1, timeout=WAIT) == 2
    assert all(len(finishes.deliveries[i]) == 1 for i in (flaky, hopeless, lost_once))


def test_the_pool_default_retries(tmp_path: Path) -> None:
    finishes = Finishes()
    with TaskServer(1, plugins=[finishes], retries=1, retry_backoff=0) as server:
        task_id = server.task(fail_until, str(tmp_path / "a"), 2)
        assert finishes.wait([task_id])[task_id][1:3] == ("ok", 2)


# -- recycling and reload ------------------------------------------------------


def test_max_tasks_per_worker_recycles_and_a_soak_keeps_memory_bounded() -> None:
    n = 1_000_000
    with TaskServer(2, max_tasks_per_worker=100_000) as server:
        first = set(worker_pids(server))
        rss_early: list[int] = []
        for i in range(n):
            server.task(noop, i)
            if i == 150_000:
                assert wait_until(lambda: server.stats()["queue_depth"] < 1000, 60)
                rss_early = [w["rss_bytes"] or 0 for w in server.stats()["workers"]]
        assert wait_until(lambda: server.stats()["totals"]["ok"] == n, 120)
        stats = server.stats()
        assert sum(w["tasks_done"] for w in stats["workers"]) == n
        assert first.isdisjoint(worker_pids(server))  # every worker was replaced
        rss_late = [w["rss_bytes"] or 0 for w in stats["workers"]]
        assert max(rss_late) < max(rss_early) + (32 << 20)


def test_reload_replaces_every_worker_and_drops_nothing() -> None:
    finishes = Finishes()
    with TaskServer(2, plugins=[finishes]) as server:
        first = set(worker_pids(server))
        ids = [server.task(sleep_then, 0.01, i) for i in range(100)]
        server.reload()
        ids += [server.task(sleep_then, 0, i) for i in range(100, 120)]
        got = finishes.wait(ids)
        assert [got[i].return_value for i in ids] == list(range(120))
        assert wait_until(lambda: first.isdisjoint(worker_pids(server)))


# -- the supervisor and dispatchers dying -------------------------------------


def test_a_dead_supervisor_is_replaced_and_task_says_so_meanwhile() -> None:
    with TaskServer(2) as server:
        assert server.taskwait(add, 1, 1, timeout=WAIT) == 2
        old = server.supervisor_pid
        os.kill(old, signal.SIGKILL)
        errors: list[str] = []

        def served_by_a_new_supervisor() -> bool:
            try:
                assert server.taskwait(add, 2, 3, timeout=WAIT) == 5
                return server.supervisor_pid != old
            except PoolClosed as exc:
                errors.append(str(exc))
                return False

        wait_until(served_by_a_new_supervisor, WAIT, interval=0.005)
        assert server.supervisor_pid != old and alive(server.supervisor_pid)
        assert all("supervisor died and is being restarted" in e for e in errors)
        assert [server.taskwait(add, i, 1, timeout=WAIT) for i in range(10)] == list(range(1, 11))
        pids = pool_processes(server)
    assert pids_gone(pids)


def test_a_dispatcher_killed_while_its_tasks_run_wedges_nothing(finishes: FinishLog) -> None:
    with TaskServer(2, plugins=[finishes], max_dispatchers=2) as server:
        server.task(add, 0, 0)  # this process takes one channel
        pid = os.fork()
        if pid == 0:  # a dispatcher that dies with tasks in flight
            try:
                mine = [server.task(sleep_then, 0.3) for _ in range(4)]
                wait_until(lambda: all(w["task_id"] in mine for w in server.stats()["workers"]))  # running them
            finally:
                os.kill(os.getpid(), signal.SIGKILL)
        os.waitpid(pid, 0)
        pid = os.fork()
        if pid == 0:  # the next process gets the dead one's channel and its own finishes
            code = 1
            try:
                code = 0 if server.taskwait(add, 20, 22, timeout=WAIT) == 42 else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert server.taskwait(add, 1, 2, timeout=WAIT) == 3


# -- payloads -------------------------------------------------------------------


def test_a_100mb_payload_and_result_travel_and_their_files_are_removed() -> None:
    big = b"p" * (100 << 20)
    with TaskServer(1) as server:
        assert server.taskwait(size_of, big, timeout=60) == len(big)
        assert server.taskwait(make_bytes, 100 << 20, timeout=60) == b"r" * (100 << 20)
        assert os.listdir(local_pool(server).spill_dir) == []
        spill_dir = local_pool(server).spill_dir
    assert not os.path.exists(spill_dir)


def test_large_payloads_of_crashed_and_cancelled_tasks_leave_no_file(finishes: FinishLog) -> None:
    big = b"q" * (3 << 20)
    server = TaskServer(1, plugins=[finishes], shutdown_timeout=0.2)
    lost = server.task(Task(die, "sigkill"))
    assert finishes.wait([lost])[lost].status == "lost"
    blocker = server.task(sleep_then, 5)
    queued = [server.task(size_of, big) for _ in range(3)]
    assert wait_until(lambda: server.stats()["workers"][0]["task_id"] == blocker)
    spill_dir = local_pool(server).spill_dir
    server.close()
    assert [finishes.deliveries[i][0].status for i in [blocker, *queued]] == [
        "lost",
        "cancelled",
        "cancelled",
        "cancelled",
    ]
    assert not os.path.exists(spill_dir)


def test_too_large_a_payload_is_a_value_error_naming_the_limit() -> None:
    with TaskServer(1, max_payload_bytes=2 << 20) as server:
        with pytest.raises(ValueError, match="more than max_payload_bytes=2097152"):
            server.task(size_of, b"x" * (3 << 20))
        assert server.taskwait(size_of, b"x" * (1 << 20), timeout=WAIT) == 1 << 20


# -- bad input ------------------------------------------------------------------


def test_corrupt_records_finish_error_and_never_crash_a_worker(finishes: FinishLog) -> None:
    with TaskServer(1, plugins=[finishes]) as server:
        pids = worker_pids(server)
        server.taskwait(add, 0, 0, timeout=WAIT)
        pool = local_pool(server)
        assert pool.own_channel is not None
        call = records.with_channel(records.submit_header(records.Kind.CALL), pool.own_channel)
        data = records.with_channel(records.submit_header(records.Kind.DATA), pool.own_channel)
        bad = [
            pool.submit.push(b"\x80\x05garbage", aux=call),
            pool.submit.push(b"", aux=data),
            pool.submit.push(b"short", aux=call | records.Flag.OPTS),
            pool.submit.push(b"/nonexistent/taskmw", aux=call | records.SPILLED),
            pool.submit.push(_codec.dumps((add, (1,), None)), aux=call),
        ]
        got = finishes.wait(bad)
        assert [got[i].status for i in bad] == ["error"] * 5
        assert got[bad[-1]].error.type == "TypeError"  # type: ignore[union-attr]
        assert server.taskwait(add, 1, 1, timeout=WAIT) == 2
        assert worker_pids(server) == pids


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"task_timeout": 0}, "task_timeout must be a number of seconds > 0"),
        ({"retries": -1}, "retries must be"),
        ({"retry_backoff": "1"}, "retry_backoff must be a number of seconds >= 0"),
        ({"max_tasks_per_worker": 0}, "max_tasks_per_worker must be"),
        ({"max_payload_bytes": 0}, "max_payload_bytes must be"),
    ],
)
def test_invalid_settings_are_value_errors_naming_them(setting: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TaskServer(1, **setting)


def test_invalid_per_task_options() -> None:
    with TaskServer(1) as server:
        with pytest.raises(ValueError, match="timeout must be a number of seconds > 0"):
            server.task(Task(add, 1, 2), timeout=-1)
        with pytest.raises(ValueError, match="retries must be"):
            server.task(Task(add, 1, 2), retries="3")


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
