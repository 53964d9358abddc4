"""The pool: :class:`TaskServer` queues tasks and delivers their finishes.

Where a task goes (four files): it is **queued** here (:meth:`TaskServer.task`
writes a record into the submit ring), **carried** by :mod:`taskmw.ring`,
**run** by :mod:`taskmw.worker`, and **finished** here again: the worker
writes the outcome into the completion channel of the process that queued
the task, whose reader (a thread, or the event loop under ASGI) turns it into
a :class:`~taskmw.TaskFinishEvent` and calls the ``on_finish`` hooks.

Each process that queues tasks claims one completion channel (a small ring)
of the pool, the first time it queues. A claim is a POSIX record lock on the
channel's memfd, so it dies with its process and the channel can be claimed
again; finishes meant for the dead owner (ids below the new owner's first
id) are logged and dropped.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import fcntl
import logging
import mmap
import os
import pickle
import select
import shutil
import signal
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib.metadata import entry_points
from types import FunctionType
from typing import Any

import pluggy

from taskmw import _codec, _table, hookspecs
from taskmw._codec import KIND_CALL, KIND_DATA, OPTS, READER_STOP, SPILLED, TIMED, WANT
from taskmw.errors import PoolClosed, QueueFull, TaskFailed
from taskmw.events import TaskError, TaskFinishEvent
from taskmw.listeners import DeferredResolver, Dispatcher, Invoker, Listener
from taskmw.ring import Batch, Ring, RingFull
from taskmw.tasks import ServiceTask, Task, _set_default

log = logging.getLogger(__name__)
_pdumps = pickle.dumps
_SPIN_US = 0.0
"""Waiters of the pool's rings sleep at once: at web request rates a spin
before sleeping costs more CPU (taken from the HTTP workers on a small
machine) than the wake-up it saves."""

_live: weakref.WeakSet[TaskServer] = weakref.WeakSet()

BACKEND_GROUP = "taskmw.backends"
"""Entry-point group of the backends: each names a callable that takes
:class:`TaskServer`'s arguments (except ``backend``) and returns a server."""
BACKEND_ENV = "TASKMW_BACKEND"


class _Completions:
    """This process's claim on one completion channel, and its reader."""

    def __init__(self, index: int, ring: Ring, floor: int) -> None:
        self.index = index
        self.ring = ring
        self.floor = floor  # ids below it were queued by an earlier owner of the channel
        self.lock = threading.Lock()
        self.waiters: dict[int, Callable[[TaskFinishEvent], None] | None] = {}
        self.early: dict[int, TaskFinishEvent] = {}  # waited-for finishes that beat their waiter
        self.sent = 0  # tasks queued by this process
        self.done = 0  # finishes delivered to it
        self.retries: dict[int, _Retry] = {}  # by seq: tasks that may run again
        self.registering = 0  # tasks with retries being queued right now (see _retry_of)
        self.recent: OrderedDict[int, None] = OrderedDict()  # seqs finished lately, oldest first
        self.idle = threading.Condition(self.lock)
        self.thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def expect(self, task_id: int, deliver: Callable[[TaskFinishEvent], None]) -> TaskFinishEvent | None:
        """With ``lock`` held: have the reader pass the finish of ``task_id``
        to ``deliver``, or return it if it came already."""
        early = self.early.pop(task_id, None)
        if early is None:
            self.waiters[task_id] = deliver
        return early


class _Retry:
    """What a dispatcher keeps to queue a failed task again."""

    __slots__ = ("payload", "aux", "timeout", "left", "attempt", "task_id")

    def __init__(self, payload: bytes, aux: int, timeout: float | None, left: int, task_id: int) -> None:
        self.payload = payload  # without the options header
        self.aux = aux
        self.timeout = timeout
        self.left = left
        self.attempt = 1
        self.task_id = task_id


_RETRIED = ("error", "lost", "timeout")
_RESTARTING = 2  # _state[0]: 0 running, 1 stopped, 2 the supervisor is being replaced
_RECENT = 1 << 16  # finished seqs remembered to drop a duplicate finish


