"""A task worker: takes tasks from the submit ring, runs the ``on_task``
hooks, and writes each outcome into the completion channel of the process
that queued the task.

Records are taken in batches and *held* (see :meth:`taskmw.Ring.pop_many`)
until their finish is written, so the supervisor can report the tasks of a
worker that dies as ``lost``. The batch size adapts: it doubles while tasks
are quick and drops to one as soon as one is slow, so a slow task never sits
on a pile of others while another worker idles.

A worker that keeps finding work (its last wait for a task was shorter
than ``10 * start_delay``) *lingers* before its next sleep: it waits up to
``start_delay`` as the submit ring's one lingering consumer, which tasks
queued with ``task()`` do not wake (see ``Ring.pop_many(linger=)``; a wait
cut short to wake lazy finishes, ``finish_delay``, lingers the rest of
``start_delay`` in the next one), so at web request rates one timed
wake-up takes several tasks instead of every task waking a worker; a task
somebody waits for wakes it at once. Workers run under ``SCHED_BATCH``: a
woken worker does not preempt the request running on its core.

``async def`` tasks (any handler whose return value is a coroutine) run on an
event loop in a second thread of the worker, ``task_concurrency`` at once.

Finishes nobody waits for are written *lazily* (waking nobody); the worker
wakes the reader of each channel it wrote so within ``finish_delay`` of the
first of them: between tasks, and while idle (its wait for the next task is
cut short for it). A finish somebody waits for (``WANT``) wakes its reader
at once, and so does every finish when ``finish_delay`` is 0. So a busy
process's reader wakes once per batch of finishes; the reader's own 100 ms
re-check of its channel covers a worker killed, or stuck in a long task,
before its wake-up.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Coroutine
from types import CoroutineType
from typing import Any

from taskmw import _codec, _proc, _table, _title, delayed, records
from taskmw._table import (
    ASYNC_DEADLINE,
    ASYNC_DONE,
    ASYNC_LIMIT,
    ASYNC_OK,
    ASYNC_SEQ,
    ASYNC_TIMEOUT,
    ATTEMPT,
    BUSY,
    DEADLINE,
    DONE,
    IDLE,
    SEQ,
    STARTED,
    STATE,
    STOPPING,
    TASK,
)
from taskmw._table import OK as DONE_OK
from taskmw.events import TaskError
from taskmw.interfaces import Server
from taskmw.pipeline import error_of, run_task
from taskmw.plugins import Impl, call_each, implementations
from taskmw.pool import Pool
from taskmw.records import CANCELLED, DELAYED, ERROR, OK, SPILLED, TIMEOUT, SubmitRecord, encode_finish
from taskmw.retries import RETRIED
from taskmw.tasks import _reporter, _set_default

log = logging.getLogger(__name__)

MAX_BATCH = 64
QUICK = 0.001  # seconds: a batch this fast lets the next one be twice as large
_IDLE_CHECK = 1.0  # seconds an idle worker waits before checking its supervisor is alive
_CANCELLED = TaskError("Cancelled", "the task was cancelled before it ran", "")

before_run: list[Callable[[Server, int], None]] = []
"""Called in each new task worker before it looks up its hooks (``taskmw
start`` imports the app there, so the app's plugins reach the worker)."""


def spawn(pool: Pool, server: Server, worker_id: int) -> int:
    """Fork task worker ``worker_id`` of ``pool``; returns its pid (in the
    supervisor). ``server`` is what its tasks and hooks see as the server."""
    supervisor = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        _proc.make_undumpable()  # (inherited from the supervisor already: said again, being the point)
        _title.set_title(f"task worker {worker_id}")
        _proc.batch_scheduling()  # a woken worker does not preempt the request running on its core
        # The supervisor stops workers (with stop markers, behind the queued
        # tasks); a SIGTERM to the whole process group (systemd, kill -TERM
        # -PGID) must not make a worker walk away from the queue. Ignore it
        # before unblocking what the supervisor blocks.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        for setup in before_run:
            setup(server, worker_id)
        server.worker_id = worker_id
        _set_default(server)
        code = _Worker(pool, server, worker_id, supervisor).run()
    except BaseException:
        log.exception("taskmw task worker %d failed", worker_id)
    finally:
        os._exit(code)


class _Worker:
    def __init__(self, pool: Pool, server: Server, worker_id: int, supervisor: int) -> None:
        self.supervisor = supervisor  # if it dies (even before this line), this worker is an orphan
        self.pool = pool
        self.server = server
        self.worker_id = worker_id
        self.ring = pool.submit
        self.runner: _AsyncRunner | None = None
        self.on_task: list[Impl] = []  # the on_task implementations, in call order: taken in run()
        self.table = pool.table
        self.words = pool.table.words
        self.row = pool.table.row(worker_id)
        self.words[self.row + _table.PID] = os.getpid()  # the supervisor writes it too, after fork() returns
        self.words[self.row + ASYNC_DEADLINE] = 0
        self.words[self.row + _table.START] = _proc.start_ticks(os.getpid()) or 0
        self.generation = pool.table.generation
        self.timeout = pool.settings.task_timeout
        self.tasks_left = pool.settings.max_tasks_per_worker or -1
        self.max_memory = pool.settings.max_worker_memory
        self.tasks = pool.tasks
        self.record_arguments = pool.settings.record_arguments
        self.finish_spill_at = pool.finish_spill_at
        self.current = 0  # the id of the sync task running now, for taskmw.progress()
        self.dropped = 0  # finishes dropped (their process is gone) and not logged yet
        self.next_drop_log = 0.0  # time.monotonic() of the next log line about them
        self.reply = 0  # the finish header of the task running now
        self.delay = pool.settings.finish_delay
        self.unwoken: dict[int, float] = {}  # channel -> when its oldest lazy finish is due (time.monotonic())
        self.due = float("inf")  # the earliest of unwoken's times
        self.linger = pool.settings.start_delay
        self.busy_wait = 10 * self.linger  # a pop that waited less than this: tasks come often, linger next
        _reporter.set(self.report)

    def run(self) -> int:
        hook_args = {"worker_id": self.worker_id, "server": self.server}
        call_each(self.server.hook.on_worker_start, hook_args)
        # Plugins are fixed once the worker started: its on_worker_start hooks may (un)register some
        # (an inert plugin leaves the invoker first, see taskmw.pipeline.run_task's direct call).
        self.on_task = implementations(self.server.hook.on_task)
        fresh = 0 if self.max_memory is None else _proc.rss_bytes(os.getpid()) or 0
        if self.max_memory is not None and fresh > self.max_memory:
            log.error("task worker %d: resident memory %.1f MiB at start is already over max_worker_memory=%.1f MiB: "
                      "not recycled for memory (give max_worker_memory above a fresh worker's size)",
                      self.worker_id, fresh / (1 << 20), self.max_memory / (1 << 20))  # fmt: skip
            self.max_memory = None  # a fresh worker would be over it too: replacing it after every task helps nobody
        try:
            self.loop()
        finally:
            self.wake_due(float("inf"))  # leaving: no lazy finish waits for this worker
            self.words[self.row + STATE] = STOPPING  # draining its async tasks, running on_worker_stop
            if self.runner is not None:
                self.runner.drain()
            call_each(self.server.hook.on_worker_stop, hook_args)
        return 0

    def loop(self) -> None:
        ring, table = self.ring, self.table
        run_one, reply_to, monotonic = self.run_one, records.reply_to, time.monotonic
        supervisor = self.supervisor
        words, row = self.words, self.row
        max_batch = 1 if self.timeout else MAX_BATCH  # a timed task is held alone
        size = 1
        linger, busy_wait = 0.0, self.busy_wait
        words[row + STATE] = IDLE
        if os.getppid() != supervisor:  # it died while this one started: the next one runs new workers
            return
        while True:
            timeout = _IDLE_CHECK
            if self.unwoken:  # wait no longer than the first lazy finish may
                timeout = min(timeout, max(0.0, self.due - monotonic()))
            asked = time.perf_counter()
            batch = ring.pop_many(size, timeout=timeout, hold=True, alone=records.TIMED, linger=linger)
            started = time.perf_counter()
            if not batch.records:
                # A wait cut short for a lazy finish lingers out the rest of start_delay next.
                linger = max(0.0, linger - (started - asked)) if timeout < _IDLE_CHECK else 0.0
                if self.unwoken:
                    self.wake_due(monotonic())
                    if self.unwoken or timeout < _IDLE_CHECK:
                        continue  # not idle for _IDLE_CHECK yet
                if os.getppid() != supervisor:
                    log.warning("task worker %d: the supervisor is gone, exiting", self.worker_id)
                    return
                if table.generation != self.generation:
                    self.recycle(_table.RELOAD)
                    return  # reloaded: a fresh worker takes this one's place
                continue
            # Tasks come often (this one after a short wait): linger before the next sleep (start_delay).
            linger = self.linger if started - asked < busy_wait else 0.0
            self.tasks.taken(*batch)  # first: the Q groups task()'s fast path left to the worker
            words[row + _table.BATCH_END] = batch.first_seq + len(batch.records)  # see LocalTransport.cancel
            words[row + SEQ] = batch.first_seq  # a timed task is always first (alone)
            words[row + STARTED] = time.monotonic_ns()
            words[row + STATE] = BUSY
            finishes: dict[int, list[bytes]] = {}
            done: list[int] = []
            stops = 0
            seq = batch.first_seq
            may_stop = records.any_stop(batch.auxs)
            for record, header in zip(batch.records, batch.auxs, strict=True):
                if may_stop and records.is_stop(header):
                    stops += 1
                    done.append(seq)
                else:
                    self.reply = reply = reply_to(header)
                    try:
                        finish = run_one(seq, record, header)
                    except BaseException as exc:  # noqa: B036 - never let one task's outcome end the batch
                        finish = self.failed(seq, exc)
                    if finish is not None:
                        if finish:  # else it was sent already (spilled)
                            outcomes = finishes.get(reply)
                            if outcomes is None:
                                finishes[reply] = [finish]
                            else:
                                outcomes.append(finish)
                        done.append(seq)
                seq += 1
                if self.unwoken and monotonic() >= self.due:  # a batch of slower tasks
                    self.wake_due(monotonic())
            for reply, outcomes in finishes.items():
                self.send(reply, outcomes, self.delay > 0 and not records.wants(reply))
            ring.release(done)
            words[row + TASK] = 0
            words[row + _table.BATCH_END] = 0
            words[row + STATE] = IDLE
            size = min(size * 2, max_batch) if time.perf_counter() - started < QUICK else 1
            orphan = os.getppid() != supervisor  # its supervisor died: a new one runs new workers
            if stops:
                # Took another worker's stop marker too (or, as an orphan, the new workers'): put it back.
                extra = stops if orphan else stops - 1
                if extra:
                    ring.push_many([b""] * extra, aux=records.STOP, timeout=5.0)
                return
            if orphan:
                return
            if table.generation != self.generation:
                self.recycle(_table.RELOAD)
                return
            if self.tasks_left > 0:
                self.tasks_left -= len(batch.records)
                if self.tasks_left <= 0:
                    log.info("task worker %d: max_tasks_per_worker reached, recycling", self.worker_id)
                    self.recycle(_table.MAX_TASKS)
                    return
            if self.max_memory is not None and self.over_memory():
                return

    def over_memory(self) -> bool:
        """True (and recorded, and logged) if this worker's resident memory
        is over ``max_worker_memory``: it exits, after its async tasks, and
        the supervisor starts a fresh one in its row."""
        rss = _proc.rss_bytes(os.getpid()) or 0
        if rss <= (self.max_memory or 0):
            return False
        log.warning("task worker %d: resident memory %.1f MiB is over max_worker_memory=%.1f MiB: recycling",
                    self.worker_id, rss / (1 << 20), (self.max_memory or 0) / (1 << 20))  # fmt: skip
        self.recycle(_table.MEMORY)
        return True

    def recycle(self, reason: int) -> None:
        """Record in the worker table why this worker leaves (it exits cleanly next)."""
        self.words[self.row + _table.RECYCLED] += 1
        self.words[self.row + _table.REASON] = reason

    def failed(self, seq: int, exc: BaseException, task_id: int = 0) -> bytes:
        """The ``error`` finish of a task whose outcome could not be made
        (taskmw's own failure around it), so its worker and batch go on."""
        log.exception("task worker %d: could not finish task seq %d", self.worker_id, seq)
        words, row = self.words, self.row
        if not task_id:  # a sync task: the one in this worker's row
            words[row + DEADLINE] = 0
            task_id = words[row + TASK] if words[row + SEQ] == seq and words[row + TASK] else seq
        error = TaskError(
            "TaskmwError", f"the task's outcome could not be recorded: {_codec.safe_str(exc)}", error_of(exc).traceback
        )
        self.tasks.finished(task_id, ERROR, max(1, words[row + _table.ATTEMPT]), error)
        return encode_finish(seq, task_id, ERROR, None, error, 0.0, self.worker_id, "")

    def run_one(self, seq: int, record: bytes, header: int) -> bytes | None:
        """Run one task; returns its finish record (None: an async task, which
        sends its own finish when it is done, or a delayed task's trip that
        has none, released already; ``b""``: a large finish, sent already)."""
        words, row = self.words, self.row
        words[row + TASK] = 0  # the one before is over (failed() reads TASK only while SEQ is this one's)
        words[row + SEQ] = seq  # before any look at its cancel request (see LocalTransport.cancel)
        started = time.perf_counter()
        if header & SPILLED:
            self.pool.consume_spill(record)  # the file is read (and removed) now: room for another
        try:
            task = SubmitRecord.read(seq, record, header)
        except Exception as exc:  # an unreadable record: the task cannot run
            unreadable = error_of(exc)
            self.tasks.finished(seq, ERROR, 1, unreadable)
            return self.finish(seq, seq, ERROR, None, unreadable, started, "")
        _, task_id, kind, _, own_limit, attempt, _, cancelled, payload, due = task
        tasks = self.tasks
        if header & DELAYED and not cancelled:  # see taskmw.delayed
            if not due and not delayed.claim(self.pool.scheduled_dir, task_id):
                self.ring.release([seq])  # a second push of a task that ran, or one cancelled: dropped, no finish
                return None
            if due and not tasks.cancel_requested(task_id):
                delayed.hold(self.pool.scheduled_dir, task, self.pool.supervisor_pid)  # not due yet: to the scheduler
                self.ring.release([seq])  # now, not with the batch: the scheduler has it
                if tasks.cancel_requested(task_id):  # cancel() came while the file was written: it may not see it
                    delayed.cancel(self.pool.scheduled_dir, task_id, self.pool.supervisor_pid)
                return None
        if cancelled or tasks.cancel_requested(task_id):
            words[row + _table.CANCELLED_HERE] += 1
            tasks.finished(task_id, CANCELLED, attempt, _CANCELLED)
            return self.finish(seq, task_id, CANCELLED, None, _CANCELLED, started, "")
        if attempt > 1:
            tasks.rerun(task_id)
        if self.record_arguments:
            tasks.arguments(task_id, payload, self.worker_id)
        self.current = task_id
        limit = own_limit or self.timeout
        words[row + ATTEMPT] = attempt
        words[row + TASK] = task_id  # last: the record reads "running" from here (see LocalTransport.status)
        if limit:  # the supervisor kills this worker if the task is still running then
            words[row + DEADLINE] = words[row + STARTED] + int(limit * 1e9)
        status, value, error, name = run_task(
            self.on_task, self.server, task_id, self.worker_id, payload, kind, attempt
        )
        if isinstance(value, CoroutineType):  # inspect.iscoroutine(), without its call
            tasks.started(task_id, self.worker_id, attempt)  # it goes on after this row moves on
            if limit:
                words[row + DEADLINE] = 0  # the event loop enforces an async task's limit
            if self.runner is None:
                self.runner = _AsyncRunner(self, self.pool.settings.task_concurrency)
            self.runner.submit(value, task, started, limit, name)
            return None
        if limit:
            words[row + DEADLINE] = 0
        words[row + DONE] += 1
        if status == OK:
            words[row + DONE_OK] += 1
        duration = time.perf_counter() - started
        finish = encode_finish(seq, task_id, status, value, error, duration, self.worker_id, name)
        sent = False
        if len(finish) > self.finish_spill_at:  # its file is written here: it may not fit (ENOSPC)
            status, error, finish, sent = self.spill(seq, task_id, status, error, finish, duration, name, self.reply)
        self.record(task, status, error, finish, duration)
        return b"" if sent else finish

    def spill(
        self,
        seq: int,
        task_id: int,
        status: int,
        error: TaskError | None,
        finish: bytes,
        duration: float,
        name: str,
        reply: int,
    ) -> tuple[int, TaskError | None, bytes, bool]:
        """Write a finish too large for a channel record to a spill file and
        send it now, to ``reply`` (see :func:`taskmw.records.reply_to`);
        returns ``(status, error, finish, True)``. If the file cannot be
        written (the spill directory is full: ``ENOSPC``) the task finishes
        ``error`` saying why instead: ``(ERROR, error, its finish, False)``,
        to be sent with the others."""
        pool = self.pool
        try:
            path = records.spill(finish, pool.spill_dir)
        except OSError as exc:
            message = (
                f"the task's outcome ({len(finish)} bytes pickled) could not be written to the spill "
                f"directory {pool.spill_dir}: {exc}"
            )
            error = TaskError("OSError", message, "")
            return ERROR, error, encode_finish(seq, task_id, ERROR, None, error, duration, self.worker_id, name), False
        self.send(reply | records.SPILLED, [path])
        return status, error, finish, True

    def record(self, task: SubmitRecord, status: int, error: TaskError | None, finish: bytes, duration: float) -> None:
        """Put a task's outcome in the pool's record (not a failure that will
        run again: its queuing process, if it still runs, retries it)."""
        if not (task.left and status in RETRIED and self.pool.channel_claimed(records.channel_of(task.reply))):
            wid = self.worker_id
            self.tasks.finished(task.task_id, status, task.attempt, error, finish, wid, wid, duration)

    def report(self, fraction: float, message: str | None) -> None:
        """``taskmw.progress()`` from the sync task running now."""
        if self.current:
            self.tasks.progress(self.current, fraction, message)

    def finish(
        self, seq: int, task_id: int, status: int, value: Any, error: TaskError | None, started: float, name: str
    ) -> bytes:
        """The finish record of task ``seq``."""
        return encode_finish(seq, task_id, status, value, error, time.perf_counter() - started, self.worker_id, name)

    def send(self, reply: int, finishes: list[bytes], lazy: bool = False) -> None:
        """Write finishes back: into the channel, or its backlog while the
        channel is full (see :mod:`taskmw.backlog`); waits only when both are
        full, for as long as the channel's process lives. Finishes for a
        process that is gone are dropped (one log line a second at most).
        ``lazy``: the channel's reader is woken within ``finish_delay``
        (:meth:`wake_due`), not now."""
        dropped = self.pool.send_finishes(reply, finishes, lazy)
        if lazy:
            index = records.channel_of(reply)
            if index not in self.unwoken:
                due = time.monotonic() + self.delay
                self.unwoken[index] = due
                self.due = min(self.due, due)
        if dropped:
            self.dropped += dropped
            now = time.monotonic()
            if now >= self.next_drop_log:
                log.warning("dropped %d finishes: the process that queued them is gone", self.dropped)
                self.dropped, self.next_drop_log = 0, now + 1.0

    def wake_due(self, now: float) -> None:
        """Wake the readers of the channels whose oldest lazy finish is due
        by ``now`` (``inf``: all of them)."""
        channels, unwoken = self.pool.channels, self.unwoken
        for index, due in list(unwoken.items()):
            if due <= now:
                channels[index].wake()  # nothing if its process drained it meanwhile
                del unwoken[index]
        self.due = min(unwoken.values(), default=float("inf"))


class _AsyncRunner:
    """An event loop on its own thread, running one worker's async tasks."""

    def __init__(self, worker: _Worker, limit: int) -> None:
        self.worker = worker
        self.deadlines: dict[int, tuple[int, int]] = {}  # seq -> (deadline, limit) in ns, of the timed tasks running
        self.loop = asyncio.new_event_loop()
        self.slots = threading.Semaphore(limit)
        self.limit = limit
        self.thread = threading.Thread(target=self.loop.run_forever, name="taskmw-async", daemon=True)
        self.thread.start()

    def submit(
        self, coro: Coroutine[Any, Any, Any], task: SubmitRecord, started: float, limit: float | None, name: str
    ) -> None:
        """Start ``coro`` on the loop (waiting while ``limit`` already run)."""
        self.slots.acquire()
        asyncio.run_coroutine_threadsafe(self.run(coro, task, started, limit, name), self.loop)

    async def run(
        self, coro: Coroutine[Any, Any, Any], task: SubmitRecord, started: float, limit: float | None, name: str
    ) -> None:
        w = self.worker
        words, row = w.words, w.row
        seq, task_id = task.seq, task.task_id
        _reporter.set(functools.partial(w.tasks.progress, task_id))  # this task's own context
        timer = asyncio.timeout(limit)
        error: TaskError | None = None
        value = None
        begun = time.monotonic_ns()
        if limit:  # the supervisor's backstop, should the loop not stop the task (see _table.ASYNC_DEADLINE)
            self.deadlines[seq] = (begun + int(limit * 1e9), int(limit * 1e9))
            self.publish()
        try:
            async with timer:
                value = await coro
            status = OK
        except BaseException as exc:  # noqa: B036
            status, error = ERROR, error_of(exc)
        if limit:
            del self.deadlines[seq]
            self.publish()
            # Past its limit whatever it did: cancelled, or it swallowed the cancellation, or it blocked
            # the loop (no await) and the timer never fired.
            if timer.expired() or time.monotonic_ns() - begun > limit * 1e9:
                message = f"the task ran longer than its time limit of {limit}s and was cancelled"
                status, error, value = TIMEOUT, TaskError("TimeoutError", message, ""), None
                words[row + ASYNC_TIMEOUT] += 1
        sent = False
        duration = time.perf_counter() - started
        try:
            finish = encode_finish(seq, task_id, status, value, error, duration, w.worker_id, name)
            if len(finish) > w.pool.finish_spill_at:  # it may not fit in the spill directory (ENOSPC)
                status, error, finish, sent = w.spill(seq, task_id, status, error, finish, duration, name, task.reply)
        except BaseException as exc:  # noqa: B036 - one task's outcome must not stop the loop's others
            status, finish = ERROR, w.failed(seq, exc, task_id)
        if status == OK:
            words[row + ASYNC_OK] += 1
        words[row + ASYNC_DONE] += 1
        try:
            w.record(task, status, error, finish, duration)
            if not sent:
                w.send(task.reply, [finish])
            w.ring.release([seq])
        finally:
            self.slots.release()

    def publish(self) -> None:
        """Write the earliest time limit of the running timed tasks into the
        worker's row (the supervisor reads the deadline, then the seq, then
        the deadline again: it is cleared first and written last)."""
        words, row = self.worker.words, self.worker.row
        words[row + ASYNC_DEADLINE] = 0
        if self.deadlines:
            seq, (deadline, limit) = min(self.deadlines.items(), key=lambda item: item[1][0])
            words[row + ASYNC_SEQ] = seq
            words[row + ASYNC_LIMIT] = limit
            words[row + ASYNC_DEADLINE] = deadline

    def drain(self) -> None:
        """Wait for every running async task, then stop the loop."""
        for _ in range(self.limit):
            self.slots.acquire()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5.0)
