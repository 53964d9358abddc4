"""The task worker (:mod:`taskmw.worker`): async tasks on its event loop,
recycling (``max_tasks_per_worker``, ``reload()``), and records it cannot
run. Tests marked ``no_process_left`` count this process's descendants
before and after: none may be left.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    WAIT,
    Finishes,
    FinishLog,
    add,
    local_pool,
    sleep_then,
    wait_for_file,
    wait_until,
    worker_pids,
)

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


def make_bytes(n: int) -> bytes:
    return b"r" * n


def answer() -> str:
    return "first"


def _second_answer() -> str:
    return "second"


def rebind_answer() -> None:
    """In the worker: ``answer`` now names another function."""
    globals()["answer"] = _second_answer


def test_a_function_rebound_in_the_worker_between_tasks_is_the_one_that_runs(finishes: FinishLog) -> None:
    """The worker keeps the functions task()'s calls name, but only while
    their module still holds them: a call made after the name is rebound
    runs what the name holds now, as unpickling it would."""
    with TaskServer(1, plugins=[finishes]) as server:
        before = [server.task(answer) for _ in range(3)]
        server.taskwait(rebind_answer, timeout=WAIT)
        after = server.task(answer)
        got = finishes.wait([*before, after])
    assert [got[i].return_value for i in before] == ["first"] * 3 and got[after].return_value == "second"
    assert answer() == "first"  # rebound in the worker only


_CALLER_OF_A_TASK = """
import inspect
from taskmw import TaskServer

def caller_name():
    return inspect.currentframe().f_back.f_code.co_name

with TaskServer(1, disable_plugins=["logging"]) as server:  # logging: an installed plugin that observes tasks
    print(server.taskwait(caller_name, timeout=%r))
