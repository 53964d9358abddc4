"""Retries (:mod:`taskmw.retries`): a task that fails or loses its worker
runs again, with the same id and the next attempt number. Each test counts
this process's descendants before and after: none may be left.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from helpers import WAIT, Finishes, FinishLog, add, fork_call, reap, wait_until

from taskmw import Task, TaskEvent, TaskFailed, TaskServer, hookimpl

pytestmark = pytest.mark.usefixtures("no_process_left")


# -- tasks ---------------------------------------------------------------------


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
        timed = server.task(Task(add, 1, 1), task_timeout=5, retries=1)
        assert finishes.wait([timed])[timed].return_value == 2 and seen.seen()[-1] == (timed, 1)
        assert server.taskwait(Task(fail_until, str(tmp_path / "d"), 2), retries=1, timeout=WAIT) == 2
    assert all(len(finishes.deliveries[i]) == 1 for i in (flaky, hopeless, lost_once))


def test_the_pool_default_retries(tmp_path: Path) -> None:
    finishes = Finishes()
    with TaskServer(1, plugins=[finishes], retries=1, retry_backoff=0) as server:
        task_id = server.task(fail_until, str(tmp_path / "a"), 2)
        assert finishes.wait([task_id])[task_id][1:3] == ("ok", 2)


def test_waiting_for_a_retry_registration_does_not_block_the_event_loop() -> None:
    """While another thread is queuing a retriable task (its registration
    pending), a finish for an unknown seq waits for that registration: on the
    event loop that wait must not stop the loop."""
    with TaskServer(1, retry_backoff=0.01) as server:
        retries = server._delivery.retries  # noqa: SLF001 - holding a registration open
        gaps: list[float] = []

        async def main() -> int:
            assert await server.task_async(add, 0, 0) == 0  # the reader is on this loop
            loop = asyncio.get_running_loop()
            stop = False

            async def tick() -> None:
                last = loop.time()
                while not stop:
                    await asyncio.sleep(0.01)
                    gaps.append(loop.time() - last)
                    last = loop.time()

            ticker = asyncio.ensure_future(tick())
            release = threading.Event()

            def registering() -> None:  # what a thread blocked in task(..., retries=1) on a full queue holds
                with retries.lock:
                    retries.registering += 1
                release.wait(WAIT)
                with retries.lock:
                    retries.registering -= 1

            holder = threading.Thread(target=registering)
            holder.start()
            try:
                result = await asyncio.wait_for(server.task_async(add, 1, 1), 5.0)
            finally:
                release.set()
                holder.join(WAIT)
                stop = True
                await ticker
            return result  # type: ignore[no-any-return]

        assert asyncio.run(main()) == 2
        assert max(gaps) < 0.5, f"the loop stopped for {max(gaps):.2f}s"


def slow_on_first(path: str) -> int:
    """Sleep past any short time limit the first time it runs; answer at once the second time."""
    if not os.path.exists(path):
        Path(path).touch()
        time.sleep(30)
    return 7


def test_a_timeout_or_lost_run_with_retries_left_is_not_recorded_as_the_tasks_end(tmp_path: Path) -> None:
    """The supervisor settles a run it killed (``timeout``) or that died
    (``lost``): with retries left, the record must not say ``done`` while the
    queuing process runs it again, and ``result()`` waits for the retry."""
    backoff = 0.5  # the window in which the record said "done timeout"
    with TaskServer(1, retry_backoff=backoff) as server:
        timed = server.task(Task(slow_on_first, str(tmp_path / "a")), task_timeout=0.5, retries=1)
        lost = server.task(Task(die_on_first, str(tmp_path / "b")), retries=1)
        states = set()
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and not (server.status(timed).status and server.status(lost).status):
            states.add((server.status(timed).state, server.status(timed).status))
            time.sleep(0.01)
        assert ("done", "timeout") not in states
        assert server.result(timed, timeout=WAIT) == 7
        assert isinstance(server.result(lost, timeout=WAIT), int)
        assert (server.status(timed).status, server.status(timed).attempts) == ("ok", 2)
        assert (server.status(lost).status, server.status(lost).attempts) == ("ok", 2)


def test_the_last_run_that_times_out_records_every_attempt(tmp_path: Path) -> None:
    with TaskServer(1, retry_backoff=0.01) as server:
        task_id = server.task(Task(time.sleep, 30), task_timeout=0.3, retries=2)
        with pytest.raises(TaskFailed) as failed:
            server.result(task_id, timeout=WAIT)
        assert failed.value.event.status == "timeout"
        assert (server.status(task_id).status, server.status(task_id).attempts) == ("timeout", 3)


def test_a_failed_run_whose_queuing_process_is_gone_is_the_tasks_end(tmp_path: Path) -> None:
    """Nobody is left to run it again: the supervisor records the timeout,
    the worker the error."""
    ids = tmp_path / "id"
    with TaskServer(1, retry_backoff=0.01) as server:

        def queue_and_exit() -> None:  # like an HTTP worker stopped right after queuing
            timed = server.task(Task(time.sleep, 30), task_timeout=0.5, retries=2)
            failed = server.task(Task(fail_until, str(tmp_path / "a"), 100), retries=2)
            ids.write_text(f"{timed} {failed}")
            os._exit(0)

        assert reap(fork_call(queue_and_exit)) == 0
        timed, failed = map(int, ids.read_text().split())
        for task_id, status in ((timed, "timeout"), (failed, "error")):
            assert wait_until(lambda: server.status(task_id).state == "done", WAIT), server.status(task_id)
            assert server.status(task_id).status == status