class TaskServer:
    """A pool of pre-forked task worker processes.

    The pool is forked when it is built: a supervisor process starts
    ``task_workers`` workers, replaces any that die, and stops them when the
    pool closes (or when the process that built it exits). Every process
    forked later from the builder (gunicorn's HTTP workers with
    ``--preload``) shares the pool.

    Use it as a context manager in scripts and tests::

        with TaskServer(task_workers=4) as server:
            task_id = server.task(send_mail, to, subject="hi")

    Args:
        task_workers: worker processes (N tasks run at once; 1 gives strict
            FIFO order).
        plugins: objects with ``@taskmw.hookimpl`` methods.
        listeners: ``{DataType: [listener or service name, ...]}`` for the
            built-in dispatcher of data objects.
        entrypoints: also load the installed plugins (entry-point group
            ``taskmw``); ``False`` loads none.
        disable_plugins: names of installed plugins not to load (the
            entry-point names, e.g. ``["logging"]``). The environment
            variable ``TASKMW_DISABLE_PLUGINS`` adds more (comma-separated;
            ``*`` disables them all).
        queue_bytes: size of the task queue (shared memory, allocated as used).
        queue_timeout: seconds ``task()`` waits for room in a full queue
            before raising :class:`~taskmw.QueueFull`.
        task_concurrency: ``async def`` tasks one worker runs at once.
        shutdown_timeout: seconds :meth:`close` lets queued tasks run before
            the rest finish ``cancelled``.
        max_dispatchers: processes that may queue tasks at once (each
            claims a completion channel; a dead one's is reused).
        result_bytes: size of each process's completion channel.
        task_timeout: seconds a task may run (``None``: no limit). A task
            over it finishes ``timeout``: a sync task's worker is killed and
            replaced, an async task is cancelled. Per task:
            ``task(Task(fn, ...), timeout=s)``.
        retries: times a task that finished ``error``, ``lost`` or
            ``timeout`` is run again (for idempotent work; per task:
            ``task(Task(fn, ...), retries=n)``). Its finish event says how
            many ``attempts`` ran.
        retry_backoff: seconds before the first retry, doubling after each.
        max_tasks_per_worker: a worker that ran this many tasks is replaced
            by a fresh one (``None``: never), to bound leaks.
        max_payload_bytes: largest task (pickled) ``task()`` accepts.
            Tasks and results too large for the rings travel as files in a
            private directory (on ``/dev/shm`` when there is one).

        backend: where tasks run: ``"local"`` (this pool) or the name of a
            backend installed in the entry-point group ``taskmw.backends``
            (``"eager"``, ``"celery"``, …), which then builds the server from
            the same arguments. Defaults to the ``TASKMW_BACKEND``
            environment variable, else ``"local"``.

    Raises:
        ValueError: a setting is out of range (the message names it), or
            ``backend`` names no installed backend.
    """

    def __new__(cls, task_workers: int = 4, *args: Any, backend: str | None = None, **kwargs: Any) -> Any:
        name = backend if backend is not None else os.environ.get(BACKEND_ENV) or "local"
        if name == "local" or cls is not TaskServer:
            return super().__new__(cls)
        return _load_backend(name)(task_workers, *args, **kwargs)

    def __init__(
        self,
        task_workers: int = 4,
        *,
        backend: str | None = None,
        plugins: Iterable[object] = (),
        listeners: Mapping[type, Sequence[Listener]] | None = None,
        entrypoints: bool = True,
        disable_plugins: Iterable[str] = (),
        queue_bytes: int = 16 << 20,
        queue_timeout: float = 5.0,
        task_concurrency: int = 100,
        shutdown_timeout: float = 30.0,
        max_dispatchers: int = 32,
        result_bytes: int = 1 << 20,
        task_timeout: float | None = None,
        retries: int = 0,
        retry_backoff: float = 0.5,
        max_tasks_per_worker: int | None = None,
        max_payload_bytes: int = 128 << 20,
    ) -> None:
        _check_int("task_workers", task_workers, 1, 1024)
        _check_int("task_concurrency", task_concurrency, 1, 10000)
        _check_int("max_dispatchers", max_dispatchers, 1, 4096)
        _check_int("queue_bytes", queue_bytes, 4096, 1 << 40)
        _check_int("result_bytes", result_bytes, 4096, 1 << 40)
        _check_seconds("queue_timeout", queue_timeout)
        _check_seconds("shutdown_timeout", shutdown_timeout)
        _check_seconds("retry_backoff", retry_backoff)
        _check_int("retries", retries, 0, 1000)
        _check_int("max_payload_bytes", max_payload_bytes, 1, 1 << 40)
        if task_timeout is not None:
            _check_seconds("task_timeout", task_timeout, positive=True)
        if max_tasks_per_worker is not None:
            _check_int("max_tasks_per_worker", max_tasks_per_worker, 1, 1 << 62)
        self.task_timeout = None if task_timeout is None else float(task_timeout)
        self.retries = retries
        self.retry_backoff = float(retry_backoff)
        self.max_tasks_per_worker = max_tasks_per_worker
        self.max_payload_bytes = max_payload_bytes
        self.task_workers = task_workers
        self.queue_timeout = float(queue_timeout)
        self.task_concurrency = task_concurrency
        self.shutdown_timeout = float(shutdown_timeout)

        self.plugins = plugin_manager(plugins, listeners, entrypoints, disable_plugins)
        """The pluggy plugin manager. The task workers are forked with the plugins
        given here; one registered later reaches only this process (its ``on_finish``)."""
        self.hook = self.plugins.hook

        dispatchers = max_dispatchers
        self._submit = Ring(
            queue_bytes,
            slots=dispatchers + 2 * task_workers + 8,
            max_held=max(256, task_concurrency + 128),
            spin_us=_SPIN_US,
        )
        self._channels = [
            Ring(result_bytes, slots=2 * task_workers + 8, max_held=1, spin_us=_SPIN_US) for _ in range(dispatchers)
        ]
        self._state = mmap.mmap(-1, mmap.PAGESIZE)  # shared (MAP_SHARED|MAP_ANONYMOUS) with every forked process
        self._table = _table.WorkerTable(task_workers)
        self._spill_at = min(1 << 20, self._submit.max_record)  # larger tasks travel as files
        shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        self._spill_dir = tempfile.mkdtemp(prefix="taskmw-", dir=shm)  # mode 0700
        self._owner = os.getpid()
        self._closed = False
        self._comp: _Completions | None = None
        self._claim_lock = threading.Lock()
        self.worker_id: int | None = None
        """In a task worker: its index (0 … task_workers-1); elsewhere ``None``."""

        from taskmw import supervisor  # here: supervisor imports worker, which imports this module

        self._table.words[self._table.sup + _table.SUPERVISOR] = supervisor.spawn(self)
        self._watchdog = threading.Thread(target=self._watch_supervisor, name="taskmw-watchdog", daemon=True)
        self._watchdog.start()
        _live.add(self)
        _set_default(self)
        log.debug("pool started: %d task workers, supervisor pid %d", task_workers, self.supervisor_pid)

    @property
    def supervisor_pid(self) -> int:
        """The pid of the process that owns the task workers."""
        return self._table.words[self._table.sup + _table.SUPERVISOR]

    def _watch_supervisor(self) -> None:
        """In the builder: if the supervisor dies while the pool runs, fork a
        new one (its workers carry on with the queue; the old workers finish
        what they hold and exit). ``task()`` raises :class:`PoolClosed` in
        between."""
        from taskmw import supervisor

        while True:
            pid = self.supervisor_pid
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                fd = -1
            try:
                if fd >= 0:
                    select.select([fd], [], [])
            finally:
                if fd >= 0:
                    os.close(fd)
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            if self._closed or self._state[0] or os.getpid() != self._owner:
                return
            self._state[0] = _RESTARTING
            log.error("the pool's supervisor (pid %d) died: starting a new one", pid)
            self._table.words[self._table.sup + _table.SUPERVISOR] = supervisor.spawn(self)
            if self._state[0] == _RESTARTING:
                self._state[0] = 0

    # -- queuing -------------------------------------------------------------

    def task(self, fn_or_data: Any, /, *args: Any, **kwargs: Any) -> int:
        """Queue a task; returns its id at once.

        ``fn_or_data`` is a callable (run as ``fn(*args, **kwargs)``), a
        :class:`~taskmw.Task` or :class:`~taskmw.ServiceTask`, or any other
        picklable object, which the dispatcher hands to the listeners of its
        type. Ids are unique and increasing across every process of the pool.

        Raises:
            TypeError: something cannot be pickled (the message names it),
                or arguments were given with a data object.
            ValueError: the task is larger than the queue can carry.
            QueueFull: no room in the queue within ``queue_timeout`` seconds.
            PoolClosed: the pool has stopped.
        """
        if type(fn_or_data) is FunctionType:  # the fast path: a plain function, by reference
            try:
                payload = _pdumps((fn_or_data, args, kwargs or None), 5)
            except Exception:
                payload = b"__main__"  # take the slow path, which explains the failure
            if b"__main__" in payload:
                payload = _codec.encode_call(fn_or_data, args, kwargs)
            return self._queue(payload, KIND_CALL)
        payload, kind, options = self._encode(fn_or_data, args, kwargs)
        return self._queue(payload, kind, **options)

    @staticmethod
    def _encode(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[bytes, int, dict[str, Any]]:
        """``(payload, kind, options)`` of what ``task()`` was given (any backend may use it)."""
        if type(obj) is Task:
            return _codec.encode_call(obj.fn, obj.args, obj.kwargs), KIND_CALL, _options(obj, args, kwargs)
        if isinstance(obj, ServiceTask) or not callable(obj) or isinstance(obj, type):
            return _codec.encode_data(obj), KIND_DATA, _options(obj, args, kwargs)
        return _codec.encode_call(obj, args, kwargs), KIND_CALL, {}

    def _queue(self, payload: bytes, aux: int, timeout: float | None = None, retries: int | None = None) -> int:
        comp = self._comp
        if comp is None or (comp.loop is not None and comp.loop.is_closed()):
            comp = self._claim()
        if self._state[0]:
            if self._state[0] == _RESTARTING:
                raise PoolClosed("the pool's supervisor died and is being restarted: try again in a moment")
            raise PoolClosed("the task pool has stopped; no more tasks can be queued")
        if retries is None:
            retries = self.retries
        if retries:
            task_id = self._push_retriable(comp, _Retry(payload, aux, timeout, retries, 0))
        else:
            task_id = self._push(comp, payload, aux, timeout, 1, 0)
        comp.sent += 1
        return task_id

    def _push_retriable(self, comp: _Completions, retry: _Retry) -> int:
        """Queue (again) a task that may be retried; its finish is matched
        to ``retry`` by the seq it gets. The reader waits while
        ``registering``, so a finish cannot overtake the registration."""
        with comp.lock:
            comp.registering += 1
        try:
            seq = self._push(comp, retry.payload, retry.aux, retry.timeout, retry.attempt, retry.task_id)
            retry.task_id = retry.task_id or seq
            comp.retries[seq] = retry
        finally:
            with comp.lock:
                comp.registering -= 1
        return seq

    def _push(
        self, comp: _Completions, payload: bytes, aux: int, timeout: float | None, attempt: int, task_id: int
    ) -> int:
        """Write a task into the submit ring; returns its seq."""
        if timeout is not None or attempt > 1:
            payload = _codec.with_options(payload, timeout, attempt, task_id)
            aux |= OPTS | (TIMED if timeout is not None else 0)
        if len(payload) > self._spill_at:
            if len(payload) > self.max_payload_bytes:
                raise ValueError(
                    f"the task is {len(payload)} bytes pickled, more than max_payload_bytes={self.max_payload_bytes}"
                )
            payload = _codec.spill(payload, self._spill_dir)
            aux |= SPILLED
        try:
            return self._submit.push(payload, aux=comp.index | aux, timeout=self.queue_timeout)
        except RingFull:
            if aux & SPILLED:
                os.unlink(os.fsdecode(payload))
            if not _alive(self.supervisor_pid):
                raise PoolClosed(f"the pool's supervisor (pid {self.supervisor_pid}) is gone") from None
            raise QueueFull(
                f"the task queue stayed full for queue_timeout={self.queue_timeout}s "
                f"({self._submit.stats().records} tasks waiting): the task was not queued"
            ) from None

    # -- waiting for results ---------------------------------------------------

    def taskwait(self, fn_or_data: Any, /, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Queue a task and wait up to ``timeout`` seconds for its return value.

        Raises:
            TaskFailed: it did not finish ``ok`` (``.event`` says why).
            TimeoutError: it did not finish in time (it still runs, and its
                finish still reaches ``on_finish``).
            RuntimeError: called on the event loop that delivers finishes
                (use ``await task_async(...)`` there).
        """
        event = self._wait_ids([self._queue_waited(fn_or_data, args, kwargs)], timeout)[0]
        if event is None:
            raise TimeoutError(f"task did not finish within {timeout}s")
        if not event.ok:
            raise TaskFailed(event)
        return event.return_value

    def taskwait_multi(self, tasks: Sequence[Any], *, timeout: float | None = None) -> list[TaskFinishEvent | None]:
        """Queue several tasks (callables, :class:`~taskmw.Task`\\ s or data
        objects) and wait up to ``timeout`` seconds for all of them.

        Returns their finish events in order; ``None`` for any that had not
        finished in time (like Swoole's ``taskWaitMulti``).
        """
        ids = [self._queue_waited(t, (), {}) for t in tasks]
        return self._wait_ids(ids, timeout)

    async def task_async(self, fn_or_data: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Queue a task and ``await`` its return value (for ASGI apps).

        Raises:
            TaskFailed: it did not finish ``ok``.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[TaskFinishEvent] = loop.create_future()
        task_id = self._queue_waited(fn_or_data, args, kwargs)
        comp = self._comp
        assert comp is not None

        if comp.loop is loop:
            deliver: Callable[[TaskFinishEvent], None] = fut.set_result
        else:

            def deliver(ev: TaskFinishEvent) -> None:
                loop.call_soon_threadsafe(_set_result, fut, ev)

        with comp.lock:
            early = comp.expect(task_id, deliver)
        if early is not None:
            fut.set_result(early)
        try:
            event = await fut
        finally:
            if not fut.done():
                with comp.lock:
                    comp.waiters[task_id] = None  # abandoned: drop its finish when it comes
        if not event.ok:
            raise TaskFailed(event)
        return event.return_value

    def _queue_waited(self, obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
        payload, kind, options = self._encode(obj, args, kwargs)
        return self._queue(payload, kind | WANT, **options)

    def _wait_ids(self, ids: list[int], timeout: float | None) -> list[TaskFinishEvent | None]:
        comp = self._comp
        assert comp is not None
        if comp.loop is not None and _running_loop() is comp.loop:
            raise RuntimeError("taskwait() would block the event loop that delivers finishes: await task_async()")
        futs: dict[int, concurrent.futures.Future[TaskFinishEvent]] = {}
        with comp.lock:
            for task_id in ids:
                fut: concurrent.futures.Future[TaskFinishEvent] = concurrent.futures.Future()
                early = comp.expect(task_id, fut.set_result)
                if early is not None:
                    fut.set_result(early)
                futs[task_id] = fut
        if len(futs) == 1:
            try:
                next(iter(futs.values())).result(timeout)
            except concurrent.futures.TimeoutError:
                pass
        else:
            concurrent.futures.wait(futs.values(), timeout=timeout)
        out: list[TaskFinishEvent | None] = []
        with comp.lock:
            for task_id, fut in futs.items():
                if fut.done():
                    out.append(fut.result())
                else:
                    comp.waiters[task_id] = None
                    out.append(None)
        return out

    # -- this process's completion channel ---------------------------------------

    def _claim(self) -> _Completions:
        """Claim a free completion channel and start reading it: on the running
        event loop if there is one, else on a thread."""
        with self._claim_lock:
            if self._comp is not None and (self._comp.loop is None or not self._comp.loop.is_closed()):
                return self._comp
            if self._comp is not None:  # its event loop closed: keep the channel, read it anew
                comp = self._comp
                comp.loop = None
            else:
                comp = self._claim_channel()
            loop = _running_loop()
            if loop is not None:
                comp.loop = loop
                loop.add_reader(comp.ring.fileno(), self._on_readable, comp)
                if comp.ring.arm():
                    loop.call_soon(self._on_readable, comp)
            else:
                comp.thread = threading.Thread(
                    target=self._read_forever, args=(comp,), name=f"taskmw-finishes-{comp.index}", daemon=True
                )
                comp.thread.start()
            self._comp = comp
            return comp

    def _claim_channel(self) -> _Completions:
        for index, ring in enumerate(self._channels):
            try:
                fcntl.lockf(ring.memfd(), fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
            except OSError:
                continue
            floor = self._submit.stats().next_seq
            stale = 0
            while True:
                batch = ring.try_pop_many(256)
                if not batch.records:
                    break
                stale += len(batch.records)
            if stale:
                log.info("completion channel %d: dropped %d finishes of its previous owner", index, stale)
            return _Completions(index, ring, floor)
        raise PoolClosed(
            f"all {len(self._channels)} completion channels are claimed by live processes: "
            "raise max_dispatchers to let more processes queue tasks"
        )

    def _read_forever(self, comp: _Completions) -> None:
        while True:
            batch = comp.ring.pop_many(256, timeout=None)
            if self._deliver(comp, batch):
                return

    def _on_readable(self, comp: _Completions) -> None:
        ring = comp.ring
        ring.disarm()
        while True:
            batch = ring.try_pop_many(256)
            if batch.records:
                self._deliver(comp, batch)
                continue
            if not ring.arm():
                return  # armed and empty: wait for the eventfd
            ring.disarm()

    def _deliver(self, comp: _Completions, batch: Batch) -> bool:
        """Run ``on_finish`` for each finish of a batch; True if the stop marker came."""
        stop = False
        delivered = 0
        impls = self._finish_impls()
        floor, recent, retries = comp.floor, comp.recent, comp.retries
        for rec, aux in zip(batch.records, batch.auxs, strict=True):
            if aux & READER_STOP:
                stop = True
                continue
            try:
                if aux & SPILLED:
                    rec = _codec.unspill(rec)
                event = _codec.decode_finish(rec)
            except Exception:
                log.exception("completion channel %d: an unreadable finish record was dropped", comp.index)
                continue
            seq = event.task_id
            if seq < floor:
                log.warning("dropped the finish of task %d, queued by an earlier process", seq)
                continue
            if seq in recent:  # its worker died after sending it: the supervisor's "lost" comes too
                log.debug("dropped a second finish for task %d (%s)", seq, event.status)
                continue
            recent[seq] = None
            if len(recent) > _RECENT:
                recent.popitem(last=False)
            if retries or comp.registering:
                retry = self._retry_of(comp, seq)
                if retry is not None:
                    if event.status in _RETRIED and retry.left > 0:
                        self._schedule_retry(comp, retry)
                        continue
                    event = event._replace(task_id=retry.task_id, attempts=retry.attempt)
            delivered += 1
            self._hand_over(comp, event, aux & WANT, impls)
        if delivered:
            _count_done(comp, delivered)
        return stop

    def _finish_impls(self) -> list[tuple[Callable[..., Any], bool, Any]]:
        """The ``on_finish`` implementations in call order, each with whether
        it takes the event (and itself, for error messages)."""
        return [(impl.function, bool(impl.argnames), impl) for impl in reversed(self.hook.on_finish.get_hookimpls())]

    def _hand_over(self, comp: _Completions, event: TaskFinishEvent, want: int, impls: list[Any]) -> None:
        """Give a task's final finish to its waiter and the ``on_finish`` hooks."""
        if want:
            with comp.lock:
                if event.task_id in comp.waiters:
                    deliver = comp.waiters.pop(event.task_id)
                    if deliver is not None:
                        deliver(event)
                else:
                    comp.early[event.task_id] = event
        for fn, takes_event, impl in impls:
            try:
                if takes_event:
                    fn(event)
                else:
                    fn()
            except Exception:
                log.exception("plugin %s failed in on_finish", impl.plugin_name)

    def _retry_of(self, comp: _Completions, seq: int) -> _Retry | None:
        """The retry record of ``seq`` (None: it has none). A finish that
        comes while a retriable task is being queued waits for that."""
        retry = comp.retries.pop(seq, None)
        if retry is None and comp.registering:
            deadline = time.monotonic() + 1.0
            while retry is None and comp.registering and time.monotonic() < deadline:
                time.sleep(0.0005)
                retry = comp.retries.pop(seq, None)
        return retry

    def _schedule_retry(self, comp: _Completions, retry: _Retry) -> None:
        """Queue a failed task again after its backoff (on a timer thread)."""
        delay = self.retry_backoff * 2 ** (retry.attempt - 1)
        retry.attempt += 1
        retry.left -= 1

        def requeue() -> None:
            try:
                self._push_retriable(comp, retry)
            except Exception as exc:
                log.warning("task %d could not be queued again: %s", retry.task_id, exc)
                error = TaskError(type(exc).__qualname__, str(exc), "")
                event = TaskFinishEvent(retry.task_id, "error", None, error, 0.0, -1, retry.attempt - 1)
                self._hand_over(comp, event, retry.aux & WANT, self._finish_impls())
                _count_done(comp, 1)

        timer = threading.Timer(delay, requeue)
        timer.daemon = True
        timer.start()

    # -- lifetime ------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The pool now, as plain data (what ``taskmw status`` shows).

        ``{"supervisor_pid", "task_workers", "queue_depth", "workers": [{"worker_id",
        "pid", "state", "task_id", "task_started", "tasks_done", "rss_bytes",
        "restarts"}, ...], "totals": {status: count}}``: ``state`` is one of
        ``starting``, ``idle``, ``busy``, ``stopping``; ``task_started`` is a
        ``time.time()`` value; ``totals`` counts every finish the pool made.
        Works in every process that shares the pool.
        """
        out = self._table.snapshot()
        out["supervisor_pid"] = self.supervisor_pid
        out["task_workers"] = self.task_workers
        out["queue_depth"] = self._submit.stats().records
        return out

    def reload(self) -> None:
        """Replace every task worker by a fresh one: each finishes the tasks
        it holds, exits, and the supervisor forks its successor (new code
        imported since the pool was built is then used). Queued tasks wait,
        nothing is dropped. Idle workers go within a second."""
        if self.closed:
            raise PoolClosed("the task pool has stopped")
        self._table.words[self._table.sup + _table.GENERATION] += 1

    @property
    def closed(self) -> bool:
        """True once the pool stopped taking tasks."""
        return self._closed or self._state[0] == 1

    def close(self, timeout: float | None = None) -> None:
        """Stop the pool (in the process that built it) or leave it (in any
        other): queued tasks run for up to ``shutdown_timeout`` seconds, the
        rest finish ``cancelled``, and this process's finishes are delivered
        before ``close()`` returns. No process of the pool is left behind.
        """
        if self._closed:
            return
        self._closed = True
        timeout = self.shutdown_timeout if timeout is None else timeout
        if os.getpid() == self._owner:
            self._stop_supervisor(timeout)
        comp, self._comp = self._comp, None
        if comp is not None:
            loop = comp.loop
            if comp.thread is not None or (loop is not None and loop.is_running() and _running_loop() is not loop):
                deadline = time.monotonic() + timeout
                with comp.lock:  # wait for the finishes of this process's tasks, while the pool lives
                    while not comp.idle.wait_for(lambda: comp.done >= comp.sent, timeout=0.25):
                        if time.monotonic() > deadline or not _alive(self.supervisor_pid):
                            break
            self._stop_reader(comp)
        if os.getpid() == self._owner:
            shutil.rmtree(self._spill_dir, ignore_errors=True)
        _live.discard(self)

    def _stop_supervisor(self, timeout: float) -> None:
        self._state[0] = 1
        pid = self.supervisor_pid
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout + 5.0
        while True:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else (an app server's arbiter)
                done = pid if not _alive(pid) else 0
            if done:
                return
            if time.monotonic() > deadline:
                log.error("supervisor %d did not stop within %.1fs: killing it", pid, timeout + 5.0)
                os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 5.0
            time.sleep(0.01)

    def _stop_reader(self, comp: _Completions) -> None:
        if comp.thread is not None:
            comp.ring.push(b"", aux=READER_STOP, timeout=5.0)
            comp.thread.join(5.0)
        elif comp.loop is not None and not comp.loop.is_closed():
            try:
                comp.loop.remove_reader(comp.ring.fileno())
            except RuntimeError:  # the loop is closing from another thread
                pass
        try:
            fcntl.lockf(comp.ring.memfd(), fcntl.LOCK_UN, 1, 0)
        except OSError:
            pass

    def __enter__(self) -> TaskServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "running"
        return f"<TaskServer {state} task_workers={self.task_workers} supervisor={self.supervisor_pid}>"

    # -- in forked processes ----------------------------------------------------

    def _forget_process_state(self) -> None:
        """After fork: this process has claimed no channel and runs no reader."""
        self._comp = None
        self._claim_lock = threading.Lock()


def _count_done(comp: _Completions, n: int) -> None:
    """``n`` more of this process's tasks got their final finish."""
    with comp.lock:
        comp.done += n
        if comp.done >= comp.sent:
            comp.idle.notify_all()


def _set_result(fut: asyncio.Future[TaskFinishEvent], event: TaskFinishEvent) -> None:
    if not fut.done():
        fut.set_result(event)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _check_no_wrappers(pm: pluggy.PluginManager) -> None:
    for name in ("on_task", "on_finish", "on_worker_start", "on_worker_stop"):
        for impl in getattr(pm.hook, name).get_hookimpls():
            if impl.hookwrapper or impl.wrapper:
                raise ValueError(
                    f"plugin {impl.plugin_name!r}: {name} cannot be a hook wrapper "
                    "(taskmw calls its implementations one by one)"
                )


def _options(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The per-task options (``timeout``, ``retries``) given with a Task or data object."""
    if args:
        raise TypeError(
            f"task() got positional arguments with a {type(obj).__qualname__}: only a plain callable takes "
            "arguments (put them in the Task)"
        )
    unknown = set(kwargs) - {"timeout", "retries"}
    if unknown:
        raise TypeError(
            f"task() got unexpected keyword arguments {sorted(unknown)} with a {type(obj).__qualname__}: "
            "the options are timeout= and retries= (a Task's own arguments go in the Task)"
        )
    if kwargs.get("timeout") is not None:
        _check_seconds("timeout", kwargs["timeout"], positive=True)
    if kwargs.get("retries") is not None:
        _check_int("retries", kwargs["retries"], 0, 1000)
    return kwargs


def _load_backend(name: str) -> Callable[..., Any]:
    """The factory of the backend called ``name`` (entry-point group ``taskmw.backends``)."""
    found = {ep.name: ep for ep in entry_points(group=BACKEND_GROUP)}
    if name not in found:
        known = ", ".join(repr(n) for n in ["local", *sorted(found)])
        raise ValueError(f"backend must be one of {known}, got {name!r} (is its plugin installed?)")
    factory: Callable[..., Any] = found[name].load()
    return factory


def plugin_manager(
    plugins: Iterable[object],
    listeners: Mapping[type, Sequence[Listener]] | None,
    entrypoints: bool,
    disable_plugins: Iterable[str],
) -> pluggy.PluginManager:
    """The plugin manager of a pool (any backend): the built-in plugins, the
    installed ones (unless disabled), then ``plugins``.

    Raises:
        ValueError: ``disable_plugins`` is not a list of names, or a plugin
            implements a hook as a wrapper.
    """
    names = [] if isinstance(disable_plugins, str) else list(disable_plugins)
    if isinstance(disable_plugins, str) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"disable_plugins must be a list of plugin names, got {disable_plugins!r}")
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(Invoker(), "taskmw.invoker")
    pm.register(Dispatcher(listeners or {}), "taskmw.dispatcher")
    pm.register(DeferredResolver(), "taskmw.deferred")
    disabled = set(names) | {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}
    if entrypoints and "*" not in disabled:
        _load_entrypoints(pm, disabled)
    for plugin in plugins:
        pm.register(plugin)
    _check_no_wrappers(pm)
    return pm


DISABLE_ENV = "TASKMW_DISABLE_PLUGINS"
_failed_plugins: set[str] = set()  # entry points that failed to load in this process: reported once


def _load_entrypoints(pm: pluggy.PluginManager, disabled: set[str]) -> None:
    """Register the plugins of the entry-point group ``taskmw`` but the
    ``disabled`` ones; one that fails to load is logged once per process, by
    name, and skipped."""
    for ep in entry_points(group=hookspecs.PROJECT):
        if ep.name in disabled:
            log.debug("taskmw plugin %r is disabled", ep.name)
            continue
        if pm.has_plugin(ep.name) or pm.is_blocked(ep.name) or ep.name in _failed_plugins:
            continue
        try:
            pm.register(ep.load(), name=ep.name)
        except Exception:
            _failed_plugins.add(ep.name)
            log.exception("taskmw plugin %r (%s) failed to load and is skipped", ep.name, ep.value)


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an int in {lo}..{hi}, got {value!r}")


def _check_seconds(name: str, value: object, *, positive: bool = False) -> None:
    lo = "> 0" if positive else ">= 0"
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not 0 <= value < 1e9
        or (positive and value == 0)
    ):
        raise ValueError(f"{name} must be a number of seconds {lo}, got {value!r}")


def _after_fork_in_child() -> None:
    for server in list(_live):
        server._forget_process_state()


def _close_all_at_exit() -> None:
    for server in list(_live):
        try:
            server.close()
        except Exception:
            log.exception("closing %r at exit failed", server)


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all_at_exit)
