"""The Celery backend's record of tasks: what ``server.status()``,
``result()``, ``cancel()`` and ``tasks()`` read, from any process using the
same Celery app.

One Redis hash per taskmw task id, ``taskmw:task:<id>``, in the result
backend's Redis (next to the ``taskmw:ids`` counter):

===========  ===================================  ================================
field        written by                           what
===========  ===================================  ================================
celery       the queuing process (each run)       the Celery task id of the last run
name         the queuing process                  what it runs
queued_at    the queuing process                  ``time.time()``
ttl          the queuing process                  its ``result_ttl``, milliseconds
left/        the queuing process (each run)       runs left after this one, and
attempt                                           which run this is
worker/      the Celery worker, at start          its pool process index, ``time.time()``
started_at
progress/    the Celery worker, ``progress()``    the last report (no ``message``: None)
message
finished_at  the worker after storing the         the run is final and its result
status/      result (or the queuing process       is stored; its status code and
error_type/  for Celery's own failures)           error (type, message), read
error                                             without unpickling the result
cancel       ``cancel()``                         ``1``: do not start it
===========  ===================================  ================================

The finish itself is not copied: it is Celery's stored result of the last
run (``celery-task-meta-<celery id>``), read with the hash in one script; a
task is done once that result is stored (its value is unpickled only by
``result()``, and by ``status()`` in the instant before the worker wrote
the status, or for Celery's own failures, which carry no value).
The queuing process sets that result to expire ``result_ttl`` after it
delivered it (instead of deleting it).

Bounds: a record expires ``result_ttl`` seconds after it was queued, after
its run's time limit plus ``result_ttl`` once started, and ``result_ttl``
after it finished; sending task ``n`` deletes the record of task
``n - task_records`` (so at most ``task_records`` records are kept). Every
write but the queuing one is made only if the record still exists, so an
expired or evicted record is never revived. Each write is one Lua script
(one round trip, atomic).
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Sequence
from typing import Any

from celery import states

from taskmw.errors import UnknownTask
from taskmw.events import STATUSES, TaskError
from taskmw.info import State, TaskInfo
from taskmw.records import OK, FinishRecord
from taskmw.retries import RETRIED
from taskmw_celery.finishes import finish_record
from taskmw_celery.settings import IDS_KEY

RECORD_KEY = "taskmw:task:"
"""The prefix of each task's record (a hash), followed by its id."""

# KEYS[1] the id counter. ARGV: record prefix, Celery id prefix, task id (0: this
# run's seq), name, now, ttl ms, runs left, attempt, records kept, a delayed task's due time
# ('' : none) and the ms its record first lives (the ttl, plus the delay).
_QUEUE = """
local seq = redis.call('INCR', KEYS[1])
local id = tonumber(ARGV[3])
if id == 0 then id = seq end
local key = ARGV[1] .. string.format('%d', id)
local celery = ARGV[2] .. string.format('%d', seq)
if id == seq then
  redis.call('HSET', key, 'celery', celery, 'name', ARGV[4], 'queued_at', ARGV[5], 'ttl', ARGV[6],
             'left', ARGV[7], 'attempt', ARGV[8])
  if ARGV[10] ~= '' then redis.call('HSET', key, 'due', ARGV[10]) end
  redis.call('PEXPIRE', key, ARGV[11])
  local old = seq - tonumber(ARGV[9])
  if old > 0 then redis.call('DEL', ARGV[1] .. string.format('%d', old)) end
elseif redis.call('EXISTS', key) == 1 then
  redis.call('HSET', key, 'celery', celery, 'left', ARGV[7], 'attempt', ARGV[8])
  redis.call('HDEL', key, 'finished_at')
  redis.call('PEXPIRE', key, ARGV[6])
end
return seq
"""

# KEYS[1] the record. ARGV: worker id, now, attempt, the run's time limit ms.
# Returns 0: no record (run, record nothing), 1: started, 2: cancelled (do not run).
_START = """
local h = redis.call('HMGET', KEYS[1], 'ttl', 'cancel')
if not h[1] then return 0 end
if h[2] then return 2 end
redis.call('HSET', KEYS[1], 'worker', ARGV[1], 'started_at', ARGV[2], 'attempt', ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(h[1]) + tonumber(ARGV[4]))
return 1
"""

