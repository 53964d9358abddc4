"""Completion channels (:mod:`taskmw.channel`): each process that queues
gets its own, and its own finishes on it, also when another process that
held a channel died. Tests marked ``no_process_left`` count this process's
descendants before and after: none may be left.
"""

from __future__ import annotations

import os
import pickle
import signal
from pathlib import Path

import pytest
from helpers import WAIT, Finishes, FinishLog, add, fork_call, reap, sleep_then, wait_until

from taskmw import TaskServer


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
