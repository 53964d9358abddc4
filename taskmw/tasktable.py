"""The pool's record of tasks: every task visible from every process.

A fixed table in shared memory (made with the pool, before any fork) holds
one slot per task id, ``id % capacity``: the last ``task_records`` tasks.
Each slot has four groups of fields, each written by one process only:

=====  ==========================  ============================================
group  written by                  fields
=====  ==========================  ============================================
Q      the process that queued it  queued_at, name
       (``task()``'s fast path:
       the worker that takes it)
S      the process that queued it  due (a delayed task's due time)
L      the process that queued it  attempt, runs left (a run with ``retries``)
R      the worker that runs it     worker_id, attempt, started_at
P      that worker, ``progress()``  progress, message
D      whoever finishes it         status, finished_at, attempts, the error's
       (worker, supervisor, the    type and message, and where its finish
       queuing process)            record is kept (a worker's result arena)
=====  ==========================  ============================================

``task()``'s fast path (a plain call of a function by reference, without
options: :func:`taskmw.records.named_by_worker`) leaves the Q group to the
worker that pops the task, to keep the write (a fresh slot's cache misses
and page first-touch) off ``task()``: the worker writes it for its whole
batch right after the pop, before running any of it, with the time of the
push (the ring stamps every record, ``CLOCK_REALTIME``) and the name read
from the payload's reference pickle (never unpickled). Until then a reader
finds the name and time in the queued record itself (:meth:`taskmw.Ring.peek`,
given to :meth:`TaskTable.info` and :meth:`TaskTable.scan` as ``peek``); a
record popped between the reader's two looks has its Q group written within
microseconds, which :meth:`TaskTable.info` waits for (``wait``, bounded).
Either way one process writes a task's Q group: the queuing process for
every other task, the worker for these.

A group is written as: its tag word set to 0, the fields, the tag set to
the task id. A reader reads the tag, the fields, the tag again, and takes
the fields only if both reads gave the id. Every word is an aligned 8-byte
store, so a process killed at any instant leaves a group either absent
(tag 0) or whole; nothing is ever waited for or locked.

Results: each worker keeps the finish records it makes (pickled value,
error, traceback) in its own circular *arena*, a share of ``result_bytes``,
so no two processes write one arena and nothing is locked. A record is
found by its absolute position; once the arena has wrapped past it, it is
gone (evicted by bytes, oldest first): the writer moves the position on
before it copies, and a reader checks it after its copy.
Records older than ``result_ttl`` are treated as gone (evicted by age), and
a slot reused by a later id evicts the older (by count).
"""

from __future__ import annotations

import math
import mmap
import reprlib
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from types import FunctionType
from typing import Any

from taskmw import records
from taskmw._codec import SPLIT_BYTE, call_name, decode_parts
from taskmw._shm import shared_map
from taskmw.errors import UnknownTask
from taskmw.events import STATUSES, TaskError
from taskmw.info import State, TaskInfo
from taskmw.pipeline import task_name
from taskmw.records import FinishRecord, load_salvaging
from taskmw.ringtypes import Peeked
from taskmw.tasks import ServiceTask, Task

