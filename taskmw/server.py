"""The user's side of a pool: :class:`TaskServer` queues tasks and hands
back their outcomes, whatever the backend.

Where a task goes (four files): it is **queued** here (:meth:`TaskServer.task`
encodes it and hands it to the backend's transport; the local pool's writes a
record into the shared submit ring, :mod:`taskmw.pool`), **carried** by
:mod:`taskmw.ring`, **run** by :mod:`taskmw.worker`, and **finished** by
:mod:`taskmw.delivery` in the process that queued it: its completion reader
(:mod:`taskmw.channel`) hands the finish record over, and it becomes a
:class:`~taskmw.TaskFinishEvent` for the waiter and the ``on_finish`` hooks.

Backends are transports (:class:`taskmw.interfaces.Transport`): ``"local"``
(:mod:`taskmw.local`), ``"eager"`` (:mod:`taskmw.eager`) and those installed
in the entry-point group ``taskmw.backends`` (``"celery"``).
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import FunctionType
from typing import Any

import pluggy

from taskmw import _codec, records
from taskmw.backends import BACKEND_ENV, backend_factory
from taskmw.channel import running_loop
from taskmw.delivery import Delivery
from taskmw.errors import TaskFailed, UnknownTask
from taskmw.events import TaskFinishEvent
from taskmw.info import TaskInfo
from taskmw.interfaces import Transport
from taskmw.listeners import Listener
from taskmw.plugins import plugin_manager
from taskmw.records import Kind, Options, encode_submit, encode_task
from taskmw.retries import Retries, Retry
from taskmw.schedule import MissedRuns, Periodic, schedule_of
from taskmw.settings import Settings
from taskmw.tasks import OPTIONS_ATTR, ServiceTask, Task, _set_default, check_not_options
from taskmw.tasktable import task_name_field

log = logging.getLogger(__name__)

_live: weakref.WeakSet[TaskServer] = weakref.WeakSet()
_CALL = records.submit_header(Kind.CALL)
_CALL_WANT = records.submit_header(Kind.CALL, want=True)
_OPTIONS = OPTIONS_ATTR


def create_server(task_workers: int = 4, *, backend: str | None = None, **settings: Any) -> TaskServer:
    """Build a server on ``backend`` (``"local"``, ``"eager"``, ``"celery"``,
    …; default: the ``TASKMW_BACKEND`` environment variable, else
    ``"local"``) from :class:`TaskServer`'s arguments.

    Raises:
        ValueError: a setting is out of range, or ``backend`` names no
            installed backend.
        TypeError: a setting the backend does not know.
    """
    return TaskServer(task_workers, backend=backend, **settings)


class TaskServer:
    """A pool of pre-forked task worker processes.

    The pool is forked when it is built: a supervisor process starts
    ``task_workers`` workers, replaces any that die, and stops them when the
    pool closes (or when the process that built it exits). Every process
    forked later from the builder (gunicorn's HTTP workers with
    ``--preload``) shares the pool, and so do sibling HTTP workers that each
    import the app (gunicorn without ``--preload``, ``uvicorn --workers N``):
    the first builds the pool and the others join it (``share``).

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
        queue_bytes, queue_timeout, task_concurrency, shutdown_timeout,
        max_dispatchers, channel_bytes, task_records, result_bytes,
        result_ttl, finish_delay, start_delay, wait_spin, task_timeout, retries, retry_backoff,
        max_tasks_per_worker, max_payload_bytes, spill_dir, spill_bytes,
        record_arguments, builder_dumpable, share, max_worker_memory,
        missed_runs, schedule_file: the pool's settings, each
            described in :class:`taskmw.Settings` (and, with its
            ``taskmw start`` flag, in docs/configuration.md).
        schedule: the pool's periodic tasks (:class:`taskmw.Periodic`), run
            once per due time per pool by its supervisor; ``None`` (the
            default): the functions decorated with ``@taskmw.periodic`` that
            were imported before this pool is built
            (:func:`taskmw.periodic_tasks`); a list: exactly those entries.

        backend: where tasks run: ``"local"`` (this pool) or the name of a
            backend installed in the entry-point group ``taskmw.backends``
            (``"eager"``, ``"celery"``, …), which then builds the server from
            the same arguments. Defaults to the ``TASKMW_BACKEND``
            environment variable, else ``"local"``. :func:`taskmw.create_server`
            does the same.
        **backend_options: settings of the backend (the Celery backend's
            ``celery_app``); the local pool takes none.

    Raises:
        ValueError: a setting is out of range (the message names it), or
            ``backend`` names no installed backend.
    """

    def __init__(
        self,
        task_workers: int = 4,
        *,
        backend: str | None = None,
        plugins: Iterable[object] = (),
        listeners: Mapping[type, Sequence[Listener]] | None = None,
        entrypoints: bool = True,
        disable_plugins: Iterable[str] = (),
        queue_bytes: int = Settings.queue_bytes,
        queue_timeout: float = Settings.queue_timeout,
        task_concurrency: int = Settings.task_concurrency,
        shutdown_timeout: float = Settings.shutdown_timeout,
        max_dispatchers: int = Settings.max_dispatchers,
        channel_bytes: int = Settings.channel_bytes,
        task_records: int = Settings.task_records,
        result_bytes: int = Settings.result_bytes,
        result_ttl: float = Settings.result_ttl,
        finish_delay: float = Settings.finish_delay,
        start_delay: float = Settings.start_delay,
        wait_spin: float = Settings.wait_spin,
        task_timeout: float | None = Settings.task_timeout,
        retries: int = Settings.retries,
        retry_backoff: float = Settings.retry_backoff,
        max_tasks_per_worker: int | None = Settings.max_tasks_per_worker,
        max_payload_bytes: int = Settings.max_payload_bytes,
        spill_dir: str | None = Settings.spill_dir,
        spill_bytes: int = Settings.spill_bytes,
        builder_dumpable: bool = Settings.builder_dumpable,
        record_arguments: bool = Settings.record_arguments,
        share: str = Settings.share,
        max_worker_memory: int | str | None = Settings.max_worker_memory,
        schedule: Iterable[Periodic] | None = None,
        missed_runs: MissedRuns = Settings.missed_runs,
        schedule_file: str | None = Settings.schedule_file,
        **backend_options: Any,
    ) -> None:
        self.settings = Settings(
            task_workers=task_workers,
            queue_bytes=queue_bytes,
            queue_timeout=queue_timeout,
            task_concurrency=task_concurrency,
            shutdown_timeout=shutdown_timeout,
            max_dispatchers=max_dispatchers,
            channel_bytes=channel_bytes,
            task_records=task_records,
            result_bytes=result_bytes,
            result_ttl=result_ttl,
            finish_delay=finish_delay,
            start_delay=start_delay,
            wait_spin=wait_spin,
            task_timeout=task_timeout,
            retries=retries,
            retry_backoff=retry_backoff,
            max_tasks_per_worker=max_tasks_per_worker,
            max_payload_bytes=max_payload_bytes,
            spill_dir=spill_dir,
            spill_bytes=spill_bytes,
            builder_dumpable=builder_dumpable,
            record_arguments=record_arguments,
            share=share,
            max_worker_memory=max_worker_memory,  # type: ignore[arg-type] # a size string becomes bytes
            schedule=schedule_of(None if schedule is None else tuple(schedule)),
            missed_runs=missed_runs,
            schedule_file=schedule_file,
        )
        """The pool's settings (:class:`taskmw.settings.Settings`)."""
        self.backend = backend if backend is not None else os.environ.get(BACKEND_ENV) or "local"
        """The backend's name: ``"local"``, ``"eager"``, ``"celery"``, …"""
        factory = backend_factory(self.backend)
        self.plugins = plugin_manager(plugins, listeners, entrypoints, disable_plugins)
        """The pluggy plugin manager. The task workers are forked with the plugins
        given here; one registered later reaches only this process (its ``on_finish``)."""
        self.hook: pluggy.HookRelay = self.plugins.hook
        self.worker_id: int | None = None
        """In a task worker: its index (0 … task_workers-1); elsewhere ``None``."""
        self._closed = False
        self.transport: Transport = factory(self.settings, self, **backend_options)
        """The backend's transport (see :class:`taskmw.interfaces.Transport`)."""
        self._send = self.transport.send
        self._no_retries = not self.settings.retries
        self._wait_here = getattr(self.transport, "wait_here", None)  # see taskmw.interfaces.Transport
        self._new_delivery()
        _live.add(self)
        _set_default(self)
        self.transport.start(self._on_finishes)
        log.debug("%s server started: %d task workers", self.backend, task_workers)

    def _new_delivery(self) -> None:
        """This process's delivery state (at build, and anew after a fork)."""
        retries = Retries(self.transport.send, self.settings.retry_backoff, self.transport.inline)
        self._delivery = Delivery(self.hook, retries, self.transport.name_of)

    def _on_finishes(self, finishes: Sequence[bytes], headers: Sequence[int], floor: int) -> None:
        self._delivery.deliver(finishes, headers, floor)

    @property
    def supervisor_pid(self) -> int | None:
        """The pid of the process that owns the task workers (``None``: no local pool)."""
        return self.transport.supervisor_pid

    @property
    def task_workers(self) -> int:
        """How many task workers the pool has."""
        return self.settings.task_workers

    # -- queuing -------------------------------------------------------------

    def task(self, fn_or_data: Any, /, *args: Any, **kwargs: Any) -> int:
        """Queue a task; returns its id at once.

        ``fn_or_data`` is a callable (run as ``fn(*args, **kwargs)``), a
        :class:`~taskmw.Task` or :class:`~taskmw.ServiceTask`, or any other
        picklable object, which the dispatcher hands to the listeners of its
        type. Ids are unique and increasing across every process of the pool,
        the sibling HTTP workers that joined it included (gunicorn without
        ``--preload``, ``uvicorn --workers N``; see the ``share`` setting), not
        across pools.
        With a Task or data object, keyword arguments are the task's own
        options (a plain callable's all go to it):

        - ``delay=`` seconds or ``eta=`` an aware :class:`~datetime.datetime`:
          run it then, not now (the pool holds it meanwhile: it survives
          this process's exit; ``status()`` says ``scheduled``);
        - ``task_timeout=`` (or ``timeout=``) seconds: its time limit (instead of the pool's);
        - ``retries=`` and ``retry_backoff=``: instead of the pool's.

        Raises:
            TypeError: something cannot be pickled (the message names it),
                arguments were given with a data object, an option is
                unknown, or a plain callable got an option's name
                it has no parameter for (the message says to use a Task).
            ValueError: the task is larger than the queue can carry.
            QueueFull: no room in the queue within ``queue_timeout`` seconds.
            PoolClosed: the pool has stopped.
        """
        if type(fn_or_data) is FunctionType and self._no_retries and _OPTIONS not in fn_or_data.__dict__:
            return self._queue_function(fn_or_data, args, kwargs, _CALL, "task")
        payload, kind, options = encode_task(fn_or_data, args, kwargs)
        return self._queue(payload, records.submit_header(kind), task_name_field(fn_or_data), **options)

    def _queue_function(
        self, fn: FunctionType, args: tuple[Any, ...], kwargs: dict[str, Any], header: int, call: str
    ) -> int:
        """The fast path of :meth:`task` and the waiting calls: a plain
        function without ``@task`` defaults, in a pool without retries."""
        if kwargs:
            check_not_options(fn, kwargs, call=call)
        task_id = self._send(_codec.encode_function_call(fn, args, kwargs), header, None, task_name_field(fn))
        self._delivery.sent += 1
        return task_id

    def _queue(
        self,
        payload: bytes,
        header: int,
        name: bytes,
        timeout: float | None = None,
        retries: int | None = None,
        due: float = 0.0,
        backoff: float | None = None,
    ) -> int:
        if retries is None:
            retries = self.settings.retries
        delivery = self._delivery
        if retries:
            task_id = delivery.retries.queue(Retry(payload, header, timeout, retries, name, due, backoff))
        elif timeout is None and not due:
            task_id = self._send(payload, header, None, name)
        else:
            record, header = encode_submit(payload, header, Options(timeout, due=due))
            task_id = self._send(record, header, None, name)
        delivery.sent += 1
        if due:
            delivery.delayed += 1
        return task_id

    # -- waiting for results ---------------------------------------------------

    def taskwait(self, fn_or_data: Any, /, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Queue a task and wait up to ``timeout`` seconds for its return value.

        The task is given as to :meth:`task` (with a Task, the keyword
        arguments are its options: ``task_timeout=`` is its time limit,
        ``timeout=`` always this wait).

        Raises:
            TaskFailed: it did not finish ``ok`` (``.event`` says why).
            TimeoutError: it did not finish in time (it still runs, and its
                finish still reaches ``on_finish``).
            RuntimeError: called on the event loop that delivers finishes
                (use ``await task_async(...)`` there).
        """
        event = self._wait_ids([self._queue_waited(fn_or_data, args, kwargs, "taskwait")], timeout)[0]
        if event is None:
            raise TimeoutError(f"task did not finish within {timeout}s")
        if not event.ok:
            raise TaskFailed(event)
        return event.return_value

    def taskwait_multi(
        self, tasks: Sequence[Any], *, timeout: float | None = None, **options: Any
    ) -> list[TaskFinishEvent | None]:
        """Queue several tasks (callables, :class:`~taskmw.Task`\\ s or data
        objects) and wait up to ``timeout`` seconds for all of them; the
        per-task ``options`` (as :meth:`task` takes them with a Task) apply
        to each.

        Returns their finish events in order; ``None`` for any that had not
        finished in time (like Swoole's ``taskWaitMulti``).
        """
        ids = [self._queue_waited(_as_task(t) if options else t, (), options, "taskwait_multi") for t in tasks]
        return self._wait_ids(ids, timeout)

    async def task_async(self, fn_or_data: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Queue a task and ``await`` its return value (for ASGI apps).

        Raises:
            TaskFailed: it did not finish ``ok``.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[TaskFinishEvent] = loop.create_future()
        task_id = self._queue_waited(fn_or_data, args, kwargs, "task_async")
        delivery = self._delivery

        if self.transport.reader_loop is loop:
            deliver: Callable[[TaskFinishEvent], None] = functools.partial(_set_result, fut)
        else:

            def deliver(ev: TaskFinishEvent) -> None:
                loop.call_soon_threadsafe(_set_result, fut, ev)

        with delivery.lock:
            early = delivery.expect(task_id, deliver)
        if early is not None:
            fut.set_result(early)
        try:
            event = await fut
        finally:
            if not fut.done() or fut.cancelled():  # given up (cancelled): its finish goes to the hooks only
                with delivery.lock:
                    delivery.abandon(task_id)
        if not event.ok:
            raise TaskFailed(event)
        return event.return_value

    def _queue_waited(self, obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any], call: str) -> int:
        if type(obj) is FunctionType and self._no_retries and _OPTIONS not in obj.__dict__:
            return self._queue_function(obj, args, kwargs, _CALL_WANT, call)
        payload, kind, options = encode_task(obj, args, kwargs, call)
        return self._queue(payload, records.submit_header(kind, want=True), task_name_field(obj), **options)

    # -- any task, from any process ---------------------------------------------------

    def status(self, task_id: int) -> TaskInfo:
        """The record of task ``task_id``, from any process of the pool,
        whichever process queued it: its state (``scheduled``: delayed and not
        due yet, with its due time in ``scheduled_for``; ``queued``,
        ``running``, ``done``), finish status, progress, timings and error.

        Raises:
            UnknownTask: the pool never issued the id, or its record was
                evicted (the message says which).
        """
        return self.transport.status(task_id)

    def result(self, task_id: int, timeout: float | None = None) -> Any:
        """The return value of task ``task_id``, from any process, waiting
        up to ``timeout`` seconds (``None``: as long as it takes) for it to finish.

        Raises:
            TimeoutError: it did not finish in time.
            TaskFailed: it did not finish ``ok`` (``.event`` says why).
            UnknownTask: the pool never issued the id, or its record or its
                result was evicted (results are kept for ``result_ttl``
                seconds, within ``result_bytes``; a result larger than a
                quarter of one worker's share of it is not kept).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.0005
        info = self.transport.status(task_id)
        while info.state != "done":
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"task {task_id} did not finish within {timeout}s (it is {info.state})")
            time.sleep(delay if left is None else min(delay, left))
            delay = min(delay * 2, 0.05)
            info = self.transport.status(task_id)
        kept = self.transport.outcome(task_id)
        if info.status != "ok":
            error = kept.error if kept is not None and kept.error is not None else info.error
            duration = kept.duration if kept is not None else 0.0
            worker_id = info.worker_id if info.worker_id is not None else -1
            status = info.status or "error"
            raise TaskFailed(
                TaskFinishEvent(task_id, status, None, error, duration, worker_id, info.attempts, info.name)
            )
        if kept is None:
            raise UnknownTask(
                task_id,
                "it finished ok but its result was not kept: evicted by newer results (result_bytes="
                f"{self.settings.result_bytes}), or larger than one worker's share allows",
            )
        return kept.value

    def cancel(self, task_id: int, terminate: bool = False) -> bool:
        """Cancel task ``task_id``, from any process: a task still queued
        never runs and finishes ``cancelled`` (exactly one finish, in the
        process that queued it, as ever); with ``terminate=True`` a running
        one is stopped too (its worker is killed and replaced: other tasks
        that worker held finish ``lost``) and finishes ``cancelled``.

        Returns:
            True if it was cancelled; False if it had finished already, or
            runs and ``terminate`` is false.

        Raises:
            UnknownTask: the pool never issued the id, or its record was evicted.
        """
        return self.transport.cancel(task_id, terminate)

    def _wait_ids(self, ids: list[int], timeout: float | None) -> list[TaskFinishEvent | None]:
        delivery = self._delivery
        loop = self.transport.reader_loop
        if loop is not None and running_loop() is loop:
            raise RuntimeError("taskwait() would block the event loop that delivers finishes: await task_async()")
        got: dict[int, TaskFinishEvent] = {}
        woken: list[threading.Event] = []  # made only if this thread sleeps on it (wait_here could not serve)

        def waiter(task_id: int) -> Callable[[TaskFinishEvent], None]:
            def put(event: TaskFinishEvent) -> None:
                got[task_id] = event
                if woken:
                    woken[0].set()

            return put

        with delivery.lock:
            for task_id in ids:
                early = delivery.expect(task_id, waiter(task_id))
                if early is not None:
                    got[task_id] = early
        count = len(ids)
        wait_here = self._wait_here
        # Where it can, this thread reads the finishes itself: one wake-up (see Channel.wait).
        if len(got) < count and (wait_here is None or not wait_here(lambda: len(got) >= count, timeout)):
            deadline = None if timeout is None else time.monotonic() + timeout
            arrived = threading.Event()
            woken.append(arrived)  # (a finish put before this line is in got: the loop sees it)
            while True:
                arrived.clear()
                if len(got) >= count:
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if (left is not None and left <= 0) or not arrived.wait(left):
                    break
        out: list[TaskFinishEvent | None] = []
        with delivery.lock:
            for task_id in ids:
                event = got.get(task_id)
                if event is None:
                    delivery.abandon(task_id)
                out.append(event)
        return out

    # -- lifetime ------------------------------------------------------------------

    def tasks(self, limit: int = 50) -> dict[str, list[TaskInfo]]:
        """The pool's scheduled (delayed, not due yet), queued, running and
        recently finished tasks, from any process: ``{"scheduled": [...],
        "queued": [...], "running": [...], "done": [...]}`` of
        :class:`~taskmw.TaskInfo`, up to ``limit`` each (scheduled soonest
        due first, queued oldest first, done newest first)."""
        return self.transport.tasks(limit)

    def stats(self) -> dict[str, Any]:
        """The pool now, as plain data (what ``taskmw status`` shows).

        ``{"supervisor_pid", "task_workers", "queue_depth", "workers": [{"worker_id",
        "pid", "state", "task_id", "task_started", "tasks_done", "rss_bytes",
        "restarts"}, ...], "totals": {status: count}}``: ``state`` is one of
        ``starting``, ``idle``, ``busy``, ``stopping``; ``task_started`` is a
        ``time.time()`` value; ``totals`` counts every finish the pool made.
        ``"schedule"`` lists the periodic tasks with their next and last run
        (see :func:`taskmw.schedule.schedule_snapshot`); each worker's
        ``"recycled"`` counts its clean replacements and ``"restart_reason"``
        says why its last predecessor went (``"max_tasks"``, ``"memory"``,
        ``"reload"``, ``"died"``; ``None``: none went).
        Works in every process that shares the pool. Other backends say what
        they can (``"backend"`` names them). ``"tasks"`` is :meth:`tasks`
        (each task as a dict).
        """
        out = self.transport.stats()
        out["tasks"] = {k: [i.as_dict() for i in v] for k, v in self.transport.tasks(20).items()}
        return out

    def reload(self) -> None:
        """Replace every task worker by a fresh one: each finishes the tasks
        it holds, exits, and the supervisor forks its successor (new code
        imported since the pool was built is then used). Queued tasks wait,
        nothing is dropped. Idle workers go within a second.

        Raises:
            PoolClosed: the pool has stopped.
        """
        self.transport.reload()

    @property
    def closed(self) -> bool:
        """True once the pool stopped taking tasks."""
        return self._closed or self.transport.closed

    def close(self, timeout: float | None = None) -> None:
        """Stop the pool (in the process that built it) or leave it (in any
        other; in a pool shared by sibling HTTP workers, every member leaves
        it, and the last one to leave stops it): queued tasks run for up to
        ``shutdown_timeout`` seconds, the rest finish ``cancelled``, and this
        process's finishes are delivered (waiters and ``on_finish`` hooks)
        before ``close()`` returns; no hook runs after it. No process of the
        pool is left behind. Delayed tasks not due yet finish ``cancelled``
        when the pool stops; a process that leaves the pool does not wait for
        its own (they run when due).

        It returns once every task this process queued got its finish, or
        when a deadline passes: in a process that did not build the pool,
        ``shutdown_timeout`` for the tasks still running; then, in every
        process, as long as the finishes received keep being delivered, up
        to 5 s between two (a hook that hangs). What was not delivered then
        is logged (a warning with the count). Called on the event loop that
        reads the finishes, it cannot wait for them.
        """
        if self._closed:
            return
        self._closed = True
        timeout = self.settings.shutdown_timeout if timeout is None else timeout
        self.transport.close(timeout)
        loop = self.transport.reader_loop
        delivery = self._delivery
        if loop is None or (loop.is_running() and running_loop() is not loop):
            pending: Callable[[], int] = getattr(self.transport, "pending", _nothing)
            stops_delayed = bool(getattr(self.transport, "stops_delayed", False))  # their cancelled finishes come
            left = delivery.drain(timeout, self.transport.alive, pending, delayed=stops_delayed)
            if left:
                log.warning("close(): %d finish(es) of this process's tasks were not delivered", left)
        delivery.shut = True
        self.transport.stop_receiving()
        _live.discard(self)

    def __enter__(self) -> TaskServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "running"
        return f"<TaskServer {self.backend} {state} task_workers={self.task_workers} supervisor={self.supervisor_pid}>"

    def _after_fork(self) -> None:
        """In a forked child: none of the parent's tasks are this process's."""
        self.transport.after_fork()
        self._new_delivery()


def _nothing() -> int:
    return 0


def _as_task(obj: Any) -> Any:
    """A plain callable as a :class:`~taskmw.Task` (so that options can go with it); anything else as it is."""
    if callable(obj) and not isinstance(obj, (Task, ServiceTask, type)):
        return Task(obj)
    return obj


def _set_result(fut: asyncio.Future[TaskFinishEvent], event: TaskFinishEvent) -> None:
    """Give ``fut`` its finish unless its awaiter gave up (cancelled it)."""
    if not fut.done():
        fut.set_result(event)


def _after_fork_in_child() -> None:
    for server in list(_live):
        server._after_fork()  # noqa: SLF001 - the module's own class


def _close_all_at_exit() -> None:
    for server in list(_live):
        try:
            server.close()
        except Exception:
            log.exception("closing %r at exit failed", server)


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all_at_exit)
