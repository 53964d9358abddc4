"""The task worker (:mod:`taskmw.worker`): async tasks on its event loop,
recycling (``max_tasks_per_worker``, ``reload()``), and records it cannot
run. Tests marked ``no_process_left`` count this process's descendants
before and after: none may be left.
"""

from __future__ import annotations

import asyncio

import pytest
from helpers import WAIT, Finishes, FinishLog, add, local_pool, sleep_then, wait_until, worker_pids

from taskmw import Task, TaskServer, _codec, records

# -- tasks ---------------------------------------------------------------------


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


def noop(_: int) -> None:
    return None


# -- async tasks ------------------------------------------------------------------------


def test_async_tasks_run_concurrently_in_one_worker() -> None:
    with TaskServer(1, task_concurrency=8) as server:
        events = server.taskwait_multi([Task(async_peak, 0.2) for _ in range(8)], timeout=WAIT)
    peaks = [e.return_value for e in events if e is not None and e.ok]
    assert len(peaks) == 8 and max(peaks) > 1


# -- recycling and reload ------------------------------------------------------


@pytest.mark.usefixtures("no_process_left")
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


@pytest.mark.usefixtures("no_process_left")
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


# -- bad input ------------------------------------------------------------------


@pytest.mark.usefixtures("no_process_left")
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
