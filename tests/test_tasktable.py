"""The pool's record of tasks (taskmw/tasktable.py): every task visible from
every process of the pool, whichever process queued it; cancel, progress,
results and their bounds. Real pools, real forked processes."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import WAIT, FinishLog, add, boom, die, in_child, local_pool, wait_for_file, wait_until

import taskmw
from taskmw import TaskFailed, TaskInfo, TaskServer, UnknownTask
from taskmw.records import OK, encode_finish
from taskmw.tasktable import TaskTable, name_field


def report_then_wait(path: str) -> str:
    """A task that reports progress, then runs until ``path`` exists."""
    taskmw.progress(0.25, "a quarter")
    wait_for_file(path)
    taskmw.progress(1.0, "done")
    return "finished"


def big(n: int) -> bytes:
    return b"x" * n


def _gate() -> str:
    return os.path.join(tempfile.mkdtemp(prefix="taskmw-test-"), "open")


def _open(path: str) -> None:
    with open(path, "w"):
        pass


def _state(server: TaskServer, task_id: int) -> str:
    return server.status(task_id).state


@contextlib.contextmanager
def _worker_held(server: TaskServer) -> Iterator[int]:
    """The server's one worker runs a blocker (its id) until the block ends."""
    gate = _gate()
    blocker = server.task(wait_for_file, gate)
    assert wait_until(lambda: _state(server, blocker) == "running")
    try:
        yield blocker
    finally:
        _open(gate)


def _queue_adds(server: TaskServer, n: int) -> tuple[list[int], float, float]:
    """``n`` fast-path tasks queued: their ids, and the wall clock before and after."""
    before = time.time()
    ids = [server.task(add, i, 1) for i in range(n)]
    return ids, before, time.time()


# -- the table itself -------------------------------------------------------------


def test_each_group_is_read_whole_and_ids_out_of_range_are_unknown() -> None:
    table = TaskTable(64, arenas=2, result_bytes=1 << 16, result_ttl=60)
    table.queued(5, name_field("mod.fn"))
    assert table.info(5, issued=6, queue_start=5).state == "queued"
    table.started(5, worker_id=1, attempt=1)
    table.progress(5, 0.5, "half")
    info = table.info(5, 6, 6)
    assert (info.state, info.worker_id, info.progress, info.message, info.name) == ("running", 1, 0.5, "half", "mod.fn")
    record = encode_finish(5, 5, OK, {"a": 1}, None, 0.01, 1, "mod.fn")
    table.finished(5, OK, 1, None, record, arena=1)
    info = table.info(5, 6, 6)
    assert (info.state, info.status, info.error) == ("done", "ok", None)
    kept = table.finish_record(5)
    assert kept is not None and kept.value == {"a": 1}
    for bad in (0, -1, 6, 7, True, "5"):
        with pytest.raises(UnknownTask, match="never issued"):
            table.info(bad, 6, 6)  # type: ignore[arg-type]


def test_eviction_by_count_by_age_and_by_bytes() -> None:
    table = TaskTable(16, arenas=1, result_bytes=4096, result_ttl=0.2)
    for task_id in range(1, 40):
        table.queued(task_id, name_field("t"))
    with pytest.raises(UnknownTask, match="keeps the last 16 tasks"):
        table.info(3, issued=40, queue_start=40)
    assert table.info(39, 40, 39).state == "queued"
    # By bytes: each record is a quarter of the arena at most; newer ones push older ones out.
    records = {i: encode_finish(i, i, OK, b"v" * 900, None, 0.0, 0, "t") for i in range(30, 40)}
    assert all(len(r) <= table.max_result for r in records.values())
    for task_id, record in records.items():
        table.finished(task_id, OK, 1, None, record, arena=0)
    assert table.finish_record(39) is not None and table.finish_record(30) is None
    assert table.info(30, 40, 40).status == "ok"  # its record stays; only the value is gone
    too_big = encode_finish(38, 38, OK, b"v" * 2000, None, 0.0, 0, "t")
    table.finished(38, OK, 1, None, too_big, arena=0)
    assert table.finish_record(38) is None  # larger than a quarter of the arena: not kept
    # By age.
    assert wait_until(lambda: _unknown(table, 39), timeout=WAIT)
    with pytest.raises(UnknownTask, match="result_ttl=0.2"):
        table.info(39, 40, 40)