# Slot layout: 54 words (432 bytes).
_Q, _R, _P, _D, _C, _A, _S, _L = 0, 8, 12, 22, 44, 45, 49, 51
_SLOT = 54
_S_FIELDS = struct.Struct("<d")  # a delayed task's due time
_L_FIELDS = struct.Struct("<qq")  # a retriable run: its attempt, the runs left after it
_A_FIELDS = struct.Struct("<qqq")  # the arguments (record_arguments): arena, pos, len
_Q_FIELDS = struct.Struct("<d48s")  # queued_at, name
_R_FIELDS = struct.Struct("<qqd")  # worker_id, attempt, started_at
_P_FIELDS = struct.Struct("<d64s")  # progress (NaN: none), message
_D_FIELDS = struct.Struct("<qddqqqqq32s64s")
"""status, started_at, finished_at, attempts, worker_id, arena, pos, len, error type, message"""
assert _Q_FIELDS.size <= (_R - _Q - 1) * 8 and _R_FIELDS.size <= (_P - _R - 1) * 8
assert _P_FIELDS.size <= (_D - _P - 1) * 8 and _D_FIELDS.size <= (_C - _D - 1) * 8
assert _A_FIELDS.size <= (_S - _A - 1) * 8 and _S_FIELDS.size <= (_L - _S - 1) * 8
assert _L_FIELDS.size <= (_SLOT - _L - 1) * 8
_D_HEAD = struct.Struct("<qddqqqqq")  # the same without the error: an ``ok`` finish's fields end there
_pack_d, _pack_d_head, _pack_q = _D_FIELDS.pack_into, _D_HEAD.pack_into, _Q_FIELDS.pack_into
_time = time.time
_NO_ARENA = -1
_OK = 0  # taskmw.records.OK
_TRIES = 4  # a reader retries a group this often while a writer rewrites it
_NAMED_HERE = records.NAMED_HERE
_POPPED_WAIT = 0.1  # seconds info(wait=True) waits for the Q group of a task popped meanwhile
_POPPED_POLL = 0.0005
Peek = Callable[[int, int], Sequence[Peeked]]
"""``peek(first_seq, n)``: up to ``n`` records still queued from ``first_seq`` on,
each with the first :data:`PEEK_HEAD` bytes of its payload (a bound :meth:`taskmw.Ring.peek`)."""
PEEK_HEAD = 128
"""Payload bytes a peek needs for a name (the reference pickle's opcodes, then
the module and qualname: cut at 48 bytes anyway)."""


_ARGS = reprlib.Repr()
_ARGS.maxlevel, _ARGS.maxstring, _ARGS.maxother, _ARGS.maxlist, _ARGS.maxdict, _ARGS.maxtuple = 3, 60, 60, 8, 8, 8


def _arguments_repr(given: Any) -> str:
    """``fn(*args, **kwargs)``-like text of a pickled call, or the repr of a data object."""
    if isinstance(given, tuple) and len(given) == 3 and isinstance(given[1], tuple):
        fn, args, kwargs = given
        parts = [_ARGS.repr(a) for a in args] + [f"{k}={_ARGS.repr(v)}" for k, v in (kwargs or {}).items()]
        name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
        return f"{name}({', '.join(parts)})"
    return _ARGS.repr(given)


def _text(raw: bytes) -> str:
    return raw.rstrip(b"\0").decode("utf-8", "replace")


def _fit(text: str, size: int) -> bytes:
    """``text`` as UTF-8 cut to ``size`` bytes (on a character boundary)."""
    raw = text.encode("utf-8", "replace")
    if len(raw) <= size:
        return raw
    return raw[:size].decode("utf-8", "ignore").encode()


def name_field(name: str) -> bytes:
    """A task's name as the record keeps it (UTF-8, at most 48 bytes)."""
    return _fit(name, 48)


_names: dict[Any, bytes] = {}
"""The name field of each plain function queued that is not nested (a
nested one, made per call, is not kept: nor is what it holds; bounded:
cleared when full)."""


def task_name_field(obj: Any) -> bytes:
    """What the record calls a task given to ``task()`` (see :func:`name_field`)."""
    if type(obj) is FunctionType:
        name = _names.get(obj)
        if name is None:
            qualname = obj.__qualname__
            name = name_field(f"{obj.__module__}.{qualname}")
            if "<locals>" not in qualname:
                if len(_names) >= 4096:
                    _names.clear()
                _names[obj] = name
        return name
    if isinstance(obj, (Task, ServiceTask)) or not callable(obj) or isinstance(obj, type):
        return name_field(task_name(obj))
    return name_field(task_name(Task(obj)))


_ref_names: dict[bytes, bytes] = {}
"""The name field of each function reference read from a payload (bounded: cleared when full)."""


def _call_name_field(payload: bytes) -> tuple[bytes, bytes]:
    """The name field of a two-part call payload (or its first bytes), as
    :func:`task_name_field` makes it for the function, read from the
    payload; and the payload's prefix it was read from (the same for every
    call of the function)."""
    key = payload[: 3 + int.from_bytes(payload[1:3], "little")]
    name = _ref_names.get(key)
    if name is None:
        if len(_ref_names) >= 4096:
            _ref_names.clear()
        name = _ref_names[key] = name_field(call_name(key) or "")
    return key, name