"""


def test_a_default_pool_calls_a_plain_function_directly_where_django_is_not_set_up() -> None:
    """With the installed plugins (the default), in an app without Django
    (a fresh interpreter: this session's conftest sets Django up), the Django
    plugin, inert in the worker, is out of its ``on_task`` calls: the invoker
    comes first and the worker calls the task's function itself
    (``run_task``'s direct call); the plugin was always in the way before."""
    out = subprocess.run(
        [sys.executable, "-c", _CALLER_OF_A_TASK % WAIT], capture_output=True, text=True, timeout=WAIT, check=True
    )
    assert out.stdout.split() == ["run_task"], out.stderr


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


# -- outcomes that cannot be encoded ---------------------------------------------------


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("this exception's __str__ raises")


def raise_unprintable() -> None:
    raise UnprintableError()


class ExitsWhenPickled:
    def __reduce__(self) -> Any:
        raise SystemExit("__reduce__ raised SystemExit")


def return_exits_when_pickled() -> ExitsWhenPickled:
    return ExitsWhenPickled()


async def async_raise_unprintable() -> None:
    raise UnprintableError()


async def async_return_exits_when_pickled() -> ExitsWhenPickled:
    return ExitsWhenPickled()


def _batch_around(server: TaskServer, gate: str, bad: list[Task]) -> tuple[list[int], list[int]]:
    """Hold the one worker on a gate, queue 40 neighbours with the ``bad``
    tasks among them (so they are popped in the same batches), open the gate."""
    blocker = server.task(wait_for_file, gate)
    ids: list[int] = []
    bad_ids: list[int] = []
    for i in range(40):
        ids.append(server.task(add, i, 0))
        if i % 10 == 5 and bad:
            bad_ids.append(server.task(bad.pop(0)))
    assert wait_until(lambda: server.stats()["workers"][0]["task_id"] == blocker)
    open(gate, "w").close()
    return ids, bad_ids


@pytest.mark.usefixtures("no_process_left")
def test_an_outcome_that_cannot_be_encoded_finishes_error_and_spares_its_batch(
    finishes: FinishLog, tmp_path: Path
) -> None:
    bad = [
        Task(raise_unprintable),
        Task(return_exits_when_pickled),
        Task(async_raise_unprintable),
        Task(async_return_exits_when_pickled),
    ]
    with TaskServer(1, plugins=[finishes]) as server:
        pids = worker_pids(server)
        ids, bad_ids = _batch_around(server, str(tmp_path / "gate"), bad)
        got = finishes.wait(ids + bad_ids)
        assert [got[i].status for i in ids] == ["ok"] * 40
        assert [got[i].return_value for i in ids] == list(range(40))
        assert [got[i].status for i in bad_ids] == ["error"] * 4
        errors = [got[i].error for i in bad_ids]
        assert all(e is not None for e in errors)
        assert errors[0].type == "test_worker.UnprintableError"  # type: ignore[union-attr]
        assert "__str__ raised RuntimeError" in errors[0].message  # type: ignore[union-attr]
        assert "__reduce__ raised SystemExit" in errors[1].message  # type: ignore[union-attr]
        assert errors[2].type == "test_worker.UnprintableError"  # type: ignore[union-attr]
        assert "__reduce__ raised SystemExit" in errors[3].message  # type: ignore[union-attr]
        assert worker_pids(server) == pids  # the worker never crashed
        assert server.stats()["totals"]["lost"] == 0


@pytest.mark.usefixtures("no_process_left")
def test_a_result_too_large_for_the_spill_directory_finishes_error_naming_enospc(
    finishes: FinishLog, tmp_path: Path, small_tmpfs: str
) -> None:
    with TaskServer(1, plugins=[finishes], spill_dir=small_tmpfs) as server:
        pids = worker_pids(server)
        blocker = server.task(wait_for_file, str(tmp_path / "gate"))
        ids = [server.task(add, i, 0) for i in range(20)]
        big = server.task(make_bytes, 3 << 20)  # spilled (larger than a channel record), and over the tmpfs
        ids += [server.task(add, i, 0) for i in range(20, 40)]
        assert wait_until(lambda: server.stats()["workers"][0]["task_id"] == blocker)
        open(tmp_path / "gate", "w").close()
        got = finishes.wait([*ids, big])
        assert [got[i].return_value for i in ids] == list(range(40))
        assert got[big].status == "error"
        assert "No space left on device" in got[big].error.message  # type: ignore[union-attr]
        assert worker_pids(server) == pids
        assert os.listdir(local_pool(server).spill_dir) == []  # the partial file is gone
        assert server.taskwait(make_bytes, 1 << 20, timeout=WAIT) == b"r" * (1 << 20)  # room again


# -- async time limits ---------------------------------------------------------------------


async def async_block(seconds: float) -> str:
    time.sleep(seconds)  # blocks the worker's event loop: no await, the loop cannot cancel it
    return "full result"


async def async_ignore_cancel(seconds: float) -> str:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            await asyncio.sleep(end - time.monotonic())
        except asyncio.CancelledError:
            pass  # swallowed: the time limit's cancellation is ignored
    return "full result"


async def async_swallow_once() -> str:
    try:
        await asyncio.sleep(5)
    except asyncio.CancelledError:
        pass
    return "returned after swallowing its cancellation"


@pytest.mark.usefixtures("no_process_left")
@pytest.mark.parametrize("fn", [async_block, async_ignore_cancel])
def test_an_async_task_the_loop_cannot_stop_finishes_timeout_and_its_worker_is_replaced(
    finishes: FinishLog, fn: Callable[[float], Any]
) -> None:
    with TaskServer(1, plugins=[finishes]) as server:
        pids = worker_pids(server)
        neighbour = server.task(Task(async_peak, 10))  # on the same loop: lost with the worker (documented)
        queued = time.monotonic()
        stuck = server.task(Task(fn, 5), task_timeout=0.3)
        got = finishes.wait([stuck, neighbour])
        took = time.monotonic() - queued
        assert got[stuck].status == "timeout", got[stuck]
        assert got[stuck].return_value is None
        assert took < 3.0  # 0.3 s limit + 1 s grace + the supervisor's tick, not the task's 5 s
        assert got[neighbour].status == "lost"
        # killed and replaced (its finishes are sent before the new worker's row is written: poll)
        assert wait_until(lambda: [w["pid"] for w in server.stats()["workers"]] != pids)
        assert server.taskwait(add, 1, 2, timeout=WAIT) == 3
        assert server.stats()["totals"]["timeout"] == 1


@pytest.mark.usefixtures("no_process_left")
def test_an_async_task_that_swallows_its_cancellation_and_returns_finishes_timeout(finishes: FinishLog) -> None:
    with TaskServer(1, plugins=[finishes]) as server:
        pids = worker_pids(server)
        neighbour = server.task(Task(async_peak, 0.5))
        swallow = server.task(Task(async_swallow_once), task_timeout=0.3)
        got = finishes.wait([swallow, neighbour])
        assert got[swallow].status == "timeout"
        assert got[swallow].return_value is None
        assert got[neighbour].status == "ok"  # the loop stopped it in time: nothing else is touched
        assert worker_pids(server) == pids
