"""The Celery worker side: :func:`install` registers the one generic task
that runs taskmw tasks, with the same pipeline as the local pool's workers
(:func:`taskmw.worker.run_task`: the invoker, the dispatcher,
``resolve_service`` and every ``on_task`` plugin).

Each Celery pool process builds its own server (``TaskServer(backend="celery")``)
from ``install()``'s settings: its plugin manager runs the tasks, it is
``event.server`` and :func:`taskmw.current_server` there (so tasks can queue
tasks), and its ``on_worker_start`` / ``on_worker_stop`` hooks run when the
pool process starts and stops (Celery's ``worker_process_init`` and
``worker_process_shutdown`` signals; with ``--pool solo``, at the first task
and at ``worker_shutdown``).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from billiard.process import current_process
from celery import signals, states
from redis.exceptions import RedisError

from taskmw import TaskServer, _codec
from taskmw.events import TaskError
from taskmw.listeners import Listener
from taskmw.pipeline import error_of, run_task
from taskmw.plugins import call_each, implementations
from taskmw.records import CANCELLED, ERROR, FinishRecord, SubmitRecord, encode_finish
from taskmw.retries import RETRIED
from taskmw.schedule import Periodic, schedule_of
from taskmw.tasks import _reporter
from taskmw_celery.beat import PERIODIC_NAME, add_to_beat, queue_run
from taskmw_celery.settings import IN_WORKER, TASK_NAME, configure
from taskmw_celery.taskrecords import START_CANCELLED, START_OK, TaskRecords

log = logging.getLogger(__name__)


Store = Callable[[bytes], None]
"""Stores a task's finish record as its Celery result."""
_CANCELLED = TaskError("Cancelled", "the task was cancelled before it ran", "")


def _recording(write: Callable[..., Any], *args: Any) -> int:
    """``write(*args)`` to the record of tasks; a failure is logged, not the task's (0 then)."""
    try:
        return int(write(*args) or 0)
    except RedisError as exc:
        log.warning("taskmw: writing the record of tasks to Redis failed: %s", exc)
        return 0


def _report(task_records: TaskRecords, task_id: int, fraction: float, message: str | None) -> None:
    """:func:`taskmw.progress` in a Celery pool process: one Redis write."""
    _recording(task_records.progress, task_id, fraction, message)


class _WorkerProcess:
    """What one Celery pool process keeps for taskmw: its server, the
    ``on_task`` implementations, its worker id and event loops for async tasks."""

    def __init__(self, celery_app: Any, settings: dict[str, Any]) -> None:
        self.pid = os.getpid()
        self.worker_id: int = getattr(current_process(), "index", 0) or 0
        token = IN_WORKER.set(True)
        try:
            self.server = TaskServer(backend="celery", celery_app=celery_app, **settings)
        finally:
            IN_WORKER.reset(token)
        self.server.worker_id = self.worker_id
        self.calls = implementations(self.server.hook.on_task)
        self.records: TaskRecords = self.server.transport.records  # type: ignore[attr-defined]
        self.loops = threading.local()  # an event loop per thread that runs async tasks (--pool threads)
        call_each(self.server.hook.on_worker_start, {"worker_id": self.worker_id, "server": self.server})

    def run(self, seq: int, record: bytes, header: int, limit: float | None, store: Store) -> None:
        """Run one task (a submit record sent under ``seq``, with the hard
        time limit ``limit``) and ``store`` its finish record: with its record
        of tasks marked started before, and finished after (see
        :mod:`taskmw_celery.taskrecords`)."""
        started = time.perf_counter()
        task = SubmitRecord.read(seq, record, header)
        server, worker_id, task_records = self.server, self.worker_id, self.records
        recorded = _recording(task_records.start, task.task_id, worker_id, task.attempt, limit)
        if recorded == START_CANCELLED:
            finish = FinishRecord(seq, task.task_id, CANCELLED, None, _CANCELLED, 0.0, worker_id).encode()
            store(finish)
            _recording(task_records.finished, [(task.task_id, CANCELLED, _CANCELLED)])
            return
        token = _reporter.set(functools.partial(_report, task_records, task.task_id))
        try:
            status, value, error, name = run_task(
                self.calls, server, task.task_id, worker_id, task.payload, task.kind, task.attempt
            )
            if inspect.iscoroutine(value):
                loop = getattr(self.loops, "loop", None)
                if loop is None:
                    loop = self.loops.loop = asyncio.new_event_loop()
                try:
                    value = loop.run_until_complete(value)
                except BaseException as exc:  # noqa: B036 - a task's SystemExit is its failure, as in the local pool
                    status, value, error = ERROR, None, error_of(exc)
        finally:
            _reporter.reset(token)
        duration = time.perf_counter() - started
        fields = (seq, task.task_id, status, value, error, duration, worker_id, name)
        try:
            finish = _codec.dumps(fields)
        except BaseException:  # noqa: B036 - a value's __reduce__ may raise anything
            finish = encode_finish(*fields)  # the error naming the value that cannot be pickled
            status, error = ERROR, FinishRecord.decode(finish).error  # what the record says (it has no value)
        store(finish)
        if recorded == START_OK and not (task.left and status in RETRIED):  # else its queuing process runs it again
            _recording(task_records.finished, [(task.task_id, status, error)])

    def stop(self) -> None:
        """Run ``on_worker_stop`` and close what the process opened."""
        call_each(self.server.hook.on_worker_stop, {"worker_id": self.worker_id, "server": self.server})
        loop = getattr(self.loops, "loop", None)
        if loop is not None:
            loop.close()
        self.server.close()


