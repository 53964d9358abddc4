"""Completion channels (:mod:`taskmw.channel`): each process that queues
gets its own, and its own finishes on it, also when another process that
held a channel died. Tests marked ``no_process_left`` count this process's
descendants before and after: none may be left.
"""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time
from pathlib import Path

import pytest
from helpers import WAIT, Finishes, FinishLog, add, fork_call, local_pool, reap, sleep_then, wait_until

from taskmw import TaskFinishEvent, TaskServer, hookimpl, records


def test_ids_increase_across_processes_and_finish_where_queued(
    pool: TaskServer, finishes: FinishLog, tmp_path: Path
) -> None:
    """Two forked processes share the pool: ids are unique across them, each
    process's ids increase, and each process gets exactly its own finishes."""
    mine = [pool.task(add, 0, i) for i in range(50)]

    def child() -> None:
        fin = Finishes()
        pool.plugins.register(fin)
        ids = [pool.task(add, 1, i) for i in range(200)]
        got = fin.wait(ids)
        right = all(got[i].return_value == 1 + k for k, i in enumerate(ids))
        extra = sorted(set(fin.events) - set(ids))
        (tmp_path / f"{os.getpid()}.pkl").write_bytes(pickle.dumps((ids, right, extra)))

    children = [fork_call(child) for _ in range(2)]
    assert [reap(pid) for pid in children] == [0, 0]
    results = [pickle.loads(p.read_bytes()) for p in tmp_path.glob("*.pkl")]
    assert len(results) == 2
    all_ids = set(mine)
    for ids, right, extra in results:
        assert right and extra == [] and ids == sorted(ids)
        assert not all_ids & set(ids)
        all_ids |= set(ids)
    finishes.wait(mine)
    assert set(finishes.events) == set(mine)  # none of the children's finishes came here


@pytest.mark.usefixtures("no_process_left")
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


def test_close_with_a_full_channel_raises_nothing_and_runs_no_hook_after(caplog: pytest.LogCaptureFixture) -> None:
    """The reader is stuck in a hook while the channel fills up: ``close()``
    gives up on it after its deadline (saying how many finishes were not
    delivered) without raising, and no hook runs once it returned."""
    release = threading.Event()
    calls: list[float] = []

    class Stuck:
        @hookimpl
        def on_finish(self, event: TaskFinishEvent) -> None:
            calls.append(time.monotonic())
            release.wait(WAIT)

    server = TaskServer(1, plugins=[Stuck()], channel_bytes=4096, entrypoints=False)
    first = server.task(add, 1, 1)
    assert wait_until(lambda: calls)  # the reader is in the hook
    pool = local_pool(server)
    assert pool.own_channel is not None
    ring = pool.channels[pool.own_channel]
    filler = records.FinishRecord(first, first, records.OK).encode()  # a second finish of it: dropped if read
    while ring.try_push(filler):
        pass
    started = time.monotonic()
    server.close()
    returned = time.monotonic()
    assert returned - started < 15.0
    assert "1 finish" in caplog.text and "not delivered" in caplog.text
    release.set()
    assert wait_until(lambda: not any(t.name.startswith("taskmw-finishes") for t in threading.enumerate()), 5.0)
    assert len(calls) == 1
