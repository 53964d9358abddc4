"""Finish delivery (:mod:`taskmw.delivery`): every ``on_finish`` runs
even if one fails, and a task finishes once. Tests marked
``no_process_left`` count this process's descendants before and after: none
may be left.
"""

from __future__ import annotations

import pytest
from helpers import WAIT, FinishLog, add, local_pool

from taskmw import TaskFinishEvent, TaskServer, hookimpl, records


def test_a_failing_on_finish_does_not_stop_the_others(caplog: pytest.LogCaptureFixture, finishes: FinishLog) -> None:
    class Broken:
        @hookimpl(tryfirst=True)
        def on_finish(self, event: TaskFinishEvent) -> None:
            raise RuntimeError("broken plugin")

    with TaskServer(1, plugins=[finishes, Broken()]) as server:
        task_id = server.task(add, 1, 2)
        assert finishes.wait([task_id])[task_id].return_value == 3
    assert "broken plugin" in caplog.text


@pytest.mark.usefixtures("no_process_left")
def test_a_second_finish_for_a_task_is_dropped(finishes: FinishLog) -> None:
    """A worker that dies after sending a finish but before releasing its task
    makes the supervisor send ``lost`` for it too: only the first counts."""
    with TaskServer(1, plugins=[finishes]) as server:
        task_id = server.task(add, 1, 2)
        finishes.wait([task_id])
        late = records.FinishRecord(task_id, task_id, records.LOST, None, None, 0.0, 0).encode()
        pool = local_pool(server)
        assert pool.own_channel is not None
        pool.channels[pool.own_channel].push(late)
        assert server.taskwait(add, 2, 2, timeout=WAIT) == 4  # delivered after the duplicate
    assert [e.status for e in finishes.deliveries[task_id]] == ["ok"]