class _Installed:
    """install()'s settings for one Celery app, and this process's
    :class:`_WorkerProcess` once it runs taskmw tasks."""

    def __init__(self, celery_app: Any, settings: dict[str, Any]) -> None:
        self.celery_app = celery_app
        self.settings = settings
        self.is_worker = False  # set in a worker of this app (its main process, inherited by the pool's)
        self.process: _WorkerProcess | None = None
        self.lock = threading.Lock()

    def get(self) -> _WorkerProcess:
        """This process's :class:`_WorkerProcess`, made (and started) at first use."""
        process = self.process
        if process is None or process.pid != os.getpid():
            with self.lock:
                if self.process is None or self.process.pid != os.getpid():
                    self.process = _WorkerProcess(self.celery_app, self.settings)
                process = self.process
        return process

    def on_worker_init(self, sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is self.celery_app:
            self.is_worker = True

    def on_process_init(self, **_: Any) -> None:
        if self.is_worker:
            try:
                self.get()
            except Exception:
                log.exception("taskmw: starting the Celery pool process failed")

    def on_process_shutdown(self, **_: Any) -> None:
        process, self.process = self.process, None
        if process is not None and process.pid == os.getpid():
            process.stop()


_installed: dict[int, _Installed] = {}


def install(
    celery_app: Any,
    *,
    plugins: Iterable[object] = (),
    listeners: Mapping[type, Sequence[Listener]] | None = None,
    entrypoints: bool = True,
    disable_plugins: Iterable[str] = (),
    acks_late: bool = True,
    time_limit: float | None = None,
    schedule: Iterable[Periodic] | None = None,
) -> Any:
    """Make ``celery_app``'s workers run taskmw tasks: ``celery -A module:app
    worker`` then serves ``TaskServer(backend="celery", celery_app=app)``.

    Call it once, in the module that defines the app, after configuring it.
    It registers the task ``taskmw.run`` and applies the settings listed in
    :mod:`taskmw_celery.settings` (also harmless in the web processes that
    import the same module).

    Args:
        celery_app: the Celery app (Redis result backend).
        plugins, listeners, entrypoints, disable_plugins: the worker side's plugins (``on_task``,
            ``resolve_service``, ``on_worker_start``/``stop``, and ``on_finish``
            for tasks queued by tasks) and the dispatcher's listeners, as
            :class:`~taskmw.TaskServer` takes them.
        acks_late: ``True`` (default): a task whose pool process dies is put
            back on the queue and runs again (at least once); ``False``: it
            finishes ``lost`` (at most once).
        time_limit: hard limit, seconds, of one task (Celery kills the pool
            process; the finish is ``timeout``). Default: the app's
            ``task_time_limit``, else one hour.
        schedule: the periodic tasks, run by ``celery -A module:app beat``
            (see :mod:`taskmw_celery.beat`): ``None`` (default) the
            ``@taskmw.periodic`` functions imported before this call; a
            list: exactly those :class:`taskmw.Periodic` entries.

    Returns:
        The Celery task.

    Raises:
        ValueError: a setting is out of range, or ``install()`` was already
            called for this app.
    """
    if id(celery_app) in _installed:
        raise ValueError(f"taskmw_celery.install() was already called for the Celery app {celery_app.main!r}")
    limit = configure(celery_app, time_limit)
    add_to_beat(celery_app, schedule_of(None if schedule is None else tuple(schedule)))
    settings = {"plugins": list(plugins), "listeners": listeners, "entrypoints": entrypoints}
    state = _Installed(celery_app, {**settings, "disable_plugins": disable_plugins})
    _installed[id(celery_app)] = state

    @celery_app.task(
        name=TASK_NAME,
        bind=True,
        acks_late=acks_late,
        reject_on_worker_lost=acks_late,
        serializer="pickle",
        ignore_result=True,
        store_errors_even_if_ignored=True,
        time_limit=limit,
        typing=False,
    )
    def run(self: Any, seq: int, record: bytes, header: int) -> None:
        request = self.request
        hard = (request.timelimit or (None, None))[0] or limit

        def store(finish: bytes) -> None:
            self.backend.store_result(request.id, finish, states.SUCCESS, request=request)

        state.get().run(seq, record, header, hard, store)

    @celery_app.task(name=PERIODIC_NAME, serializer="pickle", ignore_result=True, typing=False)
    def periodic(payload: bytes) -> int:
        return queue_run(state.get().server, payload)

    signals.worker_init.connect(state.on_worker_init, weak=False)
    signals.worker_process_init.connect(state.on_process_init, weak=False)
    signals.worker_process_shutdown.connect(state.on_process_shutdown, weak=False)
    signals.worker_shutdown.connect(state.on_process_shutdown, weak=False)
    return run
