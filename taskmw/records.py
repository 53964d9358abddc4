"""The two records of a task's trip, and the one place that knows their layout.

A **submit record** carries a task from the process that queued it to a task
worker; a **finish record** carries its outcome back. Both travel as a ring
record (bytes) plus the ring's 32-bit aux word, the record's *header*:

====================  ===============================================
bits 0-15             the completion channel of the queuing process
bits 16-23            the :class:`Kind` (a call, a data object, a stop marker)
:attr:`Flag.WANT`     a ``taskwait``/``taskwait_multi``/``task_async`` caller waits for the finish
:attr:`Flag.READER_STOP`  (finish) the marker that ends a completion reader thread
:attr:`Flag.OPTS`     (submit) the payload starts with the options header
:attr:`Flag.TIMED`    (submit) the task has a time limit: a worker takes it alone
:attr:`Flag.SPILLED`  the record is the path of a file holding the payload
:attr:`Flag.DELAYED`  (submit and finish) a task queued with ``delay=``/``eta=`` (see :mod:`taskmw.delayed`)
:attr:`Flag.RELEASED`  (submit) that task's run, pushed by the scheduler when it is due
====================  ===============================================

A task's **seq** is its record's sequence number in the submit ring; its
**id** (what ``task()`` returned) is the seq of its first run: a retry is
queued again under a new seq and carries its id in the options header
(:func:`task_id_of` is the one place that decides this).

Nothing outside this module builds or masks header bits; the hot paths use
the plain-int constants below (an :class:`enum.IntFlag` costs more per
operation than an int).
"""

from __future__ import annotations

import datetime
import enum
import io
import os
import pickle
import struct
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import reduce
from operator import or_
from typing import Any, NamedTuple

from taskmw import _codec
from taskmw.events import STATUSES, TaskError
from taskmw.settings import check_int, check_seconds
from taskmw.tasks import OPTIONS_ATTR, ServiceTask, Task, check_not_options, check_option_names


class Kind(enum.IntEnum):
    """What a submit record holds."""

    CALL = 0
    """``pickle((fn, args, kwargs or None))``"""
    DATA = 1
    """``pickle(obj)``: a data object or a :class:`~taskmw.ServiceTask`"""
    STOP = 2
    """no payload: the worker that takes it stops"""


class Flag(enum.IntFlag):
    """The header's flag bits."""

    WANT = 1 << 24
    READER_STOP = 1 << 25
    OPTS = 1 << 26
    TIMED = 1 << 27
    SPILLED = 1 << 28
    CANCELLED = 1 << 29
    """(submit) cancelled while queued (set in place by :meth:`taskmw.Ring.mark`): it must not run"""
    DELAYED = 1 << 30
    """(submit and finish) a delayed task: its first trip (options ``due`` set) takes it to the
    scheduler (:mod:`taskmw.delayed`), its second (``due`` 0) runs it; its finish says so too"""
    RELEASED = 1 << 31
    """(submit) a delayed task's second trip, pushed by the scheduler (its seq is not its id)"""


CHANNEL_MASK = 0xFFFF
_KIND_SHIFT = 16
_KIND_MASK = 0xFF << _KIND_SHIFT
WANT = int(Flag.WANT)
READER_STOP = int(Flag.READER_STOP)
TIMED = int(Flag.TIMED)
"""The ring's ``alone`` mask: a worker pops a timed task on its own."""
SPILLED = int(Flag.SPILLED)
CANCEL = int(Flag.CANCELLED)
"""The bit :meth:`taskmw.Ring.mark` sets on a queued task that is cancelled."""
DELAYED = int(Flag.DELAYED)
RELEASED = int(Flag.RELEASED)
OPTS = int(Flag.OPTS)
"""The header bit of a submit record that carries :class:`Options`."""
_REPLY = CHANNEL_MASK | WANT | DELAYED
_UNCOMMON = SPILLED | OPTS | CANCEL
STOP = Kind.STOP << _KIND_SHIFT
"""The header of a stop marker."""
NAMED_HERE = _KIND_MASK | OPTS | SPILLED | DELAYED | RELEASED
"""A submit header with any of these bits is recorded as queued (its name and
time, :meth:`taskmw.tasktable.TaskTable.queued`) by the process that queues
it; a plain call without them, whose payload is two-part, by the worker that
takes it (:func:`named_by_worker`)."""


