"""The record layout (:mod:`taskmw.records`): finish records round-trip,
and a task's options are checked when its submit record is made. Tests
marked ``no_process_left`` count this process's descendants before and
after: none may be left.
"""

from __future__ import annotations

import threading

import pytest
from helpers import add

from taskmw import Task, TaskError, TaskServer, records
from taskmw.records import FinishRecord


def test_finish_records_round_trip_and_bad_return_values_become_errors() -> None:
    err = TaskError("ValueError", "bad", "Traceback ...")
    ev = FinishRecord.decode(FinishRecord(7, 7, records.ERROR, None, err, 0.5, 1).encode())
    assert ev == FinishRecord(7, 7, records.ERROR, None, err, 0.5, 1)
    ok = FinishRecord.decode(FinishRecord(8, 3, records.OK, {"a": 1}, None, 0.1, 0).encode())
    assert ok.seq == 8 and ok.task_id == 3 and ok.value == {"a": 1} and ok.error is None
    bad = FinishRecord.decode(FinishRecord(9, 9, records.OK, threading.Lock(), None, 0.1, 0).encode())
    assert bad.status == records.ERROR and bad.error is not None
    assert "the return value cannot be pickled: _thread.lock" in bad.error.message
    with pytest.raises(AttributeError):
        ok.status = records.ERROR  # type: ignore[misc]


@pytest.mark.usefixtures("no_process_left")
def test_invalid_per_task_options() -> None:
    with TaskServer(1) as server:
        with pytest.raises(ValueError, match="timeout must be a number of seconds > 0"):
            server.task(Task(add, 1, 2), timeout=-1)
        with pytest.raises(ValueError, match="retries must be"):
            server.task(Task(add, 1, 2), retries="3")
