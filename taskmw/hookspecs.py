"""Every hook a taskmw plugin can implement: the plugin author's manual.

A plugin is any object (or module) with functions marked ``@taskmw.hookimpl``
and named after a hook below. Give plugins in code with
``TaskMiddleware(app, plugins=[obj])`` / ``TaskServer(plugins=[obj])``, or ship
them as a distribution with an entry point in the group ``taskmw``; both are
registered with pluggy under the project name ``taskmw``.

Plugins live in every process of a pool (the pool's processes are forked from
the one that built it), so each hook says in which process it runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from taskmw.events import TaskEvent, TaskFinishEvent
    from taskmw.interfaces import Server

PROJECT = "taskmw"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)
"""Marks a plugin's hook implementations: ``@taskmw.hookimpl`` (pluggy's
options apply: ``tryfirst``, ``trylast``, …)."""


@hookspec
def on_task(event: TaskEvent) -> None:
    """Run a task. Called in the **task worker**, once per task.

    Implementations run in pluggy's order (``tryfirst`` ones first, the
    built-in invoker and dispatcher last). One that handles the task calls
    ``event.set_return_value(value)`` and ``event.complete()``; no later
    implementation is then called. Observers (a logger, metrics) look at
    ``event`` and return without completing it.

    An exception ends the task with status ``error`` (its traceback is sent
    back). A task that no implementation completes finishes ``error`` too,
    with a message saying nothing handled it. Return values are ignored.
    """


@hookspec
def on_finish(event: TaskFinishEvent) -> None:
    """A task finished. Called in **the process that queued it**, once per
    task id, whatever the status.

    Under WSGI it runs on the pool's completion-reader thread; under ASGI on
    the event loop. Keep it short: it delays the finishes behind it.
    Exceptions are logged and do not stop other implementations.
    """


@hookspec(firstresult=True)
def resolve_service(name: str) -> Any:
    """Return the service called ``name`` (a callable), or ``None`` if this
    plugin does not know it. Called in the **task worker** when a
    :class:`~taskmw.ServiceTask` or a ``deferred`` listener runs; the first
    non-``None`` result wins.
    """


@hookspec
def on_worker_start(worker_id: int, server: Server) -> None:
    """A task worker started, before it takes its first task. Called in the
    **task worker** (open per-worker resources here: a database connection).
    The worker takes its ``on_task`` implementations after these hooks ran: a
    plugin registered or unregistered here (``server.plugins``) counts for
    every task of that worker."""


@hookspec
def on_worker_stop(worker_id: int, server: Server) -> None:
    """A task worker is stopping after its last task. Called in the **task
    worker** (close what ``on_worker_start`` opened)."""
