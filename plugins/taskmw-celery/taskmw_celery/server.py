"""The dispatching side: :class:`CeleryTransport` sends tasks to Celery and
brings their finishes back to the process that sent them.

It is a :class:`taskmw.interfaces.Transport`: :class:`taskmw.TaskServer`
does everything else the same as for the local pool (encoding, per-task
options, retries, waiters, duplicates dropped, the ``on_finish`` hooks).
Here a task gets its id from one Redis counter (``INCR``) and goes out with
``send_task``; its finish comes back through a
:class:`~taskmw_celery.finishes.FinishListener` (a subscription to the
result backend's Redis), and is delivered on the event loop that last
queued a task in this process, if it still runs, else on the listener's thread.
"""

from __future__ import annotations

import asyncio
import datetime
import importlib
import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from taskmw import records
from taskmw.channel import running_loop
from taskmw.errors import PoolClosed, QueueFull
from taskmw.info import TaskInfo
from taskmw.interfaces import Deliver, Registered, Server
from taskmw.records import FinishRecord
from taskmw.settings import Settings
from taskmw_celery.finishes import FinishListener, Pending
from taskmw_celery.settings import IN_WORKER, TASK_NAME, redis_backend
from taskmw_celery.taskrecords import CANCEL_FINISHED as _FINISHED
from taskmw_celery.taskrecords import CANCEL_GONE as _GONE
from taskmw_celery.taskrecords import CANCEL_NOT_STARTED as _NOT_STARTED
from taskmw_celery.taskrecords import TaskRecords

log = logging.getLogger(__name__)

CANCEL_WAIT = 10.0
"""Seconds ``cancel(terminate=True)`` waits for a terminated task's finish."""