class TaskTable:
    """The record of the last ``capacity`` tasks, and the workers' result arenas.

    Args:
        capacity: task slots (the last this many task ids are kept).
        arenas: result arenas, one per task worker.
        result_bytes: bytes for all arenas together.
        result_ttl: seconds a finished task's record and result are kept.
    """

    def __init__(
        self, capacity: int, arenas: int, result_bytes: int, result_ttl: float, fds: Sequence[int] | None = None
    ) -> None:
        self.capacity = capacity
        self.result_ttl = result_ttl
        got = iter(fds) if fds is not None else None
        slots_fd, self._map = shared_map("tasks", capacity * _SLOT * 8, next(got) if got else None)  # touched as used
        self._words = memoryview(self._map).cast("q")
        self.arena_size = max(4096, result_bytes // max(1, arenas))
        self.max_result = self.arena_size // 4
        """The largest finish record an arena keeps (larger results are not kept)."""
        arenas_fd, self._arenas = shared_map("results", self.arena_size * arenas, next(got) if got else None)
        positions_fd, positions = shared_map("positions", mmap.PAGESIZE, next(got) if got else None)
        self._positions = memoryview(positions).cast("q")  # per arena: bytes ever written
        self._last_ref = (b"\0", b"")  # taken()'s last function: the prefix of its calls (none yet), its name
        self.fds = (slots_fd, arenas_fd, positions_fd)
        """The memfds of the record (``fds``: those received from the process that made it)."""

    # -- writing ------------------------------------------------------------------

    def _write(self, task_id: int, group: int, fields: struct.Struct, *values: Any) -> None:
        words, base = self._words, (task_id % self.capacity) * _SLOT + group
        words[base] = 0
        fields.pack_into(self._map, (base + 1) * 8, *values)
        words[base] = task_id

    def queued(self, task_id: int, name: bytes) -> None:
        """In the queuing process, once ``task()`` has the id, for every task
        but those the worker records (:meth:`taken`); ``name`` as
        :func:`name_field` made it. (:meth:`_write` inlined: a hot path.)"""
        words, base = self._words, (task_id % self.capacity) * _SLOT  # _Q is 0
        words[base] = 0
        _pack_q(self._map, (base + 1) * 8, _time(), name)
        words[base] = task_id

    def taken(self, first_seq: int, payloads: Sequence[bytes], headers: Sequence[int], stamps: Sequence[int]) -> None:
        """In the worker, right after it popped a batch (``first_seq`` on,
        with the ring's push times in ns): the Q group of each task its
        queuing process left to the worker (:func:`taskmw.records.named_by_worker`)."""
        words, m, capacity, seq = self._words, self._map, self.capacity, first_seq
        ref, name = self._last_ref
        for payload, header, stamp in zip(payloads, headers, stamps, strict=True):
            if not header & _NAMED_HERE and payload[:1] == SPLIT_BYTE:  # records.named_by_worker, inlined
                if not payload.startswith(ref):  # (a batch's tasks are mostly calls of one function)
                    ref, name = _call_name_field(payload)
                base = (seq % capacity) * _SLOT  # _Q is 0; the task's id is its seq (no options)
                words[base] = 0
                _pack_q(m, (base + 1) * 8, stamp / 1e9, name)
                words[base] = seq
            seq += 1
        self._last_ref = ref, name

    def scheduled(self, task_id: int, due: float) -> None:
        """In the queuing process, for a delayed task: its due time (``time.time()``)."""
        self._write(task_id, _S, _S_FIELDS, due)

    def retriable(self, task_id: int, attempt: int, left: int) -> None:
        """In the queuing process, for a run that may be retried: which
        attempt it is and how many runs are left if it fails, so that the
        supervisor, which settles a run that timed out or was lost, does not
        record it as the task's end while the queuing process runs it again."""
        self._write(task_id, _L, _L_FIELDS, attempt, left)

    def retries_of(self, task_id: int) -> tuple[int, int]:
        """The ``(attempt, runs left)`` :meth:`retriable` wrote for ``task_id``'s
        latest run; ``(0, 0)`` for a task without retries."""
        got = self._read(task_id, _L, _L_FIELDS)
        return (0, 0) if got is None else got

    def started(self, task_id: int, worker_id: int, attempt: int) -> None:
        """In the worker, for an async task (which runs on after the worker
        takes its next one). A sync task is seen running in the worker table
        instead, at no cost (see :meth:`info`'s ``running``)."""
        self._write(task_id, _R, _R_FIELDS, worker_id, attempt, time.time())

    def rerun(self, task_id: int) -> None:
        """A retry of ``task_id`` starts: its earlier run's finish no longer stands."""
        self._words[(task_id % self.capacity) * _SLOT + _D] = 0

    def request_cancel(self, task_id: int) -> None:
        """Ask the worker that takes ``task_id`` (popped, not started) not to run it."""
        self._words[(task_id % self.capacity) * _SLOT + _C] = task_id

    def cancel_requested(self, task_id: int) -> bool:
        """In the worker, before starting ``task_id``: was it cancelled?"""
        return self._words[(task_id % self.capacity) * _SLOT + _C] == task_id

    def progress(self, task_id: int, fraction: float, message: str | None) -> None:
        """In the worker, from :func:`taskmw.progress`."""
        self._write(task_id, _P, _P_FIELDS, fraction, _fit(message or "", 64) if message is not None else b"\xff")

    def finished(
        self,
        task_id: int,
        status: int,
        attempts: int,
        error: TaskError | None,
        record: bytes | None = None,
        arena: int = _NO_ARENA,
        worker_id: int = -1,
        duration: float = 0.0,
    ) -> None:
        """Whoever finishes the task: its status, the worker that ran it for
        ``duration`` seconds, and its finish record kept in ``arena`` (the
        worker's own; each arena has one writer) when given and small enough."""
        pos = length = 0
        if record is not None and arena >= 0 and len(record) <= self.max_result:
            pos, length = self._keep(arena, record), len(record)
        else:
            arena = _NO_ARENA
        words, base = self._words, (task_id % self.capacity) * _SLOT + _D
        now = _time()
        words[base] = 0
        if error is None:  # the error fields are left as they are: read only for a finish with an error
            _pack_d_head(
                self._map, (base + 1) * 8, status, now - duration, now, attempts, worker_id, arena, pos, length
            )
        else:
            kind, message = _fit(error.type, 32), _fit(error.message, 64)
            _pack_d(self._map, (base + 1) * 8, status, now - duration, now, attempts, worker_id, arena, pos, length,
                    kind or b"?", message)  # fmt: skip
        words[base] = task_id

    def _keep(self, arena: int, data: bytes) -> int:
        """Copy ``data`` into ``arena`` (one writer each); returns its absolute position."""
        length, size, pos = len(data), self.arena_size, self._positions[arena]
        if pos % size + length > size:  # it does not fit before the end: start the next lap
            pos += size - pos % size
        start = arena * size + pos % size
        self._positions[arena] = pos + length  # first: a reader of what it overwrites sees it evicted
        self._arenas[start : start + length] = data
        return pos

    def arguments(self, task_id: int, payload: bytes, arena: int) -> None:
        """In the worker (``record_arguments``): keep the task's pickled call
        or data object in its arena (one too large is not kept)."""
        if len(payload) <= self.max_result:
            self._write(task_id, _A, _A_FIELDS, arena, self._keep(arena, payload), len(payload))

    def name_of(self, task_id: int) -> str:
        """The name ``task()`` recorded for ``task_id`` (``""``: none kept)."""
        q = self._read(task_id, _Q, _Q_FIELDS)
        return "" if q is None else _text(q[1])

    def arguments_of(self, task_id: int) -> str | None:
        """A short repr of what ``task_id`` was given, if it is still kept."""
        a = self._read(task_id, _A, _A_FIELDS)
        if a is None:
            return None
        data = self._copy(*a)
        if data is None:
            return None
        try:
            parts = decode_parts(data)
            if parts is None:
                given = load_salvaging(data)
            else:
                args, kwargs = load_salvaging(parts[1])
                given = (load_salvaging(parts[0]), args, kwargs)
        except Exception:  # noqa: BLE001 - torn by a second writer: not kept
            return None
        return _arguments_repr(given)

    def _copy(self, arena: int, pos: int, length: int) -> bytes | None:
        """The bytes kept at ``pos`` of ``arena``, unless it wrapped past them."""
        size = self.arena_size
        if self._positions[arena] > pos + size:
            return None
        start = arena * size + pos % size
        data = bytes(self._arenas[start : start + length])
        return None if self._positions[arena] > pos + size else data

    # -- reading ------------------------------------------------------------------

    def _read(self, task_id: int, group: int, fields: struct.Struct) -> tuple[Any, ...] | None:
        words, base = self._words, (task_id % self.capacity) * _SLOT + group
        for _ in range(_TRIES):
            if words[base] != task_id:
                tag = words[base]
                if tag == 0:
                    continue  # being written
                return None
            values = fields.unpack_from(self._map, (base + 1) * 8)
            if words[base] == task_id:
                return values
        return None

    def _newer(self, task_id: int) -> bool:
        """True if a later task took ``task_id``'s slot (it was evicted by count)."""
        base = (task_id % self.capacity) * _SLOT
        return any(self._words[base + g] > task_id for g in (_Q, _R, _P, _D, _C, _A, _S, _L))

    def info(
        self,
        task_id: int,
        issued: int,
        queue_start: int,
        running: tuple[int, int, float] | None = None,
        peek: Peek | None = None,
        wait: bool = False,
    ) -> TaskInfo:
        """The record of ``task_id``; ``issued`` is the next id the pool will
        give, ``queue_start`` the first id still in the queue, ``running``
        ``(worker_id, attempt, started_at)`` if a worker runs it now. ``peek``
        reads a queued task's name and time from its record when its Q group
        is the worker's to write (see the module's docstring); with ``wait``,
        a task popped since ``queue_start`` was read, or one nothing is
        recorded for yet, is given up to 0.1 s for its worker to write it.

        Raises:
            UnknownTask: the pool never issued the id, or its record was evicted.
        """
        if not isinstance(task_id, int) or isinstance(task_id, bool) or not 0 < task_id < issued:
            raise UnknownTask(task_id, "this pool never issued it")
        if task_id <= issued - 1 - self.capacity or self._newer(task_id):
            raise UnknownTask(task_id, f"its record was evicted: the pool keeps the last {self.capacity} tasks")
        q = self._read(task_id, _Q, _Q_FIELDS)
        r = self._read(task_id, _R, _R_FIELDS) if running is None else running
        d = self._read(task_id, _D, _D_FIELDS)
        if q is None and peek is not None:
            q = self._from_queue(task_id, queue_start, peek)
            if q is None and d is None and wait and (task_id >= queue_start or r is None):
                q, d = self._await_taken(task_id)
        p = self._read(task_id, _P, _P_FIELDS)
        s = self._read(task_id, _S, _S_FIELDS)
        due = s[0] if s is not None else None
        if q is None and r is None and d is None and task_id < queue_start:
            raise UnknownTask(task_id, "it is not a task id (a retry runs under a seq of its own), or it has no record")
        queued_at, name = (q[0], _text(q[1])) if q is not None else (None, "")
        if queued_at is not None and r is not None:
            queued_at = min(queued_at, r[2])  # recorded just after the push: a worker may have started it first
        worker_id, attempts, started_at = r if r is not None else (None, 1, None)
        progress = message = None
        if p is not None:
            progress = None if math.isnan(p[0]) else p[0]
            message = None if p[1].startswith(b"\xff") else _text(p[1])
        if d is None:
            state: State = "running" if r is not None else "queued"
            if r is None and due is not None and time.time() < due:
                state = "scheduled"
            return TaskInfo(task_id, state, None, name, worker_id, attempts, queued_at, started_at, None, progress,
                            message, None, self.arguments_of(task_id), due)  # fmt: skip
        code, ran_at, finished_at, done_attempts, ran_by, _, _, _, kind, text = d
        attempts = done_attempts or attempts
        if ran_by >= 0:
            worker_id, started_at = ran_by, ran_at
            if queued_at is not None:
                queued_at = min(queued_at, ran_at)
        if time.time() - finished_at > self.result_ttl:
            raise UnknownTask(task_id, f"its record was evicted: finished more than result_ttl={self.result_ttl}s ago")
        error = TaskError(_text(kind), _text(text), "") if code != _OK and kind.strip(b"\0") else None
        if error is not None:
            kept = self._kept(task_id, d)
            if kept is not None and kept.error is not None:
                error = kept.error
        return TaskInfo(task_id, "done", STATUSES[code], name, worker_id, attempts, queued_at, started_at,
                        finished_at, progress, message, error, self.arguments_of(task_id), due)  # fmt: skip

    def _from_queue(self, task_id: int, queue_start: int, peek: Peek) -> tuple[Any, ...] | None:
        """The Q fields of ``task_id`` read from its queued record (None: not queued now)."""
        if task_id < queue_start:
            return None
        got = peek(task_id, 1)
        if not got or got[0].seq != task_id:
            return None  # popped since queue_start was read
        p = got[0]
        if records.named_by_worker(p.aux, p.head):
            return p.stamp_ns / 1e9, _call_name_field(p.head)[1]
        # Its queuing process writes the group, just after the push: it may have by now.
        return self._read(task_id, _Q, _Q_FIELDS) or (p.stamp_ns / 1e9, b"")

    def _await_taken(self, task_id: int) -> tuple[tuple[Any, ...] | None, tuple[Any, ...] | None]:
        """The Q and D groups of a task just popped, once its worker has
        written the Q group (:meth:`taken`) or it has finished, or after
        :data:`_POPPED_WAIT` seconds (a worker killed at that instant, or an
        id that is no task's)."""
        deadline = time.monotonic() + _POPPED_WAIT
        while True:
            q, d = self._read(task_id, _Q, _Q_FIELDS), self._read(task_id, _D, _D_FIELDS)
            if q is not None or d is not None or time.monotonic() >= deadline:
                return q, d
            time.sleep(_POPPED_POLL)

    def done(self, task_id: int) -> bool:
        """True if ``task_id``'s record says it has finished."""
        return self._read(task_id, _D, _D_FIELDS) is not None

    def finish_record(self, task_id: int) -> FinishRecord | None:
        """The kept finish record of a finished task (None: not kept, or evicted)."""
        d = self._read(task_id, _D, _D_FIELDS)
        return None if d is None else self._kept(task_id, d)

    def _kept(self, task_id: int, d: tuple[Any, ...]) -> FinishRecord | None:
        arena, pos, length = d[5], d[6], d[7]
        if arena < 0:
            return None
        record = self._copy(arena, pos, length)
        if record is None:
            return None  # the arena wrapped past it
        try:
            finish = FinishRecord.decode(record)
        except Exception:  # noqa: BLE001 - torn by a second writer (an orphaned worker of the same row)
            return None
        return finish if finish.task_id == task_id else None

    def scan(
        self,
        ids: Iterable[int],
        issued: int,
        queue_start: int,
        limit: int,
        running: dict[int, tuple[int, int, float]],
        peek: Peek | None = None,
    ) -> list[TaskInfo]:
        """The readable records of ``ids``, up to ``limit`` of them; with
        ``peek`` (for ``ids`` in increasing order: the queued ones), queued
        records are read a run of at least ``limit`` at a time, so a listing
        costs one walk of the queue, not one per task. Nothing is waited for."""
        out: list[TaskInfo] = []
        runs = None if peek is None else _PeekRuns(peek, max(limit, 64))
        for task_id in ids:
            if len(out) >= limit:
                break
            try:
                out.append(self.info(task_id, issued, queue_start, running.get(task_id), runs))
            except UnknownTask:
                continue
        return out


class _PeekRuns:
    """A :data:`Peek` that reads the queue ``size`` records at a time and
    answers from what it read (for ids asked for in increasing order)."""

    __slots__ = ("peek", "size", "got", "low", "high")

    def __init__(self, peek: Peek, size: int) -> None:
        self.peek, self.size = peek, size
        self.got: dict[int, Peeked] = {}
        self.low = self.high = 0  # the seqs [low, high) that got answers for

    def __call__(self, first_seq: int, n: int) -> Sequence[Peeked]:
        if not self.low <= first_seq < self.high:
            run = self.peek(first_seq, max(n, self.size))
            self.got = {p.seq: p for p in run}
            self.low, self.high = first_seq, (run[-1].seq + 1 if run else first_seq + 1)
        p = self.got.get(first_seq)
        return () if p is None else (p,)
