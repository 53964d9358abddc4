"""The pool's shared state (:mod:`taskmw.pool`) for large payloads: records
over the ring's size go through the spill directory, whose files are removed
whatever becomes of their task, and ``max_payload_bytes`` is enforced. Each
test counts this process's descendants before and after: none may be
left.
"""

from __future__ import annotations

import os

import pytest
from helpers import WAIT, FinishLog, die, local_pool, sleep_then, wait_until

from taskmw import Task, TaskServer

pytestmark = pytest.mark.usefixtures("no_process_left")


# -- tasks ---------------------------------------------------------------------


def size_of(data: bytes) -> int:
    return len(data)


def make_bytes(n: int) -> bytes:
    return b"r" * n


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
