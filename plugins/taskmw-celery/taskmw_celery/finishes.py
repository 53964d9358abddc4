"""Finishes coming back from Celery's Redis result backend.

Every Celery task id a process sends starts with that process's own prefix
(``taskmw-<random>-``), so one pattern subscription (``PSUBSCRIBE``) to the
result keys under that prefix brings it exactly its own results: the Redis
backend publishes each result on a channel named like its key. The
subscription is confirmed before the first task is sent, so no result can
beat it. Pub/sub is at most once (a dropped connection loses what was
published meanwhile), so results of tasks pending for longer than
:data:`SWEEP` seconds are also looked up by key every :data:`SWEEP` seconds.
A result delivered is kept for ``result_ttl`` (for ``server.result()`` from
any process) and then expires; a second result for the same id (a task that
ran twice) finds no pending entry and is dropped. Celery's own failures
(below) are written into the task's record here, since no worker did.

What Celery stores becomes a finish record (:mod:`taskmw.records`):
``SUCCESS`` carries the record the taskmw task made itself (statuses ``ok``
and ``error``, exactly as in the local pool); ``FAILURE`` is Celery's own:
the pool process died (``lost``), the hard time limit killed it
(``timeout``), or something else failed around the task (``error``);
``REVOKED`` is ``cancelled``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery import states
from redis.exceptions import RedisError

from taskmw import records
from taskmw.events import TaskError
from taskmw.pipeline import error_of
from taskmw.records import CANCELLED, ERROR, LOST, TIMEOUT, FinishRecord
from taskmw.retries import RETRIED

if TYPE_CHECKING:
    from taskmw_celery.taskrecords import TaskRecords

log = logging.getLogger(__name__)

POLL = 0.25
"""Seconds the listener waits for a message before checking whether to stop or sweep."""
SWEEP = 2.0
"""Seconds between look-ups of pending results (and how long a task is pending before one)."""
BATCH = 256
"""Most finishes delivered at once."""

Pending = dict[int, tuple[int, float, int, int]]
"""Seq -> (its finish's header, when it was sent, its task id, runs left after
it): the runs of this process's tasks with no finish yet."""
Deliver = Callable[[list[bytes], list[int]], None]


def finish_record(task_id: int, meta: dict[str, Any]) -> bytes | None:
    """The finish record of a decoded Celery result, or None if the state is
    not final (``STARTED``, ``RETRY``)."""
    status, result = meta.get("status"), meta.get("result")
    if status == states.SUCCESS:
        if isinstance(result, bytes):
            return result
        error = TaskError("TypeError", f"the Celery task returned {type(result).__name__}, not a taskmw finish", "")
        return records.lost(task_id, error, ERROR)
    if status == states.REVOKED:
        error = TaskError("Revoked", "the task was revoked on Celery before it finished", "")
        return records.lost(task_id, error, CANCELLED)
    if status != states.FAILURE:
        return None
    kind = type(result).__name__
    if kind == "WorkerLostError":
        error = TaskError("WorkerLost", f"the Celery pool process running the task died: {result}", "")
        return records.lost(task_id, error, LOST)
    error = error_of(result if isinstance(result, BaseException) else RuntimeError(repr(result)))
    error = error._replace(traceback=meta.get("traceback") or error.traceback)
    return records.lost(task_id, error, TIMEOUT if kind == "TimeLimitExceeded" else ERROR)


