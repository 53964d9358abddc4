"""The pool's shared state (:mod:`taskmw.pool`) for large payloads: records
over the ring's size go through the spill directory, whose files are removed
whatever becomes of their task, and ``max_payload_bytes`` is enforced. Each
test counts this process's descendants before and after: none may be
left.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import WAIT, FinishLog, die, local_pool, sleep_then, wait_for_file, wait_until

from taskmw import QueueFull, Task, TaskServer

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


# -- the bound on spilled bytes ---------------------------------------------------------


def _spilled_bytes(directory: str) -> int:
    return sum(e.stat().st_size for e in os.scandir(directory))


def test_spilled_tasks_are_bounded_by_spill_bytes_then_queue_full(finishes: FinishLog, tmp_path: Path) -> None:
    mib = b"s" * (1 << 20)  # far larger than a record of a 64 KiB ring: each one is a file
    settings = {"queue_bytes": 64 << 10, "spill_bytes": 4 << 20, "queue_timeout": 0.3}
    with TaskServer(1, plugins=[finishes], **settings) as server:  # type: ignore[arg-type]
        gate = str(tmp_path / "gate")
        blocker = server.task(wait_for_file, gate)
        assert wait_until(lambda: server.stats()["workers"][0]["task_id"] == blocker)
        spill_dir = local_pool(server).spill_dir
        queued = []
        with pytest.raises(QueueFull, match="spill_bytes=4194304"):
            for _ in range(16):  # 16 MiB: four times the bound
                queued.append(server.task(size_of, mib))
        assert 1 <= len(queued) <= 4
        assert _spilled_bytes(spill_dir) <= 4 << 20
        open(gate, "w").close()
        got = finishes.wait(queued)
        assert [got[i].return_value for i in queued] == [1 << 20] * len(queued)
        assert server.taskwait(size_of, mib, timeout=WAIT) == 1 << 20  # room again
        with pytest.raises(ValueError, match="more than spill_bytes=4194304"):
            server.task(size_of, b"x" * (5 << 20))


def test_a_full_spill_directory_is_queue_full_not_oserror(finishes: FinishLog, small_tmpfs: str) -> None:
    with TaskServer(1, plugins=[finishes], spill_dir=small_tmpfs) as server:
        with pytest.raises(QueueFull, match="No space left on device"):
            server.task(size_of, b"x" * (3 << 20))  # more than the 2 MiB tmpfs holds
        spill_dir = local_pool(server).spill_dir
        assert os.listdir(spill_dir) == []  # the partial file is gone
        assert server.taskwait(size_of, b"x" * (1 << 20), timeout=WAIT) == 1 << 20


def test_a_spill_count_left_wrong_by_a_dead_process_is_recounted_from_the_directory() -> None:
    with TaskServer(1, spill_bytes=4 << 20, queue_timeout=2.0) as server:
        pool = local_pool(server)
        pool.words[1] = 1 << 40  # as if readers died between reading their files and uncounting them
        assert server.taskwait(size_of, b"x" * (2 << 20), timeout=WAIT) == 2 << 20
        assert wait_until(lambda: pool.spilled_bytes() == 0)
