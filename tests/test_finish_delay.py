"""Finishes delivered in batches (``finish_delay``): a worker writes the
finish of a task nobody waits for without waking the process that queued
it, and wakes that process's reader within ``finish_delay``; a finish
somebody waits for wakes it at once; ``close()`` delivers what is pending.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from helpers import WAIT, FinishLog, add, pids_gone, pool_processes, sleep_then

from taskmw import TaskServer, hookimpl
from taskmw.events import TaskFinishEvent


def ended_at(x: int) -> tuple[int, float]:
    """A task that says when it ended (CLOCK_MONOTONIC is one clock for every process)."""
    return x, time.monotonic()


class Arrivals(FinishLog):
    """A FinishLog that also notes when each finish reached the hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.at: dict[int, float] = {}

    @hookimpl
    def on_finish(self, event: TaskFinishEvent) -> None:
        self.at[event.task_id] = time.monotonic()
        super().on_finish(event)


def _server(finishes: FinishLog, **settings: Any) -> TaskServer:
    return TaskServer(2, plugins=[finishes], shutdown_timeout=10.0, **settings)


def _channel_wakeups(server: TaskServer) -> int:
    transport: Any = server.transport
    return int(transport._channel.ring.stats().wakeups)  # noqa: SLF001 - the ring's own counter


@pytest.mark.parametrize("bad", [-0.001, 1.5, "0.005", True])
def test_finish_delay_is_checked(bad: object) -> None:
    with pytest.raises(ValueError, match="finish_delay"):
        TaskServer(1, finish_delay=bad)  # type: ignore[arg-type]


def test_fire_and_forget_finishes_come_within_the_delay_with_no_further_call() -> None:
    """The process queues tasks and then makes no call at all: every finish
    still reaches the hooks, each soon after its task ended (the worker
    wakes the reader at the delay; the bound allows for a loaded machine)."""
    finishes = Arrivals()
    with _server(finishes, finish_delay=0.02) as server:
        ids = [server.task(ended_at, i) for i in range(20)]
        deadline = time.monotonic() + WAIT
        while len(finishes.at) < len(ids) and time.monotonic() < deadline:  # no call on the server meanwhile
            time.sleep(0.005)
        got = finishes.wait(ids)
        late = [finishes.at[i] - got[i].return_value[1] for i in ids]
        assert [got[i].return_value[0] for i in ids] == list(range(20))
        assert max(late) < 2.0, late
        assert all(len(finishes.deliveries[i]) == 1 for i in ids)


def test_finishes_nobody_waits_for_wake_the_reader_once_per_batch() -> None:
    """Tasks queued one by one, each finish written while the reader
    sleeps: with a delay, the workers wake the reader once per delay (or
    not at all, when its own 100 ms re-check found them first), not once
    per finish (finish_delay=0: about once per finish)."""
    n = 40
    for delay, bound in ((0.0, None), (0.5, n // 4)):
        finishes = FinishLog()
        with _server(finishes, finish_delay=delay) as server:
            server.taskwait(add, 0, 0, timeout=WAIT)  # the channel claimed, the reader started
            before = _channel_wakeups(server)
            ids = []
            for i in range(n):
                ids.append(server.task(add, i, 1))
                time.sleep(0.003)
            finishes.wait(ids)
            wakeups = _channel_wakeups(server) - before
            print(f"\nfinish_delay={delay}: {n} finishes, {wakeups} wake-ups of the reader")
            if bound is not None:
                assert wakeups <= bound, wakeups


def test_waited_finishes_wake_the_waiter_at_once_whatever_the_delay() -> None:
    """With the longest delay, each taskwait's finish is written with a
    wake-up of the reader (not left for the reader's 100 ms re-check), and
    the waits return well within the delay."""
    finishes = FinishLog()
    with _server(finishes, finish_delay=1.0) as server:
        server.taskwait(add, 0, 0, timeout=WAIT)
        before = _channel_wakeups(server)
        rounds, slowest = 10, 0.0
        for i in range(rounds):
            time.sleep(0.01)  # the reader is back asleep
            t = time.monotonic()
            assert server.taskwait(add, i, 1, timeout=WAIT) == i + 1
            slowest = max(slowest, time.monotonic() - t)
        woken = _channel_wakeups(server) - before
        assert woken >= rounds // 2, woken
        assert slowest < 0.9, slowest
        print(f"\nslowest taskwait with finish_delay=1.0: {slowest * 1e3:.1f} ms")


def test_close_delivers_a_pending_batch() -> None:
    finishes = FinishLog()
    server = _server(finishes, finish_delay=1.0)
    pids = pool_processes(server)
    ids = [server.task(add, i, 1) for i in range(50)]
    server.close()
    assert sorted(finishes.events) == ids
    assert all(len(finishes.deliveries[i]) == 1 for i in ids)
    assert pids_gone(pids)


def test_on_the_reader_loop_task_delivers_the_finishes_waiting_for_it() -> None:
    """Under ASGI the reader is the event loop: a ``task()`` call on that
    loop delivers the finishes already in the channel itself, on the loop's
    thread (the hook's thread rule), without waiting for a wake-up."""
    finishes = FinishLog()
    with _server(finishes, finish_delay=1.0) as server:

        async def main() -> tuple[int, int, int]:
            loop_thread = threading.get_ident()
            first = server.task(add, 1, 1)
            ring: Any = server.transport._channel.ring  # type: ignore[attr-defined]  # noqa: SLF001
            deadline = time.monotonic() + WAIT
            while not len(ring) and time.monotonic() < deadline:  # the loop is blocked: its reader cannot run
                time.sleep(0.001)
            assert first not in finishes.events
            second = server.task(add, 2, 2)
            assert first in finishes.events  # delivered inside that call
            return first, second, loop_thread

        first, second, loop_thread = asyncio.run(main())
        got = finishes.wait([first, second])
        assert got[first].return_value == 2 and got[second].return_value == 4
        assert loop_thread in finishes.threads  # the first, at least: delivered in task() on the loop
        assert all(len(finishes.deliveries[i]) == 1 for i in (first, second))


def test_a_long_task_does_not_hold_back_the_finishes_before_it() -> None:
    """One worker, the longest delay: a quick task's finish is written
    lazily, then the worker runs a long task and cannot wake the reader;
    the finish still comes well before the long task ends, on a reader
    thread (its 100 ms re-check) and on an event loop (its watcher's)."""
    for on_loop in (False, True):
        finishes = Arrivals()
        with TaskServer(1, plugins=[finishes], finish_delay=1.0, shutdown_timeout=10.0) as server:

            async def queue() -> tuple[int, int, float]:
                quick = server.task(add, 1, 1)
                long = server.task(sleep_then, 3.0)
                queued = time.monotonic()
                deadline = queued + WAIT
                while quick not in finishes.at and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                return quick, long, queued

            if on_loop:
                quick, long, queued = asyncio.run(queue())
            else:
                quick = server.task(add, 1, 1)
                long = server.task(sleep_then, 3.0)
                queued = time.monotonic()
                finishes.wait([quick])
            assert finishes.at[quick] - queued < 2.5, (on_loop, finishes.at[quick] - queued)
            assert long not in finishes.events
            assert finishes.wait([long])[long].status == "ok"
