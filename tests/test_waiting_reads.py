"""A thread waiting in ``taskwait`` reads its process's completion channel
itself (:meth:`taskmw.channel.Channel.wait`) while the reader thread stands
aside: every finish is still delivered once, its hooks run once, and a
waiter that gives up strands nobody else's finish.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from helpers import WAIT, FinishLog, add, sleep_then, wait_until

from taskmw import TaskFinishEvent, TaskServer, hookimpl


class Threads:
    """Records the thread every ``on_finish`` of each task ran on."""

    def __init__(self) -> None:
        self.of: dict[int, list[int]] = {}

    @hookimpl
    def on_finish(self, event: TaskFinishEvent) -> None:
        self.of.setdefault(event.task_id, []).append(threading.get_ident())


@pytest.fixture
def threads() -> Threads:
    return Threads()


@pytest.fixture
def server(finishes: FinishLog, threads: Threads) -> Iterator[TaskServer]:
    with TaskServer(2, plugins=[finishes, threads], entrypoints=False) as server:
        yield server


def test_a_waited_finish_read_by_the_waiting_thread_is_delivered_once(
    server: TaskServer, finishes: FinishLog, threads: Threads
) -> None:
    """The waiting thread delivers its own finish (its hooks run there, once),
    and those of the tasks nobody waits for that it reads on the way."""
    me = threading.get_ident()
    queued: list[int] = []
    for i in range(5):
        queued += [server.task(add, i, 100) for _ in range(20)]
        assert server.taskwait(sleep_then, 0.3, i, timeout=WAIT) == i  # the reader thread stands aside meanwhile
    got = finishes.wait(queued)
    assert [got[t].return_value for t in queued] == [i + 100 for i in range(5) for _ in range(20)]
    assert all(len(d) == 1 for d in finishes.deliveries.values()) and len(finishes.deliveries) == 105
    waited = [t for t, d in finishes.deliveries.items() if t not in got]
    assert len(waited) == 5 and all(len(threads.of[t]) == 1 for t in waited)
    assert any(threads.of[t] == [me] for t in waited), "no waited finish was delivered by the waiting thread"


def test_a_waiter_timing_out_strands_no_other_waiter(server: TaskServer) -> None:
    """Thread A reads the channel and gives up (its task is slow); thread B,
    waiting at the same time, still gets its finish, which comes later."""
    results: dict[str, object] = {}

    def wait_b() -> None:
        results["b"] = server.taskwait(sleep_then, 1.0, "b", timeout=WAIT)

    with pytest.raises(TimeoutError):
        b = threading.Thread(target=wait_b)
        server.taskwait(add, 0, 0, timeout=WAIT)  # the reader thread is aside from here
        b.start()
        assert wait_until(lambda: server.transport._channel._waiting >= 1)
        server.taskwait(sleep_then, 2.0, "a", timeout=0.3)
    b.join(WAIT)
    assert results == {"b": "b"}


def test_the_reader_thread_takes_over_when_nobody_waits(server: TaskServer, finishes: FinishLog) -> None:
    """After the last wait, finishes of tasks queued before it (and still
    running) come with no further call: the reader thread reads again."""
    slow = [server.task(sleep_then, 0.5, i) for i in range(4)]
    assert server.taskwait(add, 1, 2, timeout=WAIT) == 3
    got = finishes.wait(slow, timeout=WAIT)
    assert [got[t].return_value for t in slow] == [0, 1, 2, 3]
    assert all(len(finishes.deliveries[t]) == 1 for t in slow)


def test_many_threads_waiting_at_once_get_each_finish_once(server: TaskServer, finishes: FinishLog) -> None:
    """8 threads each run 50 taskwaits and queue 50 tasks; every finish is
    delivered once, each waiter gets its own return value."""
    errors: list[BaseException] = []
    queued: list[int] = []
    lock = threading.Lock()

    def run(k: int) -> None:
        try:
            for i in range(50):
                with lock:
                    queued.append(server.task(add, k, i))
                if server.taskwait(add, k * 1000, i, timeout=WAIT) != k * 1000 + i:
                    raise AssertionError(f"thread {k}: a wrong return value")
        except BaseException as exc:  # noqa: B036 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 4)
    assert not errors
    finishes.wait(queued)
    deadline = time.monotonic() + WAIT
    while len(finishes.deliveries) < 800 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(finishes.deliveries) == 800
    assert all(len(d) == 1 for d in finishes.deliveries.values())