def named_by_worker(header: int, record: bytes) -> bool:
    """True for ``task()``'s fast path: a plain call (no options, not spilled)
    of a function by reference (a two-part payload, see :mod:`taskmw._codec`).
    Its queuing process does not record it as queued; the worker that pops it
    does, with the time of its push and the name read from its payload."""
    return not header & NAMED_HERE and record[:1] == _codec.SPLIT_BYTE


# Finish status codes: indexes into taskmw.events.STATUSES.
OK, ERROR, LOST, TIMEOUT, CANCELLED = range(5)
assert STATUSES[OK] == "ok" and STATUSES[CANCELLED] == "cancelled"


def submit_header(kind: Kind, want: bool = False) -> int:
    """The header bits of a new task of ``kind`` (the channel and the
    transport's own bits are added when it is sent)."""
    return (kind << _KIND_SHIFT) | (WANT if want else 0)


def with_channel(header: int, channel: int) -> int:
    """``header`` addressed to completion channel ``channel``."""
    return header | channel


def is_stop(header: int) -> bool:
    """True for a stop marker."""
    return header & _KIND_MASK == STOP


def batch_bits(headers: Sequence[int]) -> int:
    """The headers of a batch OR-ed together: :func:`is_spilled`,
    :func:`wants`, :func:`is_reader_stop` of it say whether any of them
    has that flag (one check for a batch instead of one a record)."""
    return reduce(or_, headers, 0)


def any_stop(headers: Sequence[int]) -> bool:
    """False if none of ``headers`` is a stop marker (of the kinds, only a
    stop marker has bit 1 set)."""
    return bool(batch_bits(headers) & STOP)


def wants(header: int) -> bool:
    """True if someone waits for this task's finish."""
    return bool(header & WANT)


def reply_to(header: int) -> int:
    """The header of the finish of a task sent with ``header``: its channel and ``WANT``."""
    return header & _REPLY


def channel_of(header: int) -> int:
    """The completion channel a header addresses."""
    return header & CHANNEL_MASK


def is_spilled(header: int) -> bool:
    """True if the record is the path of a spill file (see :func:`spill`)."""
    return bool(header & SPILLED)


def unspilled(header: int) -> int:
    """``header`` of a spilled record once its file was read back (see :func:`unspill`)."""
    return header & ~SPILLED


def is_delayed(header: int) -> bool:
    """True for a delayed task's submit record or finish (see :data:`DELAYED`)."""
    return bool(header & DELAYED)


def is_reader_stop(header: int) -> bool:
    """True for the marker that stops a completion reader."""
    return bool(header & READER_STOP)


_new = tuple.__new__  # builds a NamedTuple without its slower __new__

# -- submit records ------------------------------------------------------------

_OPTIONS = struct.Struct("<dIIQd")


class Options(NamedTuple):
    """Per-task options that travel in the record's options header."""

    timeout: float | None = None
    """The task's own time limit (``None``: the pool's)."""
    attempt: int = 1
    """Which run this is (1 the first time)."""
    task_id: int = 0
    """The id of the task's first run (0: the first run, whose id is its seq)."""
    left: int = 0
    """Runs left after this one if it fails (``retries``)."""
    due: float = 0.0
    """A delayed task's due time (``time.time()``) on its way to the scheduler; 0 otherwise."""


def task_id_of(seq: int, first_id: int) -> int:
    """A task's id: the seq of its first run (``first_id``, 0 for a first run)."""
    return first_id or seq


def encode_task(
    obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any], call: str = "task"
) -> tuple[bytes, Kind, dict[str, Any]]:
    """``(payload, kind, options)`` of what ``task()`` was given: a callable
    and its arguments, a :class:`~taskmw.Task` or :class:`~taskmw.ServiceTask`
    (``kwargs`` are then the per-task options, see :func:`task_options`), or
    a data object.

    Raises:
        TypeError: something cannot be pickled (the message names it),
            arguments were given with a Task or data object, or a plain
            callable was given an option name it has no parameter for.
        ValueError: an option is out of range.
    """
    if type(obj) is Task:
        return _codec.encode_call(obj.fn, obj.args, obj.kwargs), Kind.CALL, task_options(obj, args, kwargs)
    if isinstance(obj, ServiceTask) or not callable(obj) or isinstance(obj, type):
        return _codec.encode_data(obj), Kind.DATA, task_options(obj, args, kwargs)
    if kwargs:
        check_not_options(obj, kwargs, call=call)
    defaults = getattr(obj, OPTIONS_ATTR, None)
    return _codec.encode_call(obj, args, kwargs), Kind.CALL, task_options(Task(obj), (), defaults) if defaults else {}


