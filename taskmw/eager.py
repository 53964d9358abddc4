"""The eager backend: ``task()`` runs the task inline, in the caller.

``create_server(backend="eager")`` or ``TaskServer(..., backend="eager")`` (or
the environment variable ``TASKMW_BACKEND=eager``) builds a server on an
:class:`EagerTransport` instead of a pool,
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
(``task_timeout``, a task's own) are not applied, and ``taskwait``'s
``timeout`` has nothing to wait for; a delayed task (``delay=``, ``eta=``)
runs at once, like Celery's eager mode ignores ``countdown`` (its
``status()`` keeps the due time it was given in ``scheduled_for``); the other pool settings
(``queue_bytes``, ``shutdown_timeout``, …) are checked as for the pool and
otherwise unused.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

from taskmw.errors import PoolClosed, UnknownTask
from taskmw.events import STATUSES
from taskmw.info import TaskInfo
from taskmw.interfaces import Deliver, Registered, Server
from taskmw.pipeline import error_of, run_task
from taskmw.plugins import call_each, implementations
from taskmw.records import ERROR, FinishRecord, SubmitRecord
from taskmw.settings import Settings
from taskmw.tasks import _reporter

WORKER_ID = 0
"""The worker id eager tasks run with."""


class EagerTransport:
    """Runs each task inline, in the thread that queues it (a
    :class:`~taskmw.interfaces.Transport`). See the module documentation."""

    inline = True
    supervisor_pid = None
    reader_loop = None

    def __init__(self, settings: Settings, server: Server, **options: Any) -> None:
        if options:
            raise TypeError(f"the eager backend got unexpected settings: {', '.join(sorted(options))}")
        self._settings = settings
        self._server = server
        self._deliver: Deliver | None = None
        self._seqs = itertools.count(1)
        self._records: OrderedDict[int, _Kept] = OrderedDict()
        self._closed = False
        self._lock = threading.RLock()  # one task at a time, as in a one-worker pool

    @contextmanager
    def _as_worker(self) -> Iterator[None]:
        """Hold the lock and set the server's ``worker_id`` while a task runs."""
        with self._lock:
            previous, self._server.worker_id = self._server.worker_id, WORKER_ID
            try:
                yield
            finally:
                self._server.worker_id = previous

    def start(self, deliver: Deliver) -> None:
        """Run ``on_worker_start``; finishes go to ``deliver`` before :meth:`send` returns."""
        self._deliver = deliver
        with self._as_worker():
            call_each(self._server.hook.on_worker_start, {"worker_id": WORKER_ID, "server": self._server})

    def send(self, record: bytes, header: int, registered: Registered | None = None, name: bytes | None = None) -> int:
        """Run the task now and deliver its finish; returns its seq."""
        if self._closed:
            raise PoolClosed("the eager task server was closed; no more tasks can be run")
        seq = next(self._seqs)
        if registered is not None:
            registered(seq)
        task = SubmitRecord.read(seq, record, header)
        server = self._server
        kept = self._records.get(task.task_id)
        if kept is None:
            kept = self._records[task.task_id] = _Kept(task.task_id, (name or b"").decode("utf-8", "replace"))
            while len(self._records) > self._settings.task_records:
                self._records.popitem(last=False)
        kept.attempts, kept.started_at, kept.finish = task.attempt, time.time(), None
        if task.due:
            kept.scheduled_for = task.due
        with self._as_worker():
            token = _reporter.set(kept.report)
            started = time.perf_counter()
            try:
                calls = implementations(server.hook.on_task)
                status, value, error, ran = run_task(
                    calls, server, task.task_id, WORKER_ID, task.payload, task.kind, task.attempt
                )
                if inspect.iscoroutine(value):
                    try:
                        value = _run_coroutine(value)
                    except BaseException as exc:  # noqa: B036 - the task's failure
                        status, value, error = ERROR, None, error_of(exc)
            finally:
                _reporter.reset(token)
            duration = time.perf_counter() - started
        finish = FinishRecord(seq, task.task_id, status, value, error, duration, WORKER_ID, ran).encode()
        kept.finished_at, kept.finish = time.time(), finish
        assert self._deliver is not None, "start() was not called"
        self._deliver([finish], [task.reply], 0)
        return seq

    # -- the record of tasks (this process's: tasks run here) ----------------------

    def _kept(self, task_id: int) -> _Kept:
        kept = self._records.get(task_id)
        if kept is None:
            issued = next(iter(reversed(self._records)), 0)
            why = "this server never issued it" if not 0 < task_id <= issued else "its record was evicted"
            raise UnknownTask(task_id, why)
        if kept.finished_at is not None and time.time() - kept.finished_at > self._settings.result_ttl:
            raise UnknownTask(
                task_id, f"its record was evicted: finished more than result_ttl={self._settings.result_ttl}s ago"
            )
        return kept

    def status(self, task_id: int) -> TaskInfo:
        """The record of a task run here."""
        return self._kept(task_id).info()

    def name_of(self, task_id: int) -> str:
        """What this backend's record calls ``task_id``."""
        kept = self._records.get(task_id)
        return "" if kept is None else kept.name

    def outcome(self, task_id: int) -> FinishRecord | None:
        """The finish record of a task run here."""
        finish = self._kept(task_id).finish
        return None if finish is None else FinishRecord.decode(finish)

    def cancel(self, task_id: int, terminate: bool = False) -> bool:
        """Always False: an eager task has finished when ``task()`` returns."""
        self._kept(task_id)
        return False

    def tasks(self, limit: int = 50) -> dict[str, list[TaskInfo]]:
        """Nothing queued or running; the last ``limit`` finished, newest first."""
        done = [k.info() for k in reversed(self._records.values()) if k.finish is not None]
        return {"queued": [], "running": [], "done": done[:limit]}

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def alive(self) -> bool:
        """Always: there is nothing to wait for."""
        return True

    def stats(self) -> dict[str, Any]:
        """Nothing runs in the background: no workers, no queue."""
        return {"backend": "eager", "task_workers": self._settings.task_workers, "workers": [], "queue_depth": 0}

    def reload(self) -> None:
        """Nothing to reload: tasks run in this process."""

    def close(self, timeout: float) -> None:
        """Stop: runs ``on_worker_stop`` (once)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with self._as_worker():
            call_each(self._server.hook.on_worker_stop, {"worker_id": WORKER_ID, "server": self._server})

    def stop_receiving(self) -> None:
        """Nothing to stop."""

    def after_fork(self) -> None:
        """A forked child runs its own tasks inline too."""
        self._lock = threading.RLock()


class _Kept:
    """What the eager backend keeps of a task."""

    def __init__(self, task_id: int, name: str) -> None:
        self.task_id = task_id
        self.name = name
        self.queued_at = time.time()
        self.scheduled_for: float | None = None
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.attempts = 1
        self.progress: float | None = None
        self.message: str | None = None
        self.finish: bytes | None = None

    def report(self, fraction: float, message: str | None) -> None:
        self.progress, self.message = fraction, message

    def info(self) -> TaskInfo:
        if self.finish is None:
            return TaskInfo(self.task_id, "running", None, self.name, WORKER_ID, self.attempts, self.queued_at,
                            self.started_at, None, self.progress, self.message, None,
                            scheduled_for=self.scheduled_for)  # fmt: skip
        finish = FinishRecord.decode(self.finish)
        return TaskInfo(self.task_id, "done", STATUSES[finish.status], self.name or finish.name, WORKER_ID,
                        self.attempts, self.queued_at, self.started_at, self.finished_at, self.progress,
                        self.message, finish.error, scheduled_for=self.scheduled_for)  # fmt: skip


def _run_coroutine(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run an ``async def`` task to completion on an event loop of its own
    (on a helper thread if this thread already runs a loop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="taskmw-eager") as pool:
        return pool.submit(asyncio.run, coro).result()
