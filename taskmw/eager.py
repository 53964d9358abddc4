"""The eager backend: ``task()`` runs the task inline, in the caller.

``TaskServer(..., backend="eager")`` (or the environment variable
``TASKMW_BACKEND=eager``) builds an :class:`EagerServer` instead of a pool,
like Celery's eager mode: no process is forked, and every hook still fires.
Meant for tests; the ``taskmw_eager`` pytest fixture (:mod:`taskmw.testing`)
turns it on.

What stays the same as in the pool: the plugin manager (built-in plugins,
installed plugins, given plugins), the task payload round trip through
pickle (an unpicklable argument raises ``TypeError`` at ``task()``, an
unpicklable return value finishes ``error``), ``on_worker_start`` (once, when
the server is built) and ``on_worker_stop`` (at :meth:`close`), the
``on_task`` pipeline and the ``on_finish`` hooks, with worker id 0.

What differs: the task has finished, and ``on_finish`` has run, when
``task()`` returns; tasks run one at a time in the calling thread
(``async def`` tasks are run to completion on an event loop of their own);
``retries`` re-run a failed task at once (no backoff); time limits
(``task_timeout``, a task's ``timeout``) are not applied, and ``taskwait``'s
``timeout`` has nothing to wait for; the other pool settings
(``queue_bytes``, ``shutdown_timeout``, …) are accepted and ignored.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import inspect
import itertools
import threading
import time
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from typing import Any

from taskmw import _codec
from taskmw.errors import PoolClosed, TaskFailed
from taskmw.events import TaskFinishEvent
from taskmw.listeners import Listener
from taskmw.pipeline import call_each, error_of, on_task_calls, run_task
from taskmw.server import TaskServer, _check_int, plugin_manager
from taskmw.tasks import _set_default

WORKER_ID = 0
"""The worker id eager tasks run with."""

_POOL_SETTINGS = frozenset(inspect.signature(TaskServer.__init__).parameters) - {
    "self",
    "task_workers",
    "plugins",
    "listeners",
    "entrypoints",
    "disable_plugins",
    "backend",
}


class EagerServer:
    """A :class:`~taskmw.TaskServer` look-alike that runs each task inline.

    Build it through ``TaskServer(..., backend="eager")``; it takes the same
    arguments. See the module documentation for what differs from the pool.
    """

    def __init__(
        self,
        task_workers: int = 1,
        *,
        plugins: Iterable[object] = (),
        listeners: Mapping[type, Sequence[Listener]] | None = None,
        entrypoints: bool = True,
        disable_plugins: Iterable[str] = (),
        **pool_settings: Any,
    ) -> None:
        unknown = set(pool_settings) - _POOL_SETTINGS
        if unknown:
            raise TypeError(f"EagerServer got unexpected keyword argument(s) {', '.join(sorted(unknown))}")
        _check_int("task_workers", task_workers, 1, 1024)
        _check_int("retries", pool_settings.get("retries", 0), 0, 1000)
        self.task_workers = task_workers
        self._retries: int = pool_settings.get("retries", 0)
        self.plugins = plugin_manager(plugins, listeners, entrypoints, disable_plugins)
        """The pluggy plugin manager (every hook runs in this process)."""
        self.hook = self.plugins.hook
        self.worker_id: int | None = None
        """``0`` while a task (or ``on_worker_start``) runs, else ``None``: what a
        task sees in a pool's worker."""
        self._ids = itertools.count(1)
        self._closed = False
        self._lock = threading.RLock()  # one task at a time, as in a one-worker pool
        atexit.register(self.close)  # like the pool: stopped (on_worker_stop) at exit
        _set_default(self)  # type: ignore[arg-type]  # a TaskServer look-alike for current_server()
        with self._as_worker():
            call_each(self.hook.on_worker_start, {"worker_id": WORKER_ID, "server": self})

    # -- queuing (running, here) -------------------------------------------------

    def task(self, fn_or_data: Any, /, *args: Any, **kwargs: Any) -> int:
        """Run a task now; returns its id once it finished and ``on_finish`` ran.

        Raises:
            TypeError: something cannot be pickled, as :meth:`TaskServer.task`.
            PoolClosed: the server was closed.
        """
        return self._run(fn_or_data, args, kwargs).task_id

    def taskwait(self, fn_or_data: Any, /, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Run a task now and return its return value.

        Raises:
            TaskFailed: it did not finish ``ok``.
        """
        event = self._run(fn_or_data, args, kwargs)
        if not event.ok:
            raise TaskFailed(event)
        return event.return_value

    def taskwait_multi(self, tasks: Sequence[Any], *, timeout: float | None = None) -> list[TaskFinishEvent | None]:
        """Run several tasks now, in order; returns their finish events."""
        return [self._run(t, (), {}) for t in tasks]

    async def task_async(self, fn_or_data: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Run a task now (blocking the event loop while it runs) and return its value.

        Raises:
            TaskFailed: it did not finish ``ok``.
        """
        return self.taskwait(fn_or_data, *args, **kwargs)

    def _run(self, obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> TaskFinishEvent:
        if self._closed:
            raise PoolClosed("the eager task server was closed; no more tasks can be run")
        payload, kind, options = TaskServer._encode(obj, args, kwargs)
        retries = options.get("retries")
        task_id = next(self._ids)
        calls = on_task_calls(self.hook)
        with self._as_worker():
            for attempt in range(1, (self._retries if retries is None else retries) + 2):
                started = time.perf_counter()
                status, value, error, name = run_task(calls, self, task_id, WORKER_ID, payload, kind, attempt)
                if inspect.iscoroutine(value):
                    try:
                        value = _run_coroutine(value)
                    except BaseException as exc:  # noqa: B036 - the task's failure
                        status, value, error = _codec.ERROR, None, error_of(exc)
                if status == _codec.OK:
                    break
        record = _codec.encode_finish(task_id, status, value, error, time.perf_counter() - started, WORKER_ID, name)
        event = _codec.decode_finish(record)._replace(attempts=attempt)
        call_each(self.hook.on_finish, {"event": event})
        return event

    def _as_worker(self) -> _WorkerScope:
        return _WorkerScope(self)

    # -- lifetime -----------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def close(self, timeout: float | None = None) -> None:
        """Stop: runs ``on_worker_stop`` (once)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        atexit.unregister(self.close)
        with self._as_worker():
            call_each(self.hook.on_worker_stop, {"worker_id": WORKER_ID, "server": self})

    def __enter__(self) -> EagerServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<EagerServer {'closed' if self._closed else 'running'}>"


class _WorkerScope:
    """Holds the server's lock and sets its ``worker_id`` while a task runs."""

    def __init__(self, server: EagerServer) -> None:
        self.server = server
        self.previous: int | None = None

    def __enter__(self) -> None:
        self.server._lock.acquire()
        self.previous = self.server.worker_id
        self.server.worker_id = WORKER_ID

    def __exit__(self, *exc: object) -> None:
        self.server.worker_id = self.previous
        self.server._lock.release()


def _run_coroutine(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run an ``async def`` task to completion on an event loop of its own
    (on a helper thread if this thread already runs a loop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="taskmw-eager") as pool:
        return pool.submit(asyncio.run, coro).result()
