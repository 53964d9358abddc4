"""Where a task is finished: its finish record becomes a
:class:`~taskmw.TaskFinishEvent` for its waiter and the ``on_finish`` hooks,
exactly once, in the process that queued it.

Every backend hands this process's finish records to :meth:`Delivery.deliver`
(the local pool from its channel reader, a thread or the event loop, or
from a thread waiting in ``taskwait`` that reads the channel itself; Celery
from its listener thread; the eager backend inline). Here a record is
decoded, dropped if it belongs to an earlier owner of the channel or is a
second finish of the same seq (a worker that died after sending it), passed
to :mod:`taskmw.retries` if the task may run again, and else handed over.
A record whose return value cannot be unpickled here finishes ``error``
(:func:`taskmw.records.salvage_finish`); nothing a waiter or a hook raises
stops the delivery; a failed task nobody waited for is logged; and
:meth:`Delivery.drain` is how ``close()`` waits for every finish.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

import pluggy

from taskmw import records
from taskmw.events import STATUSES, TaskError, TaskFinishEvent
from taskmw.plugins import Impl, implementations
from taskmw.retries import REGISTER_WAIT, Retries, Retry

log = logging.getLogger(__name__)
tasks_log = logging.getLogger("taskmw.tasks")
"""Where a failed task nobody waited for is logged (the logger taskmw-logging writes to by default)."""
LOGS_FINISHES = "taskmw_logs_finishes"
"""A plugin with this attribute true logs every finish itself: the built-in line is skipped."""

_RECENT = 1 << 16  # finished seqs remembered to drop a duplicate finish
_PARK_DELAY = 0.0005  # seconds before a parked finish is tried again (see Delivery._park)
STALL = 5.0
"""Seconds :meth:`Delivery.drain` waits for the next finish to be delivered
once no more can be produced (a hook that hangs)."""
_new_finish = tuple.__new__  # builds a TaskFinishEvent without NamedTuple's slower __new__

Waiter = Callable[[TaskFinishEvent], None]


def _salvage(record: bytes) -> records.FinishFields | None:
    """The finish in a record plain unpickling failed on (its return value
    cannot be rebuilt here: it becomes an ``error``); None, logged, if the
    record itself is unreadable."""
    try:
        return records.salvage_finish(record)
    except Exception:
        log.exception("an unreadable finish record was dropped")
        return None


class Delivery:
    """One process's tasks in flight: waiters, counts, recent seqs, retries."""

    def __init__(self, hook: pluggy.HookRelay, retries: Retries, name_of: Callable[[int], str]) -> None:
        self.hook = hook
        self.retries = retries
        self.name_of = name_of
        """What the pool's record calls a task: the name of a finish that has
        none (``lost``, ``cancelled``: no worker read the task)."""
        retries.failed = self.retry_failed
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)
        self.waiters: dict[int, Waiter | None] = {}  # None: abandoned, drop its finish
        self.early: dict[int, TaskFinishEvent] = {}  # waited-for finishes that beat their waiter
        self.sent = 0  # tasks queued by this process
        self.done = 0  # finishes delivered to it
        self.delayed = 0  # of the tasks queued, those queued with delay=/eta=
        self.delayed_ended = 0  # of those, the ones whose delayed run has finished
        self.recent: OrderedDict[int, None] = OrderedDict()  # seqs finished lately, oldest first
        self.handed = 0  # finishes handed over so far: drain() watches it move
        self.busy = 0  # deliver() calls under way
        self._busy_lock = threading.Lock()
        self.shut = False  # closed: nothing more is handed over
        self.parked: dict[int, float] = {}  # seq -> deadline of a finish waiting for its retry's registration

    # -- waiters ------------------------------------------------------------------

    def expect(self, task_id: int, deliver: Waiter) -> TaskFinishEvent | None:
        """With ``lock`` held: have the finish of ``task_id`` passed to
        ``deliver``, or return it if it came already."""
        early = self.early.pop(task_id, None)
        if early is None:
            self.waiters[task_id] = deliver
        return early

    def abandon(self, task_id: int) -> None:
        """With ``lock`` held: nobody waits for ``task_id`` any more (its
        finish, if it has not come yet, goes to the hooks only)."""
        if task_id in self.waiters:
            self.waiters[task_id] = None

    # -- delivering ------------------------------------------------------------------

    def deliver(self, finishes: Sequence[bytes], headers: Sequence[int], floor: int = 0) -> None:
        """Deliver finish records (see :data:`taskmw.interfaces.Deliver`)."""
        with self._busy_lock:  # backends that deliver inline do it on many threads
            self.busy += 1
        try:
            self._deliver(finishes, headers, floor)
        finally:
            with self._busy_lock:
                self.busy -= 1

    def _deliver(self, finishes: Sequence[bytes], headers: Sequence[int], floor: int) -> None:
        delivered = 0
        impls = implementations(self.hook.on_finish)
        recent, retries, hand_over = self.recent, self.retries, self.hand_over
        read, wants = records.read_finish, records.wants
        bits = records.batch_bits(headers)
        spilled, waited, delayed = records.is_spilled(bits), records.wants(bits), records.is_delayed(bits)
        for record, header in zip(finishes, headers, strict=True):
            try:
                if spilled and records.is_spilled(header):
                    record = records.unspill(record)
                seq, task_id, status, value, error, duration, worker_id, name = read(record)
            except Exception:
                fields = _salvage(record)
                if fields is None:
                    continue
                seq, task_id, status, value, error, duration, worker_id, name = fields
            if seq < floor:
                log.warning("dropped the finish of task %d, queued by an earlier process", seq)
                continue
            if seq in recent:  # its worker died after sending it: the supervisor's "lost" comes too
                log.debug("dropped a second finish for task %d (%s)", seq, STATUSES[status])
                continue
            retry = None
            if retries.by_seq or retries.registering:
                key = task_id if delayed and records.is_delayed(header) else seq  # its run has a seq of its own
                on_loop = bool(retries.registering) and asyncio._get_running_loop() is not None
                retry = retries.take(key, wait=not on_loop)
                if on_loop and self._park(retry, seq, record, header, floor):
                    continue
            if delayed and records.is_delayed(header):
                with self.lock:
                    self.delayed_ended += 1
            recent[seq] = None
            if len(recent) > _RECENT:
                recent.popitem(last=False)
            attempts = 1
            if retry is not None:
                if retries.again(retry, status):
                    continue
                task_id, attempts = retry.task_id, retry.attempt
            if not name:
                name = self.name_of(task_id)
            event = _new_finish(
                TaskFinishEvent, (task_id, STATUSES[status], value, error, duration, worker_id, attempts, name)
            )
            delivered += 1
            hand_over(event, waited and wants(header), impls)
        if delivered:
            self.count_done(delivered)

    def _park(self, retry: Retry | None, seq: int, record: bytes, header: int, floor: int) -> bool:
        """On the event loop, instead of :meth:`Retries.take` sleeping there:
        True if the finish of ``seq`` is set aside to be delivered again
        shortly (a retriable task's registration may still be coming, for
        up to :data:`taskmw.retries.REGISTER_WAIT` seconds)."""
        parked = self.parked
        if retry is not None or not self.retries.registering:
            parked.pop(seq, None)
            return False
        now = time.monotonic()
        deadline = parked.setdefault(seq, now + REGISTER_WAIT)
        if now >= deadline:
            del parked[seq]
            return False
        loop = asyncio.get_running_loop()
        loop.call_later(_PARK_DELAY, self.deliver, [record], [records.unspilled(header)], floor)
        return True

    def hand_over(self, event: TaskFinishEvent, want: bool, impls: list[Impl] | None = None) -> None:
        """Give a task's final finish to its waiter and the ``on_finish``
        hooks. Nothing a waiter or a hook raises stops the delivery."""
        if self.shut:  # close() returned: it said how many were not delivered
            return
        self.handed += 1
        told = False  # a waiter has it, or will
        if want:
            with self.lock:
                if event.task_id in self.waiters:
                    waiter = self.waiters.pop(event.task_id)
                    if waiter is not None:
                        try:
                            waiter(event)
                            told = True
                        except BaseException as exc:  # noqa: B036 - its event loop closed, ...: nobody can be told
                            log.warning("the waiter of task %d could not be given its finish: %r", event.task_id, exc)
                else:
                    self.early[event.task_id] = event
                    told = True
        for fn, argnames, plugin in impls if impls is not None else implementations(self.hook.on_finish):
            try:
                if argnames:
                    fn(event)
                else:
                    fn()
            except BaseException:  # noqa: B036 - SystemExit, KeyboardInterrupt too: the reader must go on
                log.exception("plugin %s failed in on_finish", plugin)
        if not told and event.status != "ok":
            self._log_failure(event)

    def _log_failure(self, event: TaskFinishEvent) -> None:
        """A task that did not finish ``ok`` and that nobody waited for: one
        WARNING line on ``taskmw.tasks`` (its traceback at DEBUG), unless a
        plugin says it logs finishes itself (``taskmw_logs_finishes = True``,
        as taskmw-logging does, whose line has all this)."""
        if not tasks_log.isEnabledFor(logging.WARNING):
            return
        for impl in self.hook.on_finish.get_hookimpls():
            if getattr(impl.plugin, LOGS_FINISHES, False):
                return
        error = event.error
        why = f"{error.type}: {error.message}" if error is not None else "no error given"
        tasks_log.warning(
            "task %d %s: %s: %s (nobody waited for it)", event.task_id, event.status, event.name or "?", why
        )
        if error is not None and error.traceback:
            tasks_log.debug("task %d %s: %s", event.task_id, event.status, error.traceback.rstrip("\n"))

    def count_done(self, n: int) -> None:
        """``n`` more of this process's tasks got their final finish."""
        with self.lock:
            self.done += n
            if self.done >= self.sent:
                self.idle.notify_all()

    def drain(self, timeout: float, alive: Callable[[], bool], pending: Callable[[], int], delayed: bool = True) -> int:
        """Wait until every task this process queued has had its finish
        handed over (to its waiter and the ``on_finish`` hooks); returns how
        many had not when it gave up.

        While ``alive()`` says the tasks may still run, it waits up to
        ``timeout`` seconds. After that only finishes already received can
        come: it waits while there are some (``pending()`` records not read
        yet, or a delivery under way) and each is handed over within
        :data:`STALL` seconds of the one before; it stops once none is left.
        With ``delayed`` false it does not wait for the delayed tasks not
        due yet (they run later, whether this process is there or not).
        """
        start = time.monotonic()
        last, moved, empty = self.handed, start, 0

        def finished() -> bool:
            waived = 0 if delayed else self.delayed - self.delayed_ended
            return self.done + waived >= self.sent

        with self.lock:
            while not self.idle.wait_for(finished, timeout=0.05):
                now = time.monotonic()
                if self.handed != last:
                    last, moved = self.handed, now
                if now - start < timeout and alive():
                    continue
                if pending() or self.busy:
                    empty = 0
                    if now - moved > STALL:
                        break  # a hook hangs
                else:
                    empty += 1
                    if empty >= 2:  # nothing left to read, twice in a row: the rest will not come
                        break
            return max(0, self.sent - self.done - (0 if delayed else self.delayed - self.delayed_ended))

    def retry_failed(self, retry: Retry, exc: BaseException) -> None:
        """A retry could not be queued: its task finishes ``error`` saying why."""
        error = TaskError(type(exc).__qualname__, str(exc), "")
        event = TaskFinishEvent(retry.task_id, "error", None, error, 0.0, -1, retry.attempt - 1)
        self.hand_over(event, records.wants(retry.header))
        self.count_done(1)
