"""The dispatching side: :class:`CeleryServer` sends tasks to Celery and
delivers their finishes to the process that sent them.

It is a :class:`taskmw.TaskServer` whose queue is Celery's: ``task()``,
``taskwait()``, ``taskwait_multi()``, ``task_async()``, ``_queue`` (with
retries), the plugin manager and the delivery of finishes (``_deliver``:
``on_finish`` hooks, waiters, retries, duplicates dropped) are TaskServer's
own code. This class replaces where a task goes (``_push``: a Redis
``INCR`` for the id, then ``send_task``), where finishes come from
(``_claim``: a :class:`~taskmw_celery.finishes.FinishListener`), ``close()``,
``stats()`` and ``reload()``. It relies on these parts of ``taskmw.server``:
``_Completions`` (a process's waiters and counts), ``_queue``/``_push``,
``_deliver``, ``_state[0]`` (1 once closed), ``_live`` (after-fork reset and
close at exit) and the settings checks.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import threading
import time
from typing import Any

from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from taskmw._codec import KIND_MASK, WANT
from taskmw.errors import QueueFull
from taskmw.ring import Batch
from taskmw.server import TaskServer, _check_int, _check_seconds, _Completions, _live, _running_loop, plugin_manager
from taskmw.tasks import _set_default
from taskmw_celery.finishes import FinishListener, Pending
from taskmw_celery.settings import IDS_KEY, IN_WORKER, TASK_NAME, redis_backend

log = logging.getLogger(__name__)

_SETTINGS = frozenset(inspect.signature(TaskServer.__init__).parameters) - {"self", "task_workers", "backend"}
"""Every TaskServer setting is accepted, so that switching a configured pool
to Celery changes one setting; those of the local pool's shared memory and
processes are unused here."""


class CeleryServer(TaskServer):
    """A taskmw server whose tasks run on Celery workers.

    Built by ``TaskServer(backend="celery", celery_app=app)`` (or
    ``TaskMiddleware(app, backend="celery", celery_app=capp)``), or directly.
    The Celery workers run ``celery -A module:app worker`` for an app on which
    :func:`taskmw_celery.install` was called. Ids come from one Redis counter,
    so they are unique and increasing across every process using the app.

    Args:
        task_workers: unused (the Celery workers' concurrency decides).
        celery_app: the Celery app (its result backend must be Redis), or
            where to import it from (``"module:attribute"``). Default: the
            ``TASKMW_CELERY_APP`` environment variable, so that
            ``TASKMW_BACKEND=celery TASKMW_CELERY_APP=proj.celery:app``
            moves an app to Celery with no code change.
        **settings: :class:`~taskmw.TaskServer`'s. Used here: ``plugins``,
            ``entrypoints``, ``disable_plugins`` (only ``on_finish`` runs in
            this process; the Celery workers get their plugins and
            ``listeners`` from ``install()``), ``shutdown_timeout`` (how long
            :meth:`close` waits for this process's finishes),
            ``task_timeout`` and a task's ``timeout`` (Celery's per-task hard
            time limit), ``retries`` and ``retry_backoff`` (as in the local
            pool: this process queues a failed task again), and
            ``max_payload_bytes``. The others are accepted and unused.

    Raises:
        ValueError: a setting is out of range, or the result backend is not Redis.
        TypeError: an unknown setting.
    """

    _listener: FinishListener | None
    _pending: Pending
    _prefix: str

    def __init__(self, task_workers: int = 4, *, celery_app: Any = None, **settings: Any) -> None:
        if getattr(self, "celery_app", None) is not None:
            return  # TaskServer(backend="celery") built it already; type() calls __init__ again
        unknown = set(settings) - _SETTINGS
        if unknown:
            raise TypeError(f"CeleryServer got unknown settings: {', '.join(sorted(unknown))}")
        celery_app = _find_app(celery_app)
        _check_int("task_workers", task_workers, 1, 1024)
        self.task_workers = task_workers
        self.shutdown_timeout = _seconds(settings, "shutdown_timeout", 30.0)
        self.queue_timeout = _seconds(settings, "queue_timeout", 5.0)
        self.retry_backoff = _seconds(settings, "retry_backoff", 0.5)
        self.retries: int = settings.get("retries", 0)
        _check_int("retries", self.retries, 0, 1000)
        self.max_payload_bytes: int = settings.get("max_payload_bytes", 128 << 20)
        _check_int("max_payload_bytes", self.max_payload_bytes, 1, 1 << 40)
        timeout = settings.get("task_timeout")
        if timeout is not None:
            _check_seconds("task_timeout", timeout, positive=True)
        self.task_timeout = None if timeout is None else float(timeout)
        listeners = settings.get("listeners")
        if listeners and not IN_WORKER.get():
            log.warning(
                "listeners given to the dispatching side of the celery backend are not used: the Celery workers "
                "dispatch data objects, give them to taskmw_celery.install(app, listeners=...)"
            )
        plugins, entrypoints = settings.get("plugins", ()), settings.get("entrypoints", True)
        self.plugins = plugin_manager(plugins, listeners, entrypoints, settings.get("disable_plugins", ()))
        """The pluggy plugin manager (``on_finish`` runs here)."""
        self.hook = self.plugins.hook
        self._backend = redis_backend(celery_app)
        self.celery_app = celery_app
        """The Celery app tasks are sent with."""
        self.worker_id: int | None = None
        """In a Celery worker: the index of its pool process; elsewhere ``None``."""
        self._state = bytearray(1)  # type: ignore[assignment]  # [0] == 1 once closed, like TaskServer's page
        self._closed = False
        self._forget_process_state()
        _live.add(self)
        _set_default(self)

    # -- sending ---------------------------------------------------------------

    def _push(
        self, comp: _Completions, payload: bytes, aux: int, timeout: float | None, attempt: int, task_id: int
    ) -> int:
        """Send one task to Celery (``TaskServer._queue`` calls it, and its
        retries); returns its id (a retry's is new: the finish is mapped back)."""
        if len(payload) > self.max_payload_bytes:
            raise ValueError(
                f"the task is {len(payload)} bytes pickled, more than max_payload_bytes={self.max_payload_bytes}"
            )
        limit = timeout if timeout is not None else self.task_timeout
        options = {} if limit is None else {"time_limit": limit}
        seq = -1
        try:
            seq = self._backend.client.incr(IDS_KEY)
            self._pending[seq] = (aux & WANT, time.monotonic())
            self.celery_app.send_task(
                TASK_NAME,
                args=(seq, payload, aux & KIND_MASK, attempt, task_id or seq),
                task_id=f"{self._prefix}{seq}",
                serializer="pickle",
                ignore_result=True,  # the taskmw task stores its finish itself: see README
                **options,
            )
        except _UNREACHABLE as exc:
            self._pending.pop(seq, None)
            raise _queue_full(exc) from exc
        return seq

    # -- finishes --------------------------------------------------------------

    def _claim(self) -> _Completions:
        """Subscribe to this process's finishes (once per process) and note
        the running event loop, if any, which then delivers them."""
        with self._claim_lock:
            comp = self._comp
            if comp is None:
                comp = _Completions(0, None, 0)  # type: ignore[arg-type]  # no ring: finishes come from Redis
                self._prefix = f"taskmw-{os.urandom(5).hex()}-"
                try:
                    self._listener = FinishListener(self._backend, self._prefix, self._pending, self._on_finishes)
                except _UNREACHABLE as exc:
                    raise _queue_full(exc) from exc
                self._comp = comp
            comp.loop = _running_loop()
            return comp

    def _on_finishes(self, records: list[bytes], auxs: list[int]) -> None:
        """On the listener's thread: deliver (on the event loop that queued, if any)."""
        comp = self._comp
        if comp is None:
            return
        batch = Batch(0, records, auxs)
        loop = comp.loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._deliver, comp, batch)
                return
            except RuntimeError:  # closed meanwhile
                pass
        self._deliver(comp, batch)

    # -- lifetime ----------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """This process's view: the Celery workers are Celery's (``celery inspect``)."""
        return {"backend": "celery", "pending": len(self._pending), "task_workers": None, "workers": []}

    def reload(self) -> None:
        """Not here: restart the Celery workers (``celery control pool_restart`` or your process manager)."""
        raise NotImplementedError("the celery backend's workers are Celery's: restart them with Celery's tools")

    def close(self, timeout: float | None = None) -> None:
        """Stop sending: wait up to ``shutdown_timeout`` seconds for the
        finishes of this process's tasks, then stop listening. Tasks still
        running on Celery go on; their finishes are no longer delivered here
        (logged). The Celery workers are not stopped."""
        if self._closed:
            return
        self._closed = True
        self._state[0] = 1
        timeout = self.shutdown_timeout if timeout is None else timeout
        comp, self._comp = self._comp, None
        if comp is not None:
            loop = comp.loop
            if loop is None or loop.is_closed() or (loop.is_running() and _running_loop() is not loop):
                with comp.lock:
                    comp.idle.wait_for(lambda: comp.done >= comp.sent, timeout=timeout)
            if self._listener is not None:
                self._listener.stop()
            left = len(self._pending)
            if left:
                log.warning("closed with %d tasks still running on Celery: their finishes will not be delivered", left)
        _live.discard(self)

    def _forget_process_state(self) -> None:
        """After fork (and at first): this process has sent nothing and listens to nothing."""
        self._comp = None
        self._claim_lock = threading.Lock()
        self._listener = None
        self._pending = {}
        self._prefix = ""

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running"
        return f"<CeleryServer {state} celery_app={self.celery_app.main!r}>"



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


def _seconds(settings: dict[str, Any], name: str, default: float) -> float:
    value = settings.get(name, default)
    _check_seconds(name, value)
    return float(value)