# KEYS[1] the record. ARGV: fraction, has a message (1/0), message.
_PROGRESS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'progress', ARGV[1])
if ARGV[2] == '1' then redis.call('HSET', KEYS[1], 'message', ARGV[3]) else redis.call('HDEL', KEYS[1], 'message') end
return 1
"""

# KEYS[1] the record. ARGV: now, status, error type, error message (empty: none).
# The run is final and its result stored: its outcome (once), and its ttl starts.
_FINISHED = """
local ttl = redis.call('HGET', KEYS[1], 'ttl')
if not ttl then return 0 end
if redis.call('HSETNX', KEYS[1], 'finished_at', ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], 'status', ARGV[2], 'error_type', ARGV[3], 'error', ARGV[4])
end
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
"""

# KEYS[1] the record. ARGV: terminate (1/0). Returns {0} no record, {1} finished,
# {2, celery id} not started (now marked cancelled), {3, celery id} started (marked
# cancelled only with terminate, so that a re-delivery does not run it again).
_CANCEL = """
local h = redis.call('HMGET', KEYS[1], 'ttl', 'finished_at', 'started_at', 'celery')
if not h[1] then return {0} end
if h[2] then return {1} end
if not h[3] then
  redis.call('HSET', KEYS[1], 'cancel', '1')
  return {2, h[4]}