class FinishListener:
    """One process's reader of its finishes: a pattern subscription on the
    result backend's Redis, read by a daemon thread that passes batches of
    finish records (and their ``WANT`` bits) to ``deliver``.

    Args:
        backend: the app's Redis result backend.
        prefix: the Celery task id prefix of this process's tasks.
        pending: this process's tasks without a finish (shared with the sender).
        deliver: called on the listener's thread with records and aux words.
        records: the record of tasks (delivered results expire after its
            ``ttl``; Celery's own failures are written into it).
    """

    def __init__(self, backend: Any, prefix: str, pending: Pending, deliver: Deliver, records: TaskRecords) -> None:
        self.backend = backend
        self.client = backend.client
        self.key_prefix: bytes = backend.get_key_for_task(prefix)
        self.prefix = prefix
        self.pending = pending
        self.deliver = deliver
        self.records = records
        self.stopping = threading.Event()
        self.pubsub = self.client.pubsub()
        self.pubsub.psubscribe(self.key_prefix + b"*")
        self._confirm()
        self.thread = threading.Thread(target=self._run, name=f"taskmw-celery-finishes-{prefix}", daemon=True)
        self.thread.start()

    def _confirm(self, timeout: float = 10.0) -> None:
        """Wait for Redis to confirm the subscription (no result can beat it then)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.pubsub.get_message(timeout=POLL)
            if msg is not None and msg["type"] == "psubscribe":
                return
        self.pubsub.close()
        raise TimeoutError(f"Redis did not confirm the subscription to this process's finishes within {timeout}s")

    def stop(self) -> None:
        """Stop reading (within :data:`POLL` seconds) and close the subscription."""
        self.stopping.set()
        if self.thread is not threading.current_thread():
            self.thread.join(5.0)

    def _run(self) -> None:
        next_sweep = time.monotonic() + SWEEP
        try:
            while not self.stopping.is_set():
                try:
                    got = self._receive()
                    if got:
                        self._handle(got)
                    if time.monotonic() >= next_sweep:
                        self._sweep()
                        next_sweep = time.monotonic() + SWEEP
                except RedisError:
                    log.warning("reading finishes from Redis failed; retrying", exc_info=True)
                    next_sweep = 0.0
                    self.stopping.wait(POLL)
                except Exception:
                    log.exception("delivering finishes failed")
        finally:
            try:
                self.pubsub.close()
            except RedisError:
                pass

    def _receive(self) -> list[tuple[bytes, bytes]]:
        """Up to :data:`BATCH` results published since the last call (waits up to :data:`POLL` s for one)."""
        got = []
        msg = self.pubsub.get_message(timeout=POLL)
        while msg is not None:
            if msg["type"] == "pmessage":
                got.append((msg["channel"], msg["data"]))
                if len(got) >= BATCH:
                    break
            msg = self.pubsub.get_message(timeout=0.0)
        return got

    def _sweep(self) -> None:
        """Look up the stored results of tasks pending for longer than :data:`SWEEP` seconds."""
        before = time.monotonic() - SWEEP
        ids = [seq for seq, (_want, sent, _id, _left) in self.pending.copy().items() if sent < before]
        for i in range(0, len(ids), 1000):
            keys = [self.key_prefix + str(task_id).encode() for task_id in ids[i : i + 1000]]
            found = [(k, v) for k, v in zip(keys, self.client.mget(keys), strict=True) if v is not None]
            if found:
                log.info("found %d finishes by looking them up (their publication was missed)", len(found))
                self._handle(found)

    def _handle(self, got: list[tuple[bytes, bytes]]) -> None:
        """Turn stored results into finish records, deliver those still
        pending, and have the results expire after ``result_ttl``."""
        finishes: list[bytes] = []
        headers: list[int] = []
        keys: list[bytes] = []
        outcomes: list[tuple[int, int, TaskError | None]] = []
        start = len(self.key_prefix)
        for key, data in got:
            try:
                seq = int(key[start:])
            except ValueError:
                log.warning("ignored a result under an unexpected key %r", key)
                continue
            ours = False  # a finish made here, not by the taskmw task: the worker recorded nothing
            try:
                meta = self.backend.decode_result(data)
                record = finish_record(seq, meta)
                ours = meta.get("status") != states.SUCCESS or not isinstance(meta.get("result"), bytes)
            except Exception as exc:
                log.exception("the result of task %d could not be read", seq)
                error = TaskError("ResultUnreadable", f"its Celery result could not be read: {exc!r}", "")
                record, ours = records.lost(seq, error, ERROR), True
            if record is None:
                continue
            keys.append(key)
            entry = self.pending.pop(seq, None)
            if entry is None:
                log.debug("dropped a second finish of task %d (it ran twice)", seq)
                continue
            finishes.append(record)
            headers.append(entry[0])
            if ours:
                finish = FinishRecord.decode(record)  # no value: Celery's failures carry none
                if not (entry[3] and finish.status in RETRIED):
                    outcomes.append((entry[2], finish.status, finish.error))
        if keys:  # before the delivery: a hook (or a waiter) that looks finds the result's expiry and record set
            with self.client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.pexpire(key, self.records.ttl_ms)
                self.records.finished(outcomes, client=pipe)
                pipe.execute()
        if finishes:
            self.deliver(finishes, headers)