def task_options(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The per-task options given with a Task or data object, checked:
    ``{"timeout", "retries", "due", "backoff"}`` (those given) for the
    server's ``_queue``. ``delay`` (seconds) and ``eta`` (an aware
    :class:`~datetime.datetime`) both become ``due``, a ``time.time()`` value.

    Raises:
        TypeError: positional arguments, an unknown option (``timeout=``
            is read as ``task_timeout=``), a naive ``eta``, or both ``delay``
            and ``eta``.
        ValueError: an option is out of range.
    """
    what = type(obj).__qualname__
    if args:
        raise TypeError(
            f"task() got positional arguments with a {what}: only a plain callable takes "
            "arguments (put them in the Task)"
        )
    kwargs = check_option_names(kwargs, f"task() with a {what}")
    defaults = getattr(obj.fn, OPTIONS_ATTR, None) if type(obj) is Task else None
    if defaults:
        kwargs = {**defaults, **kwargs}
    out: dict[str, Any] = {}
    if kwargs.get("task_timeout") is not None:
        check_seconds("task_timeout", kwargs["task_timeout"], positive=True)
        out["timeout"] = kwargs["task_timeout"]
    if kwargs.get("retries") is not None:
        check_int("retries", kwargs["retries"], 0, 1000)
        out["retries"] = kwargs["retries"]
    if kwargs.get("retry_backoff") is not None:
        check_seconds("retry_backoff", kwargs["retry_backoff"])
        out["backoff"] = kwargs["retry_backoff"]
    due = due_time(kwargs.get("delay"), kwargs.get("eta"))
    if due:
        out["due"] = due
    return out


def due_time(delay: float | datetime.timedelta | None, eta: datetime.datetime | None) -> float:
    """The ``time.time()`` at which a task given ``delay`` (seconds, or a
    ``timedelta``, as periodic tasks' ``every=``) or an ``eta`` is due (0.0:
    neither given).

    Raises:
        TypeError: both given, or ``eta`` is not an aware datetime.
        ValueError: ``delay`` is not a number of seconds >= 0.
    """
    if delay is not None and eta is not None:
        raise TypeError(f"give delay= or eta=, not both (got delay={delay!r}, eta={eta!r})")
    if delay is not None:
        if isinstance(delay, datetime.timedelta):
            delay = delay.total_seconds()
        check_seconds("delay", delay)
        return time.time() + delay
    if eta is None:
        return 0.0
    if not isinstance(eta, datetime.datetime):
        raise TypeError(f"eta= must be a datetime, got {type(eta).__qualname__}: {eta!r}")
    if eta.tzinfo is None or eta.utcoffset() is None:
        raise TypeError(
            f"eta= must be an aware datetime (with a time zone), got the naive {eta!r}: "
            "pass e.g. datetime.now(timezone.utc) + timedelta(minutes=10), or use delay= (seconds)"
        )
    return eta.timestamp()


def encode_submit(payload: bytes, header: int, options: Options | None) -> tuple[bytes, int]:
    """``(record, header)`` of a task: the options header goes in front when
    there are options (a time limit, a retry)."""
    if options is None:
        return payload, header
    timed = TIMED if options.timeout is not None else 0
    delayed = DELAYED if options.due else 0
    record = _OPTIONS.pack(options.timeout or 0.0, options.attempt, options.left, options.task_id, options.due)
    return record + payload, header | OPTS | timed | delayed


def options_of(record: bytes, header: int) -> Options:
    """The options a submit record carries (the defaults when it has none)."""
    if not header & OPTS:
        return Options()
    timeout, attempt, left, first_id, due = _OPTIONS.unpack_from(record)
    return Options(timeout or None, attempt, first_id, left, due)


class SubmitRecord(NamedTuple):
    """A task as a worker reads it."""

    seq: int
    task_id: int
    kind: int
    """A :class:`Kind`."""
    reply: int
    """The header of its finish (see :func:`reply_to`)."""
    timeout: float | None
    attempt: int
    left: int
    """Runs left after this one if it fails (its record stays unfinished on a failure with runs left)."""
    cancelled: bool
    """Cancelled while queued: a worker finishes it ``cancelled`` without running it."""
    payload: bytes
    """Its pickled call or data object (without the options header)."""
    due: float
    """A delayed task on its way to the scheduler: its due time (``time.time()``); else 0."""

    @classmethod
    def read(cls, seq: int, record: bytes, header: int) -> SubmitRecord:
        """Decode a popped record (reading, and removing, its spill file).

        Raises:
            OSError: a spill file is gone. ``struct.error``: a bad options header.
        """
        kind = (header & _KIND_MASK) >> _KIND_SHIFT
        if not header & _UNCOMMON:  # the common case, without NamedTuple's slower __new__
            return _new(cls, (seq, seq, kind, header & _REPLY, None, 1, 0, False, record, 0.0))
        if header & SPILLED:
            record = unspill(record)
        timeout, attempt, first_id, left, due = options_of(record, header)
        if header & OPTS:
            record = record[_OPTIONS.size :]
        task_id = task_id_of(seq, first_id)
        return cls(seq, task_id, kind, header & _REPLY, timeout, attempt, left, bool(header & CANCEL), record, due)


# -- finish records ------------------------------------------------------------


class FinishRecord(NamedTuple):
    """A task's outcome as it travels back."""

    seq: int
    task_id: int
    status: int
    """One of :data:`OK`, :data:`ERROR`, :data:`LOST`, :data:`TIMEOUT`, :data:`CANCELLED`."""
    value: Any = None
    error: TaskError | None = None
    duration: float = 0.0
    worker_id: int = -1
    name: str = ""

    def encode(self) -> bytes:
        """The record's bytes (see :func:`encode_finish`)."""
        return encode_finish(*self)

    @classmethod
    def decode(cls, record: bytes) -> FinishRecord:
        """The finish in ``record`` (raises what unpickling raises)."""
        return _new(cls, read_finish(record))