end
if ARGV[1] == '1' then redis.call('HSET', KEYS[1], 'cancel', '1') end
return {3, h[4]}
"""

# ARGV: record prefix, result key prefix, ids. Returns the counter, then per id
# its record (HGETALL) and the stored result of its last run ('' if none).
_READ = """
local out = {redis.call('GET', 'taskmw:ids') or '0'}
for i = 3, #ARGV do
  local h = redis.call('HGETALL', ARGV[1] .. ARGV[i])
  local result = false
  for j = 1, #h, 2 do
    if h[j] == 'celery' then result = redis.call('GET', ARGV[2] .. h[j + 1]) end
  end
  out[#out + 1] = h
  out[#out + 1] = result or ''
end
return out
"""
assert IDS_KEY == "taskmw:ids"  # named in _READ

CANCEL_GONE, CANCEL_FINISHED, CANCEL_NOT_STARTED, CANCEL_STARTED = 0, 1, 2, 3
"""What :meth:`TaskRecords.cancel` found: no record, finished, not started (now cancelled), started."""
START_NO_RECORD, START_OK, START_CANCELLED = 0, 1, 2
"""What :meth:`TaskRecords.start` found: no record (run, record nothing), started, cancelled (do not run)."""

SCAN = 1000
"""Ids :meth:`TaskRecords.tasks` looks back through (newest first)."""
_BATCH = 100


class TaskRecords:
    """The records of one Celery app's tasks (its result backend's Redis).

    Args:
        backend: the app's Redis result backend.
        ttl: ``result_ttl`` of this process, seconds (what it queues gets).
        keep: ``task_records`` of this process (sending task ``n`` deletes
            the record of ``n - keep``).
    """

    def __init__(self, backend: Any, ttl: float, keep: int) -> None:
        self.backend = backend
        self.client = backend.client
        self.ttl = ttl
        self.ttl_ms = max(1, int(ttl * 1000))
        self.keep = keep
        self.result_prefix: bytes = backend.get_key_for_task("x")[:-1]
        register = self.client.register_script
        self._queue, self._start, self._progress = register(_QUEUE), register(_START), register(_PROGRESS)
        self._finished, self._cancel, self._read = register(_FINISHED), register(_CANCEL), register(_READ)

    @staticmethod
    def key(task_id: int) -> str:
        return f"{RECORD_KEY}{task_id}"

    # -- writing --------------------------------------------------------------------

    def queue(self, prefix: str, task_id: int, name: bytes | None, left: int, attempt: int, due: float = 0.0) -> int:
        """Take the next id from the counter and record the run under it
        (a first run, ``task_id`` 0) or under ``task_id`` (a retry); returns
        the run's seq (its Celery id is ``prefix`` + seq). A delayed task's
        ``due`` time is recorded (it is ``scheduled`` until then), and its
        record lives ``result_ttl`` past it."""
        now = time.time()
        lives = self.ttl_ms + int(max(0.0, due - now) * 1000)
        args = [RECORD_KEY, prefix, task_id, name or b"", repr(now), self.ttl_ms, left, attempt, self.keep,
                repr(due) if due else "", lives]  # fmt: skip
        return int(self._queue(keys=[IDS_KEY], args=args))

    def start(self, task_id: int, worker_id: int, attempt: int, limit: float | None) -> int:
        """In the Celery worker, before the task runs; returns a ``START_*`` code."""
        limit_ms = int((limit or 0) * 1000)
        return int(self._start(keys=[self.key(task_id)], args=[worker_id, repr(time.time()), attempt, limit_ms]))

    def progress(self, task_id: int, fraction: float, message: str | None) -> None:
        """In the Celery worker: :func:`taskmw.progress`."""
        has = "0" if message is None else "1"
        self._progress(keys=[self.key(task_id)], args=[repr(fraction), has, message or ""])

    def finished(self, finishes: Sequence[tuple[int, int, TaskError | None]], client: Any = None) -> None:
        """The last runs of these ``(task id, status, error)`` are final and
        their results stored: record the outcome (once), and their records
        expire their ``ttl`` from now. ``client``: a pipeline to add it to."""
        now = repr(time.time())
        for task_id, status, error in finishes:
            kind, message = (error.type[:200], error.message[:1000]) if error is not None else ("", "")
            self._finished(keys=[self.key(task_id)], args=[now, status, kind, message], client=client)

    def cancel(self, task_id: int, terminate: bool) -> tuple[int, str | None]:
        """Mark ``task_id`` cancelled if it did not start (or, with
        ``terminate``, did not finish); returns a ``CANCEL_*`` code and the
        Celery id of its last run (None with no record or finished)."""
        got = self._cancel(keys=[self.key(task_id)], args=["1" if terminate else "0"])
        return int(got[0]), (got[1].decode() if len(got) > 1 else None)

    # -- reading --------------------------------------------------------------------

    def read(self, ids: Sequence[int]) -> tuple[int, list[tuple[dict[bytes, bytes], bytes]]]:
        """The last id issued, and each id's record and stored result."""
        got = self._read(keys=[], args=[RECORD_KEY, self.result_prefix, *ids])
        rows = []
        for i in range(1, len(got), 2):
            flat = got[i]
            rows.append((dict(zip(flat[::2], flat[1::2], strict=True)), got[i + 1]))
        return int(got[0]), rows

    def status(self, task_id: int) -> TaskInfo:
        """The record of ``task_id``.

        Raises:
            UnknownTask: never issued, expired or evicted.
        """
        return self.info(task_id, *self._read_one(task_id))

    def _read_one(self, task_id: int) -> tuple[int, dict[bytes, bytes], bytes]:
        if not isinstance(task_id, int) or isinstance(task_id, bool) or task_id <= 0:
            raise UnknownTask(task_id, "this backend never issued it (ids are positive ints)")
        issued, rows = self.read([task_id])
        return issued, *rows[0]

    def info(self, task_id: int, issued: int, record: dict[bytes, bytes], stored: bytes) -> TaskInfo:
        """One record as :class:`~taskmw.TaskInfo` (see :meth:`status`)."""
        if task_id > issued:
            raise UnknownTask(task_id, f"this backend never issued it (the last id issued is {issued})")
        if not record:
            if task_id <= issued - self.keep:
                raise UnknownTask(task_id, f"its record was evicted: the last task_records={self.keep} tasks are kept")
            raise UnknownTask(
                task_id,
                f"it has no record: it expired (kept result_ttl={self.ttl}s after it was queued or finished) "
                "or it is not a task id (a retry runs under an id of its own)",
            )
        get = record.get
        name = get(b"name", b"").decode("utf-8", "replace")
        queued_at, started_at = _float(get(b"queued_at")), _float(get(b"started_at"))
        due = _float(get(b"due"))
        worker = get(b"worker")
        worker_id = int(worker) if worker is not None else None
        attempts = int(get(b"attempt", b"1"))
        fraction = _float(get(b"progress"))
        message = get(b"message")
        text = message.decode("utf-8", "replace") if message is not None else None
        left = int(get(b"left", b"0"))
        done = self._done(task_id, record, stored)
        if done is None or (left and done[0] in RETRIED):  # not done, or failed and about to run again
            if not stored and b"finished_at" in record:
                raise UnknownTask(
                    task_id, "its result expired (Celery's result_expires, or result_ttl, ran out before the record's)"
                )
            state: State = "running" if started_at is not None else "queued"
            if state == "queued" and due is not None and time.time() < due:
                state = "scheduled"
            return TaskInfo(task_id, state, None, name, worker_id, attempts, queued_at, started_at, None, fraction,
                            text, None, scheduled_for=due)  # fmt: skip
        status, error, finished_at = done
        return TaskInfo(task_id, "done", STATUSES[status], name, worker_id, attempts, queued_at, started_at,
                        finished_at, fraction, text, error, scheduled_for=due)  # fmt: skip

    def _done(
        self, task_id: int, record: dict[bytes, bytes], stored: bytes
    ) -> tuple[int, TaskError | None, float | None] | None:
        """``(status, error, finished_at)`` of the last run if its result is
        stored and final, else None. The value is not unpickled when the
        record has the status (a failure's full error, with its traceback,
        is read from the stored result: it carries no value)."""
        if not stored:
            return None
        meta = self.backend.decode_result(stored)
        if meta.get("status") not in states.READY_STATES:
            return None
        finished_at = _float(record.get(b"finished_at")) or _timestamp(meta.get("date_done"))
        code = record.get(b"status")
        if code is not None and int(code) == OK:
            return OK, None, finished_at
        try:
            finish = self.finish_of(task_id, record, meta)
        except Exception:  # a value this process cannot unpickle
            if code is None:
                return None  # the worker writes the status in a moment
            kind, message = record.get(b"error_type", b""), record.get(b"error", b"")
            error = TaskError(kind.decode("utf-8", "replace"), message.decode("utf-8", "replace"), "")
            return int(code), error if kind else None, finished_at
        return finish.status, finish.error, finished_at

    def finish_of(self, task_id: int, record: dict[bytes, bytes], meta: dict[str, Any]) -> FinishRecord:
        """The finish record in a decoded Celery result (raises what unpickling raises)."""
        celery_id = record.get(b"celery", b"").decode()
        tail = celery_id.rpartition("-")[2]
        raw = finish_record(int(tail) if tail.isdigit() else task_id, meta)
        assert raw is not None, "not a final state"
        return FinishRecord.decode(raw)

    def outcome(self, task_id: int) -> FinishRecord | None:
        """The finish record of a done task (None: not done, or not kept).

        Raises:
            UnknownTask: never issued, expired or evicted.
        """
        issued, record, stored = self._read_one(task_id)
        if self.info(task_id, issued, record, stored).state != "done":
            return None
        return self.finish_of(task_id, record, self.backend.decode_result(stored))

    def tasks(self, limit: int) -> dict[str, list[TaskInfo]]:
        """The records of the last :data:`SCAN` ids: scheduled soonest due
        first, queued and running oldest first, done newest first."""
        out: dict[str, list[TaskInfo]] = {"scheduled": [], "queued": [], "running": [], "done": []}
        issued = int(self.client.get(IDS_KEY) or 0)
        low = max(0, issued - SCAN)
        for top in range(issued, low, -_BATCH):
            ids = list(range(top, max(low, top - _BATCH), -1))
            issued_now, rows = self.read(ids)
            for task_id, (record, stored) in zip(ids, rows, strict=True):
                if not record:
                    continue
                try:
                    info = self.info(task_id, issued_now, record, stored)
                except Exception:  # expired meanwhile, or an unreadable result: not listed
                    continue
                found = out[info.state]
                if len(found) < limit:
                    found.append(info)
            if all(len(v) >= limit for v in out.values()):
                break
        out["queued"].reverse()
        out["running"].reverse()
        out["scheduled"].sort(key=lambda i: i.scheduled_for or 0.0)
        return out


def _float(raw: bytes | None) -> float | None:
    return float(raw) if raw is not None else None


def _timestamp(date_done: Any) -> float | None:
    """``time.time()`` of Celery's ``date_done`` (an ISO string, UTC when naive)."""
    if isinstance(date_done, datetime.datetime):
        when = date_done
    elif isinstance(date_done, str):
        try:
            when = datetime.datetime.fromisoformat(date_done)
        except ValueError:
            return None
    else:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()
