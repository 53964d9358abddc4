"""The two seams of taskmw, as typing protocols.

- :class:`Server`: what events, hooks, tasks and plugins may use of a
  server (``TaskEvent.server``, the ``server`` argument of the worker hooks,
  :func:`taskmw.current_server`). Every backend's server is a
  :class:`~taskmw.TaskServer`, which has all of it.
- :class:`Transport`: what a backend implements to carry tasks and bring
  their finishes back. :class:`~taskmw.TaskServer` does the rest (encoding,
  per-task options, retries, waiters, de-duplication, the ``on_finish``
  hooks) the same for every backend. The local pool
  (:class:`taskmw.local.LocalTransport`), the eager backend
  (:class:`taskmw.eager.EagerTransport`) and the Celery backend implement it;
  a backend is installed as a factory in the entry-point group
  ``taskmw.backends``: ``factory(settings, server, **options) -> Transport``.

A transport speaks :mod:`taskmw.records`: it sends a submit record (bytes
and header) and hands back finish records with their headers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:  # they import events, which imports this module
    from taskmw.info import TaskInfo
    from taskmw.records import FinishRecord


class Server(Protocol):
    """A taskmw server, as the code running inside tasks and hooks sees it."""

    plugins: pluggy.PluginManager
    """The plugin manager."""
    hook: pluggy.HookRelay
    """The plugins' hooks."""
    worker_id: int | None
    """In a task worker: its index; elsewhere ``None``."""

    def task(self, fn_or_data: Any, /, *args: Any, **kwargs: Any) -> int: ...

    def taskwait(self, fn_or_data: Any, /, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any: ...

    async def task_async(self, fn_or_data: Any, /, *args: Any, **kwargs: Any) -> Any: ...

    def status(self, task_id: int) -> TaskInfo: ...

    def result(self, task_id: int, timeout: float | None = None) -> Any: ...

    def cancel(self, task_id: int, terminate: bool = False) -> bool: ...

    def tasks(self, limit: int = 50) -> dict[str, list[TaskInfo]]: ...

    def stats(self) -> dict[str, Any]: ...

    @property
    def closed(self) -> bool: ...

    def close(self, timeout: float | None = None) -> None: ...


Deliver = Callable[[Sequence[bytes], Sequence[int], int], None]
"""``deliver(records, headers, floor)``: finish records of this process's
tasks, with their headers; finishes of a seq below ``floor`` belong to an
earlier owner of the transport's channel and are dropped (0: none)."""

Registered = Callable[[int], None]
"""Called by :meth:`Transport.send` with the task's seq as soon as it is
known, before the transport itself can deliver the task's finish."""


class Transport(Protocol):
    """Where tasks go and where their finishes come from: a backend.

    All methods are called in the process that uses the server; after a
    fork, :meth:`after_fork` runs in the child before anything else.

    Optional: a ``stops_delayed`` attribute, true where :meth:`close`
    cancels the delayed tasks not due yet (their ``cancelled`` finishes then
    come, and ``close()`` waits for them); without it, ``close()`` does not
    wait for delayed tasks. A delayed task's submit record carries its due
    time in its options (:func:`taskmw.records.options_of`), and its finish
    header :data:`taskmw.records.DELAYED`.

    Optional: a ``wait_here(done, timeout)`` method, for a backend whose
    waiting thread can read the finishes itself: it waits up to ``timeout``
    seconds (``None``: no limit) until ``done()``, delivering what comes on
    the calling thread, and returns True; False if it cannot here (the
    caller then waits for the delivery on another thread).
    """

    @property
    def supervisor_pid(self) -> int | None:
        """The pid of the process that owns the task workers (``None``: none here)."""

    def start(self, deliver: Deliver) -> None:
        """Start the backend (the local pool forks its processes here) and
        hand this process's finish records to ``deliver`` from now on. Called
        once, last when the server is built (the server is then complete in
        every process forked here)."""

    def send(self, record: bytes, header: int, registered: Registered | None = None, name: bytes | None = None) -> int:
        """Queue one task (a submit record of :mod:`taskmw.records`); returns
        its seq. ``name`` (see :func:`taskmw.tasktable.name_field`) is given
        for a task's first run: record it as queued under that name (the
        local pool leaves a plain call's record to the worker that takes it,
        see :mod:`taskmw.tasktable`).

        Raises:
            QueueFull: no room within the queue timeout (nothing was queued).
            PoolClosed: the backend takes no more tasks.
            ValueError: the task is larger than the backend can carry.
        """

    def status(self, task_id: int) -> TaskInfo:
        """The record of a task, from any process (see :meth:`taskmw.TaskServer.status`).

        Raises:
            UnknownTask: never issued, or evicted.
        """

    def outcome(self, task_id: int) -> FinishRecord | None:
        """The kept finish record of a finished task (None: not kept, or evicted)."""

    def cancel(self, task_id: int, terminate: bool = False) -> bool:
        """See :meth:`taskmw.TaskServer.cancel`."""

    def name_of(self, task_id: int) -> str:
        """What the record calls a task (``""``: it does not say); for a
        finish that carries no name (no worker read the task)."""

    def tasks(self, limit: int = 50) -> dict[str, list[TaskInfo]]:
        """``{"scheduled": [...], "queued": [...], "running": [...], "done": [...]}``, up to
        ``limit`` each (``"scheduled"`` may be left out by a backend that cannot list them)."""

    @property
    def reader_loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop on which ``deliver`` runs in this process (``None``: another thread, or inline)."""

    @property
    def inline(self) -> bool:
        """True if :meth:`send` runs the task and delivers its finish before
        it returns (retries then run at once)."""

    @property
    def closed(self) -> bool:
        """True once the backend takes no more tasks."""

    def alive(self) -> bool:
        """False once no more finishes can come (its pool is gone)."""

    def stats(self) -> dict[str, Any]:
        """The backend now, as plain data (see :meth:`taskmw.TaskServer.stats`)."""

    def reload(self) -> None:
        """Replace the task workers by fresh ones."""

    def close(self, timeout: float) -> None:
        """Take no more tasks; in the process that owns the workers, stop
        them (queued tasks run for up to ``timeout`` seconds, the rest
        finish ``cancelled``)."""

    def stop_receiving(self) -> None:
        """Stop delivering finishes (after :meth:`close`)."""

    def after_fork(self) -> None:
        """In a forked child: forget this process's reader and claims."""