def _unknown(table: TaskTable, task_id: int) -> bool:
    try:
        table.info(task_id, 40, 40)
    except UnknownTask:
        return True
    return False


# -- from every process --------------------------------------------------------------


def test_a_task_is_seen_from_another_process_queued_running_with_progress_and_done(finishes: FinishLog) -> None:
    gate = _gate()
    with TaskServer(1, plugins=[finishes]) as server:
        blocker = server.task(wait_for_file, gate + ".first")
        task_id = server.task(report_then_wait, gate)
        out = os.path.join(os.path.dirname(gate), "seen.json")

        def observe() -> None:  # another process of the pool: it queued nothing
            seen = [server.status(task_id).state]
            _open(gate + ".first")
            assert wait_until(lambda: server.status(task_id).progress == 0.25)
            info = server.status(task_id)
            seen.append(info.state)
            _open(gate)
            value = server.result(task_id, timeout=WAIT)
            done = server.status(task_id)
            with open(out, "w") as f:
                json.dump({"seen": seen, "value": value, "done": done.as_dict(), "message": info.message}, f)

        assert in_child(observe) == 0
        with open(out) as f:
            got = json.load(f)
        assert got["seen"] == ["queued", "running"] and got["message"] == "a quarter"
        assert got["value"] == "finished"
        done = got["done"]
        assert (done["state"], done["status"], done["progress"], done["message"]) == ("done", "ok", 1.0, "done")
        assert done["name"] == "test_tasktable.report_then_wait" and done["worker_id"] == 0
        assert done["queued_at"] <= done["started_at"] <= done["finished_at"]
        finishes.wait([blocker, task_id])
        assert [e.status for e in finishes.deliveries[task_id]] == ["ok"]


def test_a_queued_fast_path_task_is_named_from_its_record_in_the_queue_and_keeps_its_queueing_time(
    finishes: FinishLog, tmp_path: Path
) -> None:
    """task()'s fast path leaves the record's Q group to the worker (nothing
    is written at queueing time): another process still sees the queued task
    with its name and the time it was queued, read from the queue; once a
    worker took and ran it, the worker's record gives the same name and time."""
    with TaskServer(1, plugins=[finishes]) as server:
        with _worker_held(server) as blocker:
            ids, before, after = _queue_adds(server, 3)
            table = local_pool(server).tasks
            assert [table.name_of(i) for i in ids] == ["", "", ""]  # not written by the queuing process
            out = str(tmp_path / "queued.json")

            def observe() -> None:  # another process of the pool, before any worker took them
                infos = [server.status(i).as_dict() for i in ids]
                with open(out, "w") as f:
                    json.dump(infos, f)

            assert in_child(observe) == 0
            with open(out) as f:
                seen = json.load(f)
            assert [(i["state"], i["name"]) for i in seen] == [("queued", "helpers.add")] * 3
            queued_at = [i["queued_at"] for i in seen]
            assert before <= queued_at[0] <= queued_at[1] <= queued_at[2] <= after
        finishes.wait([blocker, *ids])
        for task_id, at in zip(ids, queued_at, strict=True):
            info = server.status(task_id)
            assert (info.state, info.status, info.name) == ("done", "ok", "helpers.add")
            assert info.queued_at == pytest.approx(at, abs=1e-6)  # the queueing time, not the worker's
            assert info.queued_at <= info.started_at <= info.finished_at
            assert table.name_of(task_id) == "helpers.add"  # the worker wrote it when it took it


