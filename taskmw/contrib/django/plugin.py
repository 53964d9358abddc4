"""The Django plugin of every pool: database connections in task workers.

Installed with taskmw as the entry point ``django`` (group ``taskmw``), so
every pool loads it; it imports no Django and does nothing unless Django's
settings are configured in the task worker when it starts (importing a
Django project's WSGI/ASGI module, ``django.setup()``, or a builder that used
the ORM before building the pool); a task worker where they are not
unregisters it when it starts (so that it costs its tasks nothing). Then, as
Celery's Django fixup does:

- ``on_worker_start``: the connections the worker inherited from the process
  that built the pool are set aside without any I/O on them
  (:func:`close_inherited_connections`), so the first query of a task opens a
  connection of the worker's own, outside any transaction of the parent's;
- ``on_task`` (``tryfirst``): :func:`django.db.close_old_connections` before
  each task, as Django does at each request: a connection past
  ``CONN_MAX_AGE``, broken, or left with autocommit off by the previous task is
  closed (taskmw refuses hook wrappers, so there is no "after the task": the
  previous task's connection is closed when the next task starts, or when the
  worker stops);
- ``on_worker_stop``: every connection of the worker is closed.

Inline backends (the eager backend, the ``taskmw_eager`` fixture) run tasks in
the caller, inside its transactions: the plugin leaves their connections
alone. Turn it off with ``disable_plugins=["django"]`` (or
``TASKMW_DISABLE_PLUGINS=django``).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from taskmw.hookspecs import hookimpl
from taskmw.interfaces import Server

log = logging.getLogger("taskmw.django")

_inherited: list[Any] = []
"""The DB-API connections inherited from the parent: kept referenced for the
life of the process, so that no finalizer ever closes them here."""


def django_configured() -> bool:
    """True if Django's settings are configured in this process (without
    importing Django when nothing has)."""
    conf = sys.modules.get("django.conf")
    return conf is not None and bool(conf.settings.configured)


def close_inherited_connections() -> int:
    """Forget every database connection this process inherited through
    ``fork()``, without sending anything over it; returns how many were open.

    For each initialized connection of ``django.db.connections`` (in this
    thread): the DB-API connection's socket, if it has one (``fileno()``:
    PostgreSQL, MySQL), is replaced in this process by ``/dev/null``
    (``dup2``), so nothing this process does can reach the server through it
    and the parent's session is untouched; the DB-API object is kept
    referenced forever (never closed, never finalized here: an SQLite
    connection must not be closed in a forked child); the Django wrapper is
    dropped, so the next query opens a fresh one, outside the parent's
    transaction state (``in_atomic_block``, savepoints, ``on_commit``
    callbacks). Call it only in a process forked from the one that opened
    the connections, never in that one.
    """
    from django.db import connections  # type: ignore[import-untyped]

    opened = 0
    devnull = -1
    try:
        for conn in connections.all(initialized_only=True):
            raw = conn.connection
            if raw is not None:
                opened += 1
                _inherited.append(raw)
                fd = _fileno(raw)
                if fd is not None:
                    if devnull < 0:
                        devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                    try:
                        os.dup2(devnull, fd, inheritable=False)
                    except OSError:
                        log.debug("could not detach the socket of connection %r", conn.alias, exc_info=True)
                if conn.vendor == "sqlite" and _in_memory(conn):
                    log.warning(
                        "task worker: database %r is an in-memory SQLite database; the task worker's own "
                        "connection sees an empty database, not the parent's (use a file: see docs)",
                        conn.alias,
                    )
            del connections[conn.alias]
    finally:
        if devnull >= 0:
            os.close(devnull)
    return opened


def _fileno(raw: Any) -> int | None:
    fileno = getattr(raw, "fileno", None)
    if not callable(fileno):
        return None
    try:
        fd = fileno()
    except Exception:  # closed already, or a driver without a socket
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


def _in_memory(conn: Any) -> bool:
    check = getattr(conn, "is_in_memory_db", None)
    try:
        return bool(check()) if callable(check) else False
    except Exception:
        return False


class DjangoConnections:
    """The plugin (see the module documentation). One instance, ``plugin``,
    is the entry point; give another with ``plugins=[DjangoConnections()]``
    only when installed plugins are off (``entrypoints=False``)."""

    def __init__(self) -> None:
        self.active = False
        """True in a task worker of a local pool where Django is set up."""

    @hookimpl
    def on_worker_start(self, worker_id: int, server: Server) -> None:
        transport = getattr(server, "transport", None)
        self.active = django_configured() and not getattr(transport, "inline", False)
        if self.active:
            n = close_inherited_connections()
            log.debug("task worker %d: set aside %d inherited database connection(s)", worker_id, n)
        elif not getattr(transport, "inline", False):
            # Inert in this task worker: out of its on_task calls, so that the worker calls a plain
            # function itself (taskmw.pipeline.run_task's direct call, taken only with the invoker first).
            server.plugins.unregister(self)

    @hookimpl(tryfirst=True)
    def on_task(self) -> None:
        if self.active:
            from django.db import close_old_connections

            close_old_connections()

    @hookimpl
    def on_worker_stop(self, worker_id: int, server: Server) -> None:
        if self.active:
            from django.db import connections

            connections.close_all()


plugin = DjangoConnections()
"""The instance the entry point ``django`` registers."""
