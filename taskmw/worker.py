"""A task worker: takes tasks from the submit ring, runs the ``on_task``
hooks, and writes each outcome into the completion channel of the process
that queued the task.

Records are taken in batches and *held* (see :meth:`taskmw.Ring.pop_many`)
until their finish is written, so the supervisor can report the tasks of a
worker that dies as ``lost``. The batch size adapts: it doubles while tasks
are quick and drops to one as soon as one is slow, so a slow task never sits
on a pile of others while another worker idles.

``async def`` tasks (any handler whose return value is a coroutine) run on an
event loop in a second thread of the worker, ``task_concurrency`` at once.
"""

from __future__ import annotations

import asyncio
import fcntl
import inspect
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from taskmw import _codec, _table
from taskmw._codec import CHANNEL_MASK, KIND_MASK, KIND_STOP, OPTS, SPILLED, TIMED, WANT
from taskmw._table import (
    ASYNC_DONE,
    ASYNC_OK,
    ASYNC_TIMEOUT,
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
from taskmw.events import TaskError
from taskmw.pipeline import call_each, error_of, on_task_calls, run_task
from taskmw.ring import RingFull
from taskmw.tasks import _set_default

if TYPE_CHECKING:
    from taskmw.server import TaskServer

log = logging.getLogger(__name__)

MAX_BATCH = 64
QUICK = 0.001  # seconds: a batch this fast lets the next one be twice as large
_IDLE_CHECK = 1.0  # seconds an idle worker waits before checking its supervisor is alive

before_run: list[Callable[[TaskServer, int], None]] = []
"""Called in each new task worker before it looks up its hooks (``taskmw
start`` imports the app there, so the app's plugins reach the worker)."""


def spawn(server: TaskServer, worker_id: int) -> int:
    """Fork task worker ``worker_id``; returns its pid (in the supervisor)."""
    supervisor = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        # The supervisor stops workers (with stop markers, behind the queued
        # tasks); a SIGTERM to the whole process group (systemd, kill -TERM
        # -PGID) must not make a worker walk away from the queue. Ignore it
        # before unblocking what the supervisor blocks.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        for setup in before_run:
            setup(server, worker_id)
        code = _Worker(server, worker_id, supervisor).run()
    except BaseException:
        log.exception("taskmw task worker %d failed", worker_id)
    finally:
        os._exit(code)


class _Worker:
    def __init__(self, server: TaskServer, worker_id: int, supervisor: int) -> None:
        self.supervisor = supervisor  # if it dies (even before this line), this worker is an orphan
        self.server = server
        self.worker_id = worker_id
        self.ring = server._submit
        self.runner: _AsyncRunner | None = None
        # on_task implementations, in call order: plugins are fixed once the worker is forked
        self.on_task = on_task_calls(server.hook)
        self.words = server._table.words
        self.row = server._table.row(worker_id)
        self.words[self.row + _table.PID] = os.getpid()  # the supervisor writes it too, after fork() returns
        self.generation = self.words[server._table.sup + _table.GENERATION]
        self.tasks_left = server.max_tasks_per_worker or -1
        self.spill_at = server._channels[0].max_record // 4  # larger finishes travel as files
        server.worker_id = worker_id
        _set_default(server)

    def run(self) -> int:
        call_each(self.server.hook.on_worker_start, {"worker_id": self.worker_id, "server": self.server})
        try:
            self.loop()
        finally:
            self.words[self.row + STATE] = STOPPING  # draining its async tasks, running on_worker_stop
            if self.runner is not None:
                self.runner.drain()
            call_each(self.server.hook.on_worker_stop, {"worker_id": self.worker_id, "server": self.server})
        return 0

    def loop(self) -> None:
        ring = self.ring
        supervisor = self.supervisor
        words, row = self.words, self.row
        reload_word = self.server._table.sup + _table.GENERATION
        max_batch = 1 if self.server.task_timeout else MAX_BATCH  # a timed task is held alone
        size = 1
        words[row + STATE] = IDLE
        while True:
            batch = ring.pop_many(size, timeout=_IDLE_CHECK, hold=True, alone=TIMED)
            if not batch.records:
                if os.getppid() != supervisor:
                    log.warning("task worker %d: the supervisor is gone, exiting", self.worker_id)
                    return
                if words[reload_word] != self.generation:
                    return  # reloaded: a fresh worker takes this one's place
                continue
            started = time.perf_counter()
            words[row + SEQ] = batch.first_seq  # a timed task is always first (alone)
            words[row + STARTED] = time.monotonic_ns()
            words[row + STATE] = BUSY
            finishes: dict[int, list[bytes]] = {}
            done: list[int] = []
            stops = 0
            seq = batch.first_seq
            for record, aux in zip(batch.records, batch.auxs, strict=True):
                if aux & KIND_MASK == KIND_STOP:
                    stops += 1
                    done.append(seq)
                else:
                    finish = self.run_one(seq, record, aux)
                    if finish is not None:
                        finishes.setdefault(aux & (CHANNEL_MASK | WANT), []).append(finish)
                        done.append(seq)
                seq += 1
            for key, records in finishes.items():
                self.send(key, records)
            ring.release(done)
            words[row + TASK] = 0
            words[row + STATE] = IDLE
            size = min(size * 2, max_batch) if time.perf_counter() - started < QUICK else 1
            orphan = os.getppid() != supervisor  # its supervisor died: a new one runs new workers
            if stops:
                # Took another worker's stop marker too (or, as an orphan, the new workers'): put it back.
                extra = stops if orphan else stops - 1
                if extra:
                    ring.push_many([b""] * extra, aux=KIND_STOP, timeout=5.0)
                return
            if orphan or words[reload_word] != self.generation:
                return
            if self.tasks_left > 0:
                self.tasks_left -= len(batch.records)
                if self.tasks_left <= 0:
                    log.info("task worker %d: max_tasks_per_worker reached, recycling", self.worker_id)
                    return

    def run_one(self, seq: int, record: bytes, aux: int) -> bytes | None:
        """Run one task; returns its finish record (None: an async task, which
        sends its own finish when it is done)."""
        words, row = self.words, self.row
        started = time.perf_counter()
        task_id, attempt, limit = seq, 1, self.server.task_timeout
        try:
            if aux & SPILLED:
                record = _codec.unspill(record)
            if aux & OPTS:
                own_limit, attempt, first_id, record = _codec.split_options(record)
                limit = own_limit or limit
                task_id = first_id or seq  # a retry carries the id its first run had
        except Exception as exc:  # an unreadable record: the task cannot run
            error: TaskError | None = error_of(exc)
            status, value, name = _codec.ERROR, None, ""
        else:
            words[row + TASK] = task_id
            if limit:  # the supervisor kills this worker if the task is still running then
                words[row + DEADLINE] = words[row + STARTED] + int(limit * 1e9)
            status, value, error, name = run_task(
                self.on_task, self.server, task_id, self.worker_id, record, aux & KIND_MASK, attempt
            )
            if inspect.iscoroutine(value):
                if limit:
                    words[row + DEADLINE] = 0  # the event loop enforces an async task's limit
                if self.runner is None:
                    self.runner = _AsyncRunner(self, self.server.task_concurrency)
                self.runner.submit(value, seq, aux, started, limit, name)
                return None
        if limit:
            words[row + DEADLINE] = 0
        words[row + DONE] += 1
        if status == _codec.OK:
            words[row + _table.OK] += 1
        return self.finish(seq, status, value, error, started, name)

    def finish(self, seq: int, status: int, value: Any, error: TaskError | None, started: float, name: str) -> bytes:
        """The finish record of task ``seq``."""
        return _codec.encode_finish(seq, status, value, error, time.perf_counter() - started, self.worker_id, name)

    def send(self, key: int, records: list[bytes]) -> None:
        """Write finishes into a completion channel, waiting while it is full
        for as long as its process lives. A large finish travels as a file."""
        if any(len(r) > self.spill_at for r in records):
            small = [r for r in records if len(r) <= self.spill_at]
            for r in records:
                if len(r) > self.spill_at:
                    self.send(key | SPILLED, [_codec.spill(r, self.server._spill_dir)])
            records = small
        channel = self.server._channels[key & CHANNEL_MASK]
        aux = key & (WANT | SPILLED)
        while records:
            try:
                channel.push_many(records, aux=aux, timeout=1.0)
                return
            except RingFull as full:
                records = records[full.accepted :]
                if not _channel_claimed(self.server, key & CHANNEL_MASK):
                    log.warning("dropped %d finishes: the process that queued them is gone", len(records))
                    return


def _channel_claimed(server: TaskServer, index: int) -> bool:
    """True if a live process holds completion channel ``index``."""
    comp = server._comp
    if comp is not None and comp.index == index:
        return True
    fd = server._channels[index].memfd()
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
    except OSError:
        return True
    fcntl.lockf(fd, fcntl.LOCK_UN, 1, 0)
    return False


class _AsyncRunner:
    """An event loop on its own thread, running one worker's async tasks."""

    def __init__(self, worker: _Worker, limit: int) -> None:
        self.worker = worker
        self.loop = asyncio.new_event_loop()
        self.slots = threading.Semaphore(limit)
        self.limit = limit
        self.thread = threading.Thread(target=self.loop.run_forever, name="taskmw-async", daemon=True)
        self.thread.start()

    def submit(
        self, coro: Coroutine[Any, Any, Any], seq: int, aux: int, started: float, limit: float | None, name: str
    ) -> None:
        """Start ``coro`` on the loop (waiting while ``limit`` already run)."""
        self.slots.acquire()
        asyncio.run_coroutine_threadsafe(self.run(coro, seq, aux, started, limit, name), self.loop)

    async def run(
        self, coro: Coroutine[Any, Any, Any], seq: int, aux: int, started: float, limit: float | None, name: str
    ) -> None:
        w = self.worker
        words, row = w.words, w.row
        timer = asyncio.timeout(limit)
        try:
            async with timer:
                value = await coro
            finish = w.finish(seq, _codec.OK, value, None, started, name)
            words[row + ASYNC_OK] += 1
        except BaseException as exc:  # noqa: B036
            if isinstance(exc, TimeoutError) and timer.expired():
                message = f"the task ran longer than its time limit of {limit}s and was cancelled"
                finish = w.finish(seq, _codec.TIMEOUT, None, TaskError("TimeoutError", message, ""), started, name)
                words[row + ASYNC_TIMEOUT] += 1
            else:
                finish = w.finish(seq, _codec.ERROR, None, error_of(exc), started, name)
        words[row + ASYNC_DONE] += 1
        try:
            w.send(aux & (CHANNEL_MASK | WANT), [finish])
            w.ring.release([seq])
        finally:
            self.slots.release()

    def drain(self) -> None:
        """Wait for every running async task, then stop the loop."""
        for _ in range(self.limit):
            self.slots.acquire()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5.0)