def test_tasks_off_the_fast_path_are_recorded_by_the_process_that_queues_them() -> None:
    """Options, a Task, a callable by value: the queuing process writes the
    record at once (the worker writes it only for a plain call by reference)."""
    with TaskServer(1) as server:
        with _worker_held(server):
            table = local_pool(server).tasks
            ids = {
                "options": server.task(taskmw.Task(add, 1, 2), task_timeout=30),
                "task": server.task(taskmw.Task(add, 1, 2)),
                "by value": server.task(lambda: 3),
            }
            assert all(table.name_of(i) for i in ids.values()), {k: table.name_of(i) for k, i in ids.items()}
            assert {server.status(i).state for i in ids.values()} == {"queued"}
        assert wait_until(lambda: all(server.status(i).state == "done" for i in ids.values()))


def test_a_listing_of_many_queued_tasks_names_every_one_reading_the_queue_in_few_walks() -> None:
    with TaskServer(1) as server:
        with _worker_held(server):
            ids, before, after = _queue_adds(server, 500)
            ring = local_pool(server).submit
            peeks: list[int] = []
            real_peek = ring.peek

            def counted_peek(first_seq: int, n: int, head: int = 0) -> list:  # type: ignore[type-arg]
                peeks.append(n)
                return real_peek(first_seq, n, head)

            ring.peek = counted_peek  # type: ignore[method-assign]
            try:
                queued = server.tasks(limit=500)["queued"]
            finally:
                del ring.peek
            assert [i.task_id for i in queued] == ids
            assert {i.name for i in queued} == {"helpers.add"}
            assert all(before <= i.queued_at <= after for i in queued)  # type: ignore[operator]
            assert len(peeks) <= 2, peeks  # one walk of the queue, not one per task
        assert wait_until(lambda: server.status(ids[-1]).state == "done")


def test_a_task_popped_between_a_readers_looks_is_given_its_workers_record() -> None:
    """status() found the task queued, then not in the queue any more (a
    worker popped it) before that worker wrote its Q group: it waits for it
    (bounded); without ``wait`` (a listing) nothing is waited for."""
    table = TaskTable(64, arenas=1, result_bytes=1 << 16, result_ttl=60)
    writer = threading.Timer(0.02, table.queued, (7, name_field("mod.late")))
    writer.start()
    info = table.info(7, issued=8, queue_start=7, peek=lambda first, n: [], wait=True)
    writer.join()
    assert (info.state, info.name) == ("queued", "mod.late")
    t = time.monotonic()
    with pytest.raises(UnknownTask):
        table.info(5, issued=8, queue_start=7, peek=lambda first, n: [], wait=True)  # nothing ever comes
    assert time.monotonic() - t >= 0.1  # it waited its bound, then gave up
    assert table.scan([5, 6], issued=8, queue_start=5, limit=10, running={}, peek=lambda first, n: []) == [
        TaskInfo(5, "queued", None, "", None, 1, None, None, None, None, None, None, None, None),
        TaskInfo(6, "queued", None, "", None, 1, None, None, None, None, None, None, None, None),
    ]  # a listing waits for nothing: popped meanwhile, its name not written yet


def test_cancel_from_another_process_a_queued_task_never_runs(finishes: FinishLog) -> None:
    gate = _gate()
    with TaskServer(1, plugins=[finishes]) as server:
        blocker = server.task(wait_for_file, gate)
        assert wait_until(lambda: _state(server, blocker) == "running")
        victim = server.task(boom, "it ran")
        kept = server.task(add, 2, 3)

        def cancel() -> None:
            assert server.cancel(victim) is True
            assert server.cancel(victim) is False or server.status(victim).state != "done"
            _open(gate)

        assert in_child(cancel) == 0
        got = finishes.wait([blocker, victim, kept])
        assert got[victim].status == "cancelled" and got[kept].return_value == 5
        assert [e.status for e in finishes.deliveries[victim]] == ["cancelled"]  # exactly one finish
        info = server.status(victim)
        assert (info.state, info.status, info.started_at) == ("done", "cancelled", None)
        assert server.stats()["totals"]["cancelled"] == 1
        assert server.cancel(victim) is False and server.cancel(kept) is False  # finished already
        with pytest.raises(TaskFailed) as failed:
            server.result(victim, timeout=WAIT)
        assert failed.value.event.status == "cancelled"