def encode_finish(
    seq: int,
    task_id: int,
    status: int,
    value: Any = None,
    error: TaskError | None = None,
    duration: float = 0.0,
    worker_id: int = -1,
    name: str = "",
) -> bytes:
    """The bytes of a :class:`FinishRecord`, made without building one. A
    return value that cannot be pickled turns the finish into an ``error``
    naming it (the task did run)."""
    if error is None and type(value) in _codec.PLAIN_VALUES:  # every field plain: nothing to look for
        return _codec.dumps_plain((seq, task_id, status, value, error, duration, worker_id, name))
    try:
        return _codec.dumps((seq, task_id, status, value, error, duration, worker_id, name))
    except BaseException as exc:  # noqa: B036 - a value's __reduce__ may raise anything
        error = TaskError("TypeError", _codec.unpicklable_message("the return value", value, exc), "")
        return _codec.dumps((seq, task_id, ERROR, None, error, duration, worker_id, name))


FinishFields = tuple[int, int, int, Any, TaskError | None, float, int, str]
"""A finish record's fields, in :class:`FinishRecord`'s order, as a plain tuple."""

read_finish: Callable[[bytes], FinishFields] = _codec.decode
"""The fields of a finish record, as a plain tuple (the fast path of
:meth:`FinishRecord.decode`, for the delivery loop)."""