class CeleryTransport:
    """Tasks run on Celery workers (``TaskServer(backend="celery", celery_app=app)``).

    The Celery workers run ``celery -A module:app worker`` for an app on which
    :func:`taskmw_celery.install` was called. Ids come from one Redis counter,
    so they are unique and increasing across every process using the app.

    Args:
        settings: the server's settings. Used here: ``shutdown_timeout`` (how
            long ``close()`` waits for this process's finishes),
            ``task_timeout`` and a task's ``timeout`` (Celery's per-task hard
            time limit), ``retries`` and ``retry_backoff`` (as in the local
            pool: this process queues a failed task again), and
            ``max_payload_bytes``. The others are checked and unused.
        server: the server (only ``on_finish`` runs in this process; the
            Celery workers get their plugins and ``listeners`` from ``install()``).
        celery_app: the Celery app (its result backend must be Redis), or
            where to import it from (``"module:attribute"``). Default: the
            ``TASKMW_CELERY_APP`` environment variable, so that
            ``TASKMW_BACKEND=celery TASKMW_CELERY_APP=proj.celery:app``
            moves an app to Celery with no code change.

    Raises:
        ValueError: no Celery app, or its result backend is not Redis.
        TypeError: an unknown setting.
    """

    inline = False
    supervisor_pid = None

    def __init__(self, settings: Settings, server: Server, *, celery_app: Any = None, **unknown: Any) -> None:
        if unknown:
            raise TypeError(f"the celery backend got unknown settings: {', '.join(sorted(unknown))}")
        celery_app = _find_app(celery_app)
        dispatcher = server.plugins.get_plugin("taskmw.dispatcher")
        if getattr(dispatcher, "listeners", None) and not IN_WORKER.get():
            log.warning(
                "listeners given to the dispatching side of the celery backend are not used: the Celery workers "
                "dispatch data objects, give them to taskmw_celery.install(app, listeners=...)"
            )
        self._settings = settings
        self._backend = redis_backend(celery_app)
        self.records = TaskRecords(self._backend, settings.result_ttl, settings.task_records)
        """The record of tasks (:class:`~taskmw_celery.taskrecords.TaskRecords`)."""
        self.celery_app = celery_app
        """The Celery app tasks are sent with."""
        self._deliver: Deliver | None = None
        self._closed = False
        self.after_fork()

    def after_fork(self) -> None:
        """After fork (and at first): this process has sent nothing and listens to nothing."""
        self._lock = threading.Lock()
        self._listener: FinishListener | None = None
        self._pending: Pending = {}
        self._prefix = ""
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, deliver: Deliver) -> None:
        """Finishes go to ``deliver`` (the subscription starts at the first send)."""
        self._deliver = deliver

    # -- sending ---------------------------------------------------------------

    def send(self, record: bytes, header: int, registered: Registered | None = None, name: bytes | None = None) -> int:
        """Send one task to Celery; returns its id."""
        if self._closed:
            raise PoolClosed("the task server was closed; no more tasks can be queued")
        if self._listener is None:
            self._listen()
        self._loop = running_loop()
        if len(record) > self._settings.max_payload_bytes:
            limit = self._settings.max_payload_bytes
            raise ValueError(f"the task is {len(record)} bytes pickled, more than max_payload_bytes={limit}")
        opts = records.options_of(record, header)
        own = opts.timeout if opts.timeout is not None else self._settings.task_timeout
        options: dict[str, Any] = {} if own is None else {"time_limit": own}
        if opts.due:  # Celery's worker holds it until then (its eta)
            options["eta"] = datetime.datetime.fromtimestamp(opts.due, datetime.UTC)
        seq = -1
        try:
            seq = self.records.queue(self._prefix, opts.task_id, name, opts.left, opts.attempt, opts.due)
            self._pending[seq] = (records.reply_to(header), time.monotonic(), opts.task_id or seq, opts.left)
            if registered is not None:
                registered(seq)
            self.celery_app.send_task(
                TASK_NAME,
                args=(seq, record, header),
                task_id=f"{self._prefix}{seq}",
                serializer="pickle",
                ignore_result=True,  # the taskmw task stores its finish itself: see README
                **options,
            )
        except _UNREACHABLE as exc:
            self._pending.pop(seq, None)
            raise _queue_full(exc) from exc
        return seq

    @property
    def prefix(self) -> str:
        """The Celery task id prefix of this process's tasks (``""`` until it sends one)."""
        return self._prefix

    def _listen(self) -> None:
        """Subscribe to this process's finishes (once per process)."""
        with self._lock:
            if self._listener is not None:
                return
            prefix = f"taskmw-{os.urandom(5).hex()}-"
            try:
                self._listener = FinishListener(self._backend, prefix, self._pending, self._on_finishes, self.records)
            except _UNREACHABLE as exc:
                raise _queue_full(exc) from exc
            self._prefix = prefix

    def _on_finishes(self, finishes: Sequence[bytes], headers: Sequence[int]) -> None:
        """On the listener's thread: deliver (on the event loop that queued, if any)."""
        assert self._deliver is not None, "start() was not called"
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._deliver, finishes, headers, 0)
                return
            except RuntimeError:  # closed meanwhile
                pass
        self._deliver(finishes, headers, 0)

    # -- the record of tasks --------------------------------------------------------

    def status(self, task_id: int) -> TaskInfo:
        """The record of a task, from any process using the app (see
        :mod:`taskmw_celery.taskrecords`).

        Raises:
            UnknownTask: never issued, expired or evicted.
        """
        return self.records.status(task_id)

    def name_of(self, task_id: int) -> str:
        """Celery's finishes carry their name (the worker read the task); the
        ones Celery makes itself (lost, revoked) have none here."""
        return ""

    def outcome(self, task_id: int) -> FinishRecord | None:
        """The finish record of a done task: Celery's stored result of its last run."""
        return self.records.outcome(task_id)

    def cancel(self, task_id: int, terminate: bool = False) -> bool:
        """Cancel a task, from any process using the app: one not started is
        marked cancelled in its record (the worker that takes it finishes it
        ``cancelled`` without running it) and revoked (Celery drops it and
        stores ``REVOKED``, also ``cancelled``); a running one, with
        ``terminate``, is revoked with ``terminate=True, signal="SIGKILL"``
        (its pool process is killed) and this waits up to
        :data:`CANCEL_WAIT` seconds for its finish.

        Returns:
            True if it will not run, or was stopped; False if it finished
            already, or runs and ``terminate`` is false.

        Raises:
            UnknownTask: never issued, expired or evicted.
        """
        info = self.records.status(task_id)
        if info.state == "done":
            return False
        state, celery_id = self.records.cancel(task_id, terminate)
        if state == _GONE:
            self.records.status(task_id)  # raises UnknownTask with the reason
            return False
        if state == _FINISHED or celery_id is None:
            return False
        if state == _NOT_STARTED:
            try:
                self.celery_app.control.revoke(celery_id)
            except _UNREACHABLE as exc:  # its record says cancelled: a worker that takes it does not run it
                log.warning("revoking task %d failed (%s): it is cancelled when a worker takes it", task_id, exc)
            return True
        if not terminate:
            return False
        self.celery_app.control.revoke(celery_id, terminate=True, signal="SIGKILL")
        deadline, delay = time.monotonic() + CANCEL_WAIT, 0.005
        info = self.records.status(task_id)
        while info.state != "done" and time.monotonic() < deadline:
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
            info = self.records.status(task_id)
        return info.state == "done" and info.status == "cancelled"

    def tasks(self, limit: int = 50) -> dict[str, list[TaskInfo]]:
        """The records of the last :data:`~taskmw_celery.taskrecords.SCAN`
        ids (every process's): queued and running oldest first, done newest first."""
        return self.records.tasks(limit)

    @property
    def reader_loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop finishes are delivered on (``None``: the listener's thread)."""
        loop = self._loop
        return None if loop is None or loop.is_closed() else loop

    @property
    def closed(self) -> bool:
        """True once closed."""
        return self._closed

    def alive(self) -> bool:
        """Celery's workers and Redis outlive this process's server."""
        return True

    def stats(self) -> dict[str, Any]:
        """This process's view: the Celery workers are Celery's (``celery inspect``)."""
        return {"backend": "celery", "pending": len(self._pending), "task_workers": None, "workers": []}

    def reload(self) -> None:
        """Not here: restart the Celery workers (``celery control pool_restart`` or your process manager)."""
        raise NotImplementedError("the celery backend's workers are Celery's: restart them with Celery's tools")

    def close(self, timeout: float) -> None:
        """Stop sending. The Celery workers are not stopped."""
        self._closed = True

    def stop_receiving(self) -> None:
        """Stop listening. Tasks still running on Celery go on; their
        finishes are no longer delivered here (logged)."""
        if self._listener is not None:
            self._listener.stop()
        left = len(self._pending)
        if left:
            log.warning("closed with %d tasks still running on Celery: their finishes will not be delivered", left)

    def __repr__(self) -> str:
        return f"<CeleryTransport celery_app={self.celery_app.main!r}>"


APP_ENV = "TASKMW_CELERY_APP"


def _find_app(celery_app: Any) -> Any:
    """The Celery app given, or imported from ``"module:attribute"`` (or ``$TASKMW_CELERY_APP``)."""
    if celery_app is None:
        celery_app = os.environ.get(APP_ENV) or None
    if isinstance(celery_app, str):
        module, _, attr = celery_app.partition(":")
        if not module or not attr:
            raise ValueError(f"celery_app must be a Celery app or 'module:attribute', got {celery_app!r}")
        celery_app = getattr(importlib.import_module(module), attr)
    if celery_app is None or not hasattr(celery_app, "send_task"):
        raise ValueError(
            f"the celery backend needs celery_app=<a Celery app> (or {APP_ENV}=module:attribute), got {celery_app!r}"
        )
    return celery_app


_UNREACHABLE = (RedisError, OperationalError, TimeoutError)


def _queue_full(exc: BaseException) -> QueueFull:
    return QueueFull(f"the task was not queued: Celery's broker or Redis could not be reached: {exc}")