def test_cancel_with_terminate_stops_a_running_task(finishes: FinishLog) -> None:
    gate = _gate()
    with TaskServer(1, plugins=[finishes]) as server:
        running = server.task(wait_for_file, gate)
        assert wait_until(lambda: _state(server, running) == "running")
        assert server.cancel(running) is False  # runs, and terminate was not asked
        assert server.cancel(running, terminate=True) is True
        got = finishes.wait([running])
        assert got[running].status == "cancelled"
        assert server.status(running).status == "cancelled"
        assert server.taskwait(add, 1, 1, timeout=WAIT) == 2  # a new worker serves


def test_a_killed_dispatchers_tasks_reach_done_in_the_record() -> None:
    with TaskServer(2) as server:
        ids_file = os.path.join(tempfile.mkdtemp(prefix="taskmw-test-"), "ids.json")

        def dispatch_and_die() -> None:
            ids = [server.task(time.sleep, 0.05) for _ in range(6)] + [server.task(boom, "bad")]
            with open(ids_file, "w") as f:
                json.dump(ids, f)
            os.kill(os.getpid(), signal.SIGKILL)

        assert in_child(dispatch_and_die) == -signal.SIGKILL
        with open(ids_file) as f:
            ids = json.load(f)
        assert wait_until(lambda: all(_state(server, i) == "done" for i in ids))
        infos = [server.status(i) for i in ids]
        assert [i.status for i in infos] == ["ok"] * 6 + ["error"]
        assert infos[-1].error is not None and infos[-1].error.type == "ValueError"
        assert "bad" in infos[-1].error.message and "Traceback" in infos[-1].error.traceback


def test_a_lost_task_is_lost_in_the_record_and_result_says_why(finishes: FinishLog) -> None:
    with TaskServer(1, plugins=[finishes]) as server:
        task_id = server.task(die, "sigkill")
        finishes.wait([task_id])
        info = server.status(task_id)
        assert (info.state, info.status) == ("done", "lost")
        assert finishes.events[task_id].name == "helpers.die"  # from the record: no worker sent it
        assert info.error is not None and info.error.type == "WorkerLost"
        with pytest.raises(TaskFailed, match="lost"):
            server.result(task_id, timeout=WAIT)


def test_result_waits_times_out_and_knows_what_was_not_kept() -> None:
    gate = _gate()
    with TaskServer(1, result_bytes=1 << 16) as server:
        slow = server.task(wait_for_file, gate)
        with pytest.raises(TimeoutError, match=f"task {slow} did not finish within 0.2s"):
            server.result(slow, timeout=0.2)
        _open(gate)
        assert server.result(slow, timeout=WAIT) == gate
        large = server.task(big, 1 << 15)  # over a quarter of the worker's 64 KiB
        with pytest.raises(UnknownTask, match="not kept"):
            server.result(large, timeout=WAIT)
        assert server.status(large).status == "ok"
        with pytest.raises(UnknownTask, match="never issued"):
            server.status(10**9)


def test_retries_show_in_the_record_as_one_task() -> None:
    with TaskServer(1, retries=2, retry_backoff=0.01) as server:
        task_id = server.task(boom, "always")
        with pytest.raises(TaskFailed):
            server.result(task_id, timeout=WAIT)
        info = server.status(task_id)
        assert (info.status, info.attempts) == ("error", 3)


