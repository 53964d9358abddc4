"""The record layout (:mod:`taskmw.records`): finish records round-trip,
and a task's options are checked when its submit record is made. Tests
marked ``no_process_left`` count this process's descendants before and
after: none may be left.
"""

from __future__ import annotations

import sys
import threading
import types

import pytest
from helpers import add

from taskmw import Task, TaskError, TaskServer, _codec, records
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


class _Flag(int):
    """An int subclass: its pickle names its class, so it is no plain value."""


def test_a_finish_of_a_plain_value_reads_as_dumps_would_have_written_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """encode_finish() pickles a finish whose value is a plain scalar without
    the look for ``__main__``: the same bytes as :func:`taskmw._codec.dumps`
    makes, and a value that is not plain (an int subclass, of ``__main__``
    here: it goes by value) keeps its class."""
    monkeypatch.setattr(_Flag, "__module__", "__main__")
    monkeypatch.setattr(sys.modules["__main__"], "_Flag", _Flag, raising=False)
    for name in ("mod.fn", "__main__.fn"):
        for value in (None, True, 0, -(2**70), 1.5, "", "é __main__", b"__main__\x00", _Flag(3)):
            fields = (7, 5, records.OK, value, None, 0.25, 1, name)
            record = records.encode_finish(*fields)
            assert record == _codec.dumps(fields)
            assert records.read_finish(record) == fields and type(records.read_finish(record)[3]) is type(value)
    assert b"__main__\x94\x8c\x05_Flag" not in records.encode_finish(7, 5, records.OK, _Flag(3))  # not by reference


@pytest.mark.usefixtures("no_process_left")
def test_invalid_per_task_options() -> None:
    with TaskServer(1) as server:
        with pytest.raises(ValueError, match="task_timeout must be a number of seconds > 0"):
            server.task(Task(add, 1, 2), task_timeout=-1)
        with pytest.raises(ValueError, match="retries must be"):
            server.task(Task(add, 1, 2), retries="3")


class _Gone:
    """Pickled by reference to a module the reading process does not have."""


def test_a_finish_whose_value_cannot_be_rebuilt_is_salvaged_as_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("no_such_module_here")
    module._Gone = _Gone  # type: ignore[attr-defined]
    monkeypatch.setattr(_Gone, "__module__", module.__name__)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    record = records.encode_finish(7, 5, records.OK, {"x": [_Gone()]}, None, 0.25, 1, "mod.fn")
    monkeypatch.delitem(sys.modules, module.__name__)  # gone in the process that reads it
    with pytest.raises(ModuleNotFoundError):
        records.read_finish(record)
    seq, task_id, status, value, error, duration, worker_id, name = records.salvage_finish(record)
    assert (seq, task_id, status, value, duration, worker_id, name) == (7, 5, records.ERROR, None, 0.25, 1, "mod.fn")
    assert error is not None and "no_such_module_here._Gone" in error.message
    readable = records.encode_finish(8, 8, records.OK, {"a": (1, 2)})
    assert records.salvage_finish(readable) == records.read_finish(readable)
    with pytest.raises(Exception):  # noqa: B017, PT011 - whatever a broken pickle raises
        records.salvage_finish(b"\x80\x05garbage")
