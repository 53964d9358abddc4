"""Retries: the queuing process keeps what it needs to queue a failed task
again, and queues it after a doubling backoff (``retries``, ``retry_backoff``).

A retriable task is registered by the seq each run gets; its finish is
matched back to the :class:`Retry` by that seq. While a retriable task is
being queued, a finish that comes for an unknown seq waits for the
registration, so a quick finish cannot overtake it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from taskmw import records
from taskmw.interfaces import Registered
from taskmw.records import ERROR, LOST, TIMEOUT, Options

log = logging.getLogger(__name__)

REGISTER_WAIT = 1.0
"""Seconds a finish for an unknown seq waits for a retriable task's registration."""
RETRIED = frozenset({ERROR, LOST, TIMEOUT})
"""The statuses after which a task with retries left runs again."""

Send = Callable[[bytes, int, Registered | None, bytes | None], int]
Failed = Callable[["Retry", BaseException], None]


class Retry:
    """What a queuing process keeps to queue a failed task again."""

    __slots__ = ("payload", "header", "timeout", "left", "attempt", "task_id", "name", "due", "backoff")

    def __init__(
        self,
        payload: bytes,
        header: int,
        timeout: float | None,
        left: int,
        name: bytes | None,
        due: float = 0.0,
        backoff: float | None = None,
    ) -> None:
        self.payload = payload  # without the options header
        self.header = header
        self.name = name  # for the pool's record of its first run
        self.timeout = timeout
        self.due = due  # a delayed task's first run: when it is due
        self.backoff = backoff  # the task's own retry_backoff (None: the pool's)
        self.left = left
        self.attempt = 1
        self.task_id = 0  # the seq of its first run, once queued


class Retries:
    """One process's retriable tasks in flight.

    Args:
        send: the transport's ``send``.
        backoff: seconds before the first retry, doubling after each.
        inline: retry at once, on this thread (a transport that runs tasks inline).
    """

    def __init__(self, send: Send, backoff: float, inline: bool) -> None:
        self.send = send
        self.backoff = backoff
        self.inline = inline
        self.failed: Failed | None = None
        """Called when a retry could not be queued (the task then finishes ``error``)."""
        self.lock = threading.Lock()
        self.by_seq: dict[int, Retry] = {}
        self.registering = 0

    def queue(self, retry: Retry) -> int:
        """Queue (again) a task that may be retried; returns the seq of this run."""

        def registered(seq: int) -> None:
            retry.task_id = retry.task_id or seq
            self.by_seq[seq] = retry

        with self.lock:
            self.registering += 1
        try:
            due = retry.due if retry.attempt == 1 else 0.0
            options = Options(retry.timeout, retry.attempt, retry.task_id, retry.left, due)
            record, header = records.encode_submit(retry.payload, retry.header, options)
            return self.send(record, header, registered, retry.name if retry.attempt == 1 else None)
        finally:
            with self.lock:
                self.registering -= 1

    def take(self, seq: int, wait: bool = True) -> Retry | None:
        """The retry record of ``seq`` (None: it has none). A finish that
        comes while a retriable task is being queued waits for that (up to
        :data:`REGISTER_WAIT` seconds), unless ``wait`` is false (on an
        event loop, which must not sleep: the delivery sets such a finish
        aside and tries again)."""
        retry = self.by_seq.pop(seq, None)
        if retry is None and wait and self.registering:
            deadline = time.monotonic() + REGISTER_WAIT
            while retry is None and self.registering and time.monotonic() < deadline:
                time.sleep(0.0005)
                retry = self.by_seq.pop(seq, None)
        return retry

    def again(self, retry: Retry, status: int) -> bool:
        """Queue ``retry`` again if ``status`` calls for it and it has runs
        left; True if it will run again (its finish is not delivered)."""
        if status not in RETRIED or retry.left <= 0:
            return False
        delay = (self.backoff if retry.backoff is None else retry.backoff) * 2 ** (retry.attempt - 1)
        retry.attempt += 1
        retry.left -= 1
        if self.inline:
            self._requeue(retry)
        else:
            timer = threading.Timer(delay, self._requeue, (retry,))
            timer.daemon = True
            timer.start()
        return True

    def _requeue(self, retry: Retry) -> None:
        try:
            self.queue(retry)
        except Exception as exc:
            log.warning("task %d could not be queued again: %s", retry.task_id, exc)
            if self.failed is not None:
                self.failed(retry, exc)
