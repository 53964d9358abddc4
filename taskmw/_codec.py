"""How tasks and finishes are written into ring records.

A submit record's aux word says where the finish goes and what the payload
is: bits 0-15 are the completion channel of the dispatching process, bits
16-23 the kind (a call, a data object, or a stop marker for one worker),
bit 24 :data:`WANT`, and bits 26-28 say how to read the payload
(:data:`OPTS`, :data:`TIMED`, :data:`SPILLED`). A
call's payload is ``pickle((fn, args, kwargs or None))``; a data object's is
``pickle(obj)``. The task id is the record's sequence number in the ring.

A finish record is ``pickle((task_id, status, value, error, duration,
worker_id))`` with ``status`` an index into :data:`taskmw.events.STATUSES`.

Plain pickle is the fast path. Whatever it cannot carry by reference
(lambdas, closures, objects of ``__main__``, which a task worker forked
before they were defined would not have) goes by value with cloudpickle.
"""

from __future__ import annotations

import os
import pickle
import struct
import tempfile
from typing import Any

import cloudpickle  # type: ignore[import-untyped]

from taskmw.events import STATUSES, TaskError, TaskFinishEvent

CHANNEL_MASK = 0xFFFF
KIND_CALL = 0 << 16
KIND_DATA = 1 << 16
KIND_STOP = 2 << 16
KIND_MASK = 0xFF << 16
WANT = 1 << 24
"""Submit and finish aux bit: a ``taskwait`` or ``task_async`` caller waits for this finish."""
READER_STOP = 1 << 25
"""Finish aux bit: the marker that ends a process's completion reader thread."""

OPTS = 1 << 26
"""Submit aux bit: the payload starts with an options header (see :func:`with_options`)."""
TIMED = 1 << 27
"""Submit aux bit: the task has a time limit, so a worker takes it alone."""
SPILLED = 1 << 28
"""Submit and finish aux bit: the record is the path of a file that holds
the payload (records too large for a ring travel this way)."""

OK, ERROR, LOST, TIMEOUT, CANCELLED = range(5)
assert STATUSES[OK] == "ok" and STATUSES[CANCELLED] == "cancelled"

_PROTOCOL = 5
_MAIN = b"__main__"
_dumps = pickle.dumps
_loads = pickle.loads
_PICKLE_ERRORS = (pickle.PicklingError, TypeError, AttributeError, RecursionError, ValueError)


def dumps(obj: Any) -> bytes:
    """Pickle ``obj``: plain pickle when it carries everything by reference,
    else cloudpickle. Raises what cloudpickle raises if neither can."""
    try:
        data = _dumps(obj, _PROTOCOL)
    except _PICKLE_ERRORS:
        return cloudpickle.dumps(obj, _PROTOCOL)  # type: ignore[no-any-return]
    if _MAIN in data:  # defined in the main script: send by value
        return cloudpickle.dumps(obj, _PROTOCOL)  # type: ignore[no-any-return]
    return data


def _unpicklable(what: str, obj: Any, exc: BaseException) -> TypeError:
    return TypeError(f"{what} cannot be pickled: {type(obj).__module__}.{type(obj).__qualname__} {_short(obj)} ({exc})")


def _short(obj: Any) -> str:
    try:
        r = repr(obj)
    except Exception:  # a broken __repr__ must not hide the real error
        r = "<unrepresentable>"
    return r if len(r) <= 80 else r[:77] + "..."


def encode_call(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """The payload of a call ``fn(*args, **kwargs)``.

    Raises:
        TypeError: something cannot be pickled; the message names which
            argument (or the callable) and its type.
    """
    try:
        return dumps((fn, args, kwargs or None))
    except Exception as exc:
        raise _explain(fn, args, kwargs, exc) from exc


def encode_data(obj: Any) -> bytes:
    """The payload of a data object (or a :class:`~taskmw.ServiceTask`)."""
    try:
        return dumps(obj)
    except Exception as exc:
        if hasattr(obj, "args") and hasattr(obj, "kwargs"):  # ServiceTask: name the argument
            raise _explain(None, obj.args, obj.kwargs, exc) from exc
        raise _unpicklable("the task data", obj, exc) from exc


def _explain(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], exc: BaseException) -> TypeError:
    """Find the first part of a call that cannot be pickled and say which."""
    parts: list[tuple[str, Any]] = []
    if fn is not None:
        parts.append((f"the task callable {getattr(fn, '__qualname__', '')}".rstrip(), fn))
    parts += [(f"task argument {i}", a) for i, a in enumerate(args)]
    parts += [(f"task keyword argument {k!r}", v) for k, v in kwargs.items()]
    for what, obj in parts:
        try:
            dumps(obj)
        except Exception as part_exc:
            return _unpicklable(what, obj, part_exc)
    return TypeError(f"the task cannot be pickled: {exc}")


def decode(payload: bytes) -> Any:
    """Unpickle a payload written by this module."""
    return _loads(payload)


def encode_finish(
    task_id: int, status: int, value: Any, error: TaskError | None, duration: float, worker_id: int, name: str = ""
) -> bytes:
    """A finish record. A return value that cannot be pickled turns the
    finish into an ``error`` naming it (the task did run)."""
    try:
        return dumps((task_id, status, value, error, duration, worker_id, name))
    except Exception as exc:
        err = TaskError("TypeError", str(_unpicklable("the return value", value, exc)), "")
        return _dumps((task_id, ERROR, None, err, duration, worker_id, name), _PROTOCOL)


def decode_finish(payload: bytes) -> TaskFinishEvent:
    """The :class:`TaskFinishEvent` of a finish record."""
    task_id, status, value, error, duration, worker_id, name = _loads(payload)
    return _new_finish(TaskFinishEvent, (task_id, STATUSES[status], value, error, duration, worker_id, 1, name))


_OPTIONS = struct.Struct("<dIQ")


def with_options(payload: bytes, timeout: float | None, attempt: int, task_id: int) -> bytes:
    """``payload`` behind an options header: the time limit (None: the
    pool's), which attempt this is (1 for the first run), and the task id the
    user knows it by (a retry is queued again under a new seq)."""
    return _OPTIONS.pack(timeout or 0.0, attempt, task_id) + payload


def split_options(record: bytes) -> tuple[float | None, int, int, bytes]:
    """``(timeout, attempt, task_id, payload)`` of a record written by :func:`with_options`."""
    timeout, attempt, task_id = _OPTIONS.unpack_from(record)
    return timeout or None, attempt, task_id, record[_OPTIONS.size :]


def spill(payload: bytes, directory: str) -> bytes:
    """Write ``payload`` to a new file in ``directory``; returns the record
    that stands for it (its path)."""
    fd, path = tempfile.mkstemp(dir=directory, prefix="payload-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
    except BaseException:
        os.unlink(path)
        raise
    return os.fsencode(path)


def unspill(record: bytes) -> bytes:
    """Read back, and delete, the file of a record written by :func:`spill`."""
    path = os.fsdecode(record)
    try:
        with open(path, "rb") as f:
            return f.read()
    finally:
        os.unlink(path)


_new_finish = tuple.__new__  # builds a TaskFinishEvent without NamedTuple's slower __new__