def test_tasks_lists_queued_running_and_done(finishes: FinishLog) -> None:
    gate = _gate()
    with TaskServer(1, plugins=[finishes]) as server:
        done = server.task(add, 1, 1)
        finishes.wait([done])
        running = server.task(wait_for_file, gate)
        assert wait_until(lambda: _state(server, running) == "running")
        queued = [server.task(add, i, i) for i in range(3)]
        listed = server.tasks()
        assert [i.task_id for i in listed["running"]] == [running]
        assert [i.task_id for i in listed["queued"]] == queued
        assert done in [i.task_id for i in listed["done"]]
        assert server.stats()["tasks"]["running"][0]["task_id"] == running
        _open(gate)
        finishes.wait([running, *queued])


def test_lookups_hold_while_100k_tasks_flow_and_the_last_100k_are_kept() -> None:
    """Readers in another thread and another process look up random recent
    ids while 100,000 tasks go through: every answer is a whole record or
    UnknownTask, never an exception of another kind or a torn record."""
    n = 100_000
    with TaskServer(2, queue_timeout=30.0) as server:
        stop = threading.Event()
        problems: list[str] = []
        lookups = [0]

        def read() -> None:
            while not stop.is_set():
                issued = local_pool(server).submit.stats().next_seq
                task_id = random.randrange(max(1, issued - 5000), max(2, issued))
                try:
                    info = server.status(task_id)
                except UnknownTask:
                    continue
                except Exception as exc:  # noqa: BLE001 - any other error is the failure
                    problems.append(repr(exc))
                    return
                lookups[0] += 1
                if info.task_id != task_id or (info.state == "done") != (info.status is not None):
                    problems.append(repr(info))

        reader = threading.Thread(target=read)
        reader.start()
        try:
            ids = [server.task(add, i, 1) for i in range(n)]
        finally:
            assert wait_until(lambda: server.status(ids[-1]).state == "done", timeout=60)
            stop.set()
            reader.join(WAIT)
        assert not problems, problems[:5]
        assert lookups[0] > 100
        assert server.result(ids[-1], timeout=WAIT) == n
        assert all(server.status(i).status == "ok" for i in ids[:: n // 1000])  # the last 100,000 are all kept
        assert server.result(ids[0], timeout=WAIT) == 1
        server.taskwait(add, 0, 0, timeout=WAIT)  # one more task takes the oldest one's slot
        with pytest.raises(UnknownTask, match="keeps the last 100000 tasks"):
            server.status(ids[0])


def test_eager_backend_answers_the_same_calls() -> None:
    with taskmw.create_server(backend="eager") as server:
        task_id = server.task(report_then_wait_eager)
        info = server.status(task_id)
        assert (info.state, info.status, info.progress, info.message) == ("done", "ok", 0.5, "half")
        assert server.result(task_id) == 42
        assert server.cancel(task_id) is False
        failed = server.task(boom, "no")
        with pytest.raises(TaskFailed):
            server.result(failed)
        assert [i.task_id for i in server.tasks()["done"]] == [failed, task_id]
        with pytest.raises(UnknownTask):
            server.status(99)


def report_then_wait_eager() -> int:
    taskmw.progress(0.5, "half")
    return 42


def test_progress_outside_a_task_does_nothing_and_checks_its_argument() -> None:
    taskmw.progress(0.5)  # not in a task: nothing happens
    with TaskServer(1) as server:
        task_id = server.task(bad_progress)
        with pytest.raises(TaskFailed, match="progress fraction must be a number from 0 to 1, got 2"):
            server.result(task_id, timeout=WAIT)


def bad_progress() -> None:
    taskmw.progress(2)


def given(a: object, *, b: object = None) -> object:
    return a


def test_arguments_are_recorded_only_when_asked() -> None:
    with TaskServer(1, record_arguments=True) as server:
        task_id = server.task(given, [1, 2, 3], b="x" * 200)
        server.result(task_id, timeout=WAIT)
        shown = server.status(task_id).arguments
        assert shown is not None and shown.startswith("given([1, 2, 3], b='xxx") and "..." in shown
        assert len(shown) < 120  # a short repr, not the whole value
    with TaskServer(1) as server:
        task_id = server.task(given, 1)
        server.result(task_id, timeout=WAIT)
        assert server.status(task_id).arguments is None