class _Unreadable:
    """What stands in for an object of a finish record that cannot be rebuilt here."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Unreadable:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass

    def __setitem__(self, key: Any, item: Any) -> None:
        pass


def _describe(obj: Any) -> str:
    """``module.qualname`` of a class or function (else of its type)."""
    if not isinstance(obj, type) and not callable(obj):
        obj = type(obj)
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


class _SalvagingUnpickler(pickle._Unpickler):
    """The pure-Python unpickler, but an object that cannot be rebuilt (its
    class is missing here, its constructor or ``__setstate__`` raises) becomes
    an :class:`_Unreadable` and the reason is noted in :attr:`problems`."""

    dispatch = pickle._Unpickler.dispatch.copy()

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.problems: list[str] = []

    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except Exception as exc:
            self.problems.append(f"{module}.{name}: {type(exc).__name__}: {exc}")
            return _Unreadable


def _salvaging(opcode: bytes, consumed: int) -> None:
    """Make ``opcode`` (which takes ``consumed`` items off the stack and
    pushes one object) push an :class:`_Unreadable` if it raises."""
    original: Callable[[Any], None] = pickle._Unpickler.dispatch[opcode[0]]

    def load(self: Any) -> None:  # typeshed types the dispatch table for the C Unpickler
        stack = self.stack
        depth = len(stack)
        target = stack[depth - consumed] if depth >= consumed else None  # the class, callable or instance
        try:
            original(self)
        except Exception as exc:
            del stack[depth - consumed :]
            stack.append(_Unreadable())
            self.problems.append(f"{_describe(target)}: {type(exc).__name__}: {exc}")

    _SalvagingUnpickler.dispatch[opcode[0]] = load


for _opcode, _consumed in ((pickle.REDUCE, 2), (pickle.NEWOBJ, 2), (pickle.NEWOBJ_EX, 3), (pickle.BUILD, 2)):
    _salvaging(_opcode, _consumed)


def salvage_finish(record: bytes) -> FinishFields:
    """The fields of a finish record that :data:`read_finish` could not
    unpickle because of its return value (a class missing in this process,
    an exception whose ``__init__`` takes other arguments than its ``args``):
    the task's seq, id, duration, worker and name as sent, and an ``error``
    naming what could not be rebuilt, with no value.

    Raises:
        ValueError, pickle.UnpicklingError, ...: the record itself is unreadable.
    """
    unpickler = _SalvagingUnpickler(record)
    fields = unpickler.load()
    if not (isinstance(fields, tuple) and len(fields) == 8):
        raise ValueError(f"not a finish record: {type(fields).__qualname__}")
    seq, task_id, status, value, error, duration, worker_id, name = fields
    if not (type(seq) is int and type(task_id) is int and type(status) is int and 0 <= status < len(STATUSES)):
        raise ValueError("not a finish record: its seq, id or status is unreadable")
    if not isinstance(duration, float):
        duration = 0.0
    if type(worker_id) is not int:
        worker_id = -1
    if not isinstance(name, str):
        name = ""
    if not unpickler.problems and isinstance(error, TaskError | None):
        return seq, task_id, status, value, error, duration, worker_id, name
    what = "return value" if status == OK else "finish"
    problems = "; ".join(unpickler.problems) or "its error is not a TaskError"
    message = f"the task's {what} could not be unpickled in the process that queued it: {problems}"
    return seq, task_id, ERROR, None, TaskError("UnpicklingError", message, ""), duration, worker_id, name


def load_salvaging(data: bytes) -> Any:
    """Unpickle ``data``, with a placeholder for whatever cannot be rebuilt in
    this process (a class it has not imported): for showing, never for running.

    Raises:
        ValueError, pickle.UnpicklingError, ...: ``data`` is not a pickle.
    """
    return _SalvagingUnpickler(data).load()


def lost(
    seq: int, error: TaskError, status: int = LOST, duration: float = 0.0, worker_id: int = -1, task_id: int = 0
) -> bytes:
    """The finish record of a task that no worker finished (``lost``,
    ``timeout`` at a killed worker, ``cancelled``); its id is ``task_id``,
    else its seq's (the queuing process maps a retry's seq back)."""
    return encode_finish(seq, task_id or seq, status, None, error, duration, worker_id)


# -- records too large for a ring --------------------------------------------------


TASK_FILE = "task-"
"""The name prefix of a spilled task's file (a finish's is ``payload-``):
:meth:`taskmw.pool.Pool.recount_spill` counts these."""


def spill(payload: bytes, directory: str, prefix: str = "payload-") -> bytes:
    """Write ``payload`` to a new file in ``directory``; returns the record
    that stands for it (its path). Send it with :data:`SPILLED` in the
    header. The file has its full size before its bytes are written (a
    recount of the directory sees it whole); a file that cannot be written
    (``ENOSPC``) is removed, and the ``OSError`` raised."""
    fd, path = tempfile.mkstemp(dir=directory, prefix=prefix)
    try:
        with os.fdopen(fd, "wb") as f:
            os.ftruncate(f.fileno(), len(payload))
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


def discard(record: bytes) -> None:
    """Delete the spill file of a record that will never be read."""
    try:
        os.unlink(os.fsdecode(record))
    except OSError:
        pass
