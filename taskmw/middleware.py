"""TaskMiddleware: gives a WSGI or ASGI app a task pool.

Example::

    from flask import Flask
    from taskmw import TaskMiddleware

    flask_app = Flask(__name__)

    @flask_app.post("/signup")
    def signup():
        server = request.environ["taskmw.server"]
        server.task(send_welcome_mail, request.form["email"])
        return "ok"

    app = TaskMiddleware(flask_app, task_workers=4)   # serve `app`

The app kind is detected (an ``async def __call__`` or coroutine function is
ASGI 3) and the wrapper looks like what it wraps to the server that inspects
it. The pool is ``app.server``.

Under ``taskmw start`` the master builds the pool before any process imports
the app and hands it down (:func:`adopt_pool`): a ``TaskMiddleware`` built
in such a process joins that pool (registers its plugins and listeners
there) instead of building another one.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, Literal

from taskmw import _control, _share
from taskmw.listeners import Dispatcher
from taskmw.plugins import check_no_wrappers
from taskmw.server import TaskServer, create_server
from taskmw.tasks import _current, _default

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ENVIRON_KEY = "taskmw.server"
"""The key under which handlers find the pool: ``environ[...]`` or ``scope[...]``."""

log = logging.getLogger(__name__)

_adopted: TaskServer | None = None
_inspected: dict[str, Any] | None = None


def adopt_pool(server: TaskServer | None) -> None:
    """Make ``server`` the pool that every :class:`TaskMiddleware` built
    later in this process (and in processes forked from it) joins instead of
    building its own; ``None`` undoes it. ``taskmw start`` calls it."""
    global _adopted
    _adopted = server


def inspect_only(settings: dict[str, Any] | None) -> None:
    """While ``settings`` is a dict, a :class:`TaskMiddleware` builds no pool
    and records its pool settings there instead (``taskmw start`` imports the
    app this way, once, to learn its kind and settings); ``None`` ends it."""
    global _inspected
    _inspected = settings


def inspecting() -> dict[str, Any] | None:
    """The dict given to :func:`inspect_only`, while inspecting."""
    return _inspected


def adopted_pool() -> TaskServer | None:
    """The pool given to :func:`adopt_pool` in this process, if any."""
    return _adopted


def _pool_to_join() -> TaskServer | None:
    """The pool a new :class:`TaskMiddleware` joins instead of building one:
    the adopted pool, else, in a task worker (an app factory called by a
    task or a hook), the worker's own pool."""
    if _adopted is not None:
        return _adopted
    server = _default[-1] if _default else None
    if isinstance(server, TaskServer) and server.worker_id is not None:
        return server
    return None


def _werkzeug_reloader_parent() -> bool:
    """True in the parent process of ``flask run --debug`` (or ``--reload``):
    it only watches files and restarts a child (``WERKZEUG_RUN_MAIN=true``),
    which serves. Flask imports the app in both."""
    if os.environ.get("WERKZEUG_RUN_MAIN") == "true":
        return False
    cli = sys.modules.get("flask.cli")
    if cli is None:
        return False
    frame = sys._getframe(1)  # noqa: SLF001 - is flask's run_command loading the app?
    while frame is not None:
        if frame.f_code.co_name == "run_command" and frame.f_globals.get("__name__") == "flask.cli":
            reload = frame.f_locals.get("reload")  # None until run_command resolves it from --debug
            return bool(cli.get_debug_flag() if reload is None else reload)
        frame = frame.f_back  # type: ignore[assignment]
    return False


async def serve_lifespan(receive: Receive, send: Send) -> None:
    """Answer an ASGI lifespan scope for an app with nothing to start or
    stop: startup and shutdown complete at once."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _is_asgi(app: Any) -> bool:
    if inspect.iscoroutinefunction(app):
        return True
    call = getattr(app, "__call__", None)  # noqa: B004 - we need the method itself
    return inspect.iscoroutinefunction(call)


class TaskMiddleware:
    """Wrap ``app`` (WSGI or ASGI) and build its task pool.

    Args:
        app: the WSGI or ASGI 3 application.
        task_workers: task worker processes (default 4).
        server: use this pool instead of building one (the other settings
            must then be omitted).
        interface: ``"wsgi"`` or ``"asgi"`` to skip detection.
        status_socket: a unix socket path (default: the
            ``TASKMW_STATUS_SOCKET`` environment variable) on which the
            process that builds the pool answers ``taskmw status --socket
            PATH``. Not needed under ``taskmw start``, which has its own.
        **settings: the other :class:`TaskServer` settings (``plugins``,
            ``listeners``, ``queue_timeout``, …).

    In a process given a pool by :func:`adopt_pool` (under ``taskmw
    start``), and in a task worker (an app factory called in a task), the
    wrapper joins that pool: ``plugins`` and ``listeners`` are registered on
    it, and the other settings are not used (under ``taskmw start`` the
    master read them: see docs/configuration.md).

    Handlers find the pool at ``environ["taskmw.server"]`` (WSGI) or
    ``scope["taskmw.server"]`` (ASGI), and :func:`taskmw.current_server`
    returns it during a request.
    """

    server: TaskServer
    app: Any

    def __new__(
        cls,
        app: Any,
        task_workers: int | None = None,
        *,
        server: TaskServer | None = None,
        interface: Literal["wsgi", "asgi"] | None = None,
        plugins: Iterable[object] = (),
        status_socket: str | None = None,
        **settings: Any,
    ) -> TaskMiddleware:
        if cls is TaskMiddleware:
            if interface not in (None, "wsgi", "asgi"):
                raise ValueError(f"interface must be 'wsgi', 'asgi' or None (detect), got {interface!r}")
            if not callable(app):
                raise TypeError(f"TaskMiddleware wraps a WSGI or ASGI app (a callable), got {app!r}")
            asgi = _is_asgi(app) if interface is None else interface == "asgi"
            cls = ASGITaskMiddleware if asgi else WSGITaskMiddleware
        return object.__new__(cls)

    def __init__(
        self,
        app: Any,
        task_workers: int | None = None,
        *,
        server: TaskServer | None = None,
        interface: Literal["wsgi", "asgi"] | None = None,
        plugins: Iterable[object] = (),
        status_socket: str | None = None,
        **settings: Any,
    ) -> None:
        if server is not None and (settings or plugins or task_workers is not None):
            given = ", ".join(
                [*([f"task_workers={task_workers!r}"] if task_workers is not None else []), *sorted(settings)]
                + (["plugins"] if plugins else [])
            )
            raise ValueError(
                f"give either server= or the settings of a new pool, not both (got {given} with server=: "
                "the given pool keeps its own)"
            )
        self.app = app
        if task_workers is not None:
            settings["task_workers"] = task_workers
        if server is None and _inspected is not None:
            _inspected.update(settings)
            self.server = None  # type: ignore[assignment] # never served: only inspected
        elif server is None and (pool := _pool_to_join()) is not None:
            self.server = _join(pool, plugins, settings.pop("listeners", None))
        elif server is not None:
            self.server = server
        elif _werkzeug_reloader_parent():
            log.debug("taskmw: the reloader process of flask run builds no pool (its child does)")
            self.server = None  # type: ignore[assignment] # never served: the reloader's child serves
        else:
            self.server = create_server(plugins=plugins, **settings)
            own = "gunicorn HTTP worker" if _share.in_gunicorn_worker() else None
            own = own or ("uvicorn worker" if _share.in_uvicorn_worker() else None)
            if own and self.server.settings.share == "never":
                log.warning("taskmw: %s %d built its own task pool (%d task workers): with share='never' each "
                            "HTTP worker has its own pool, and task ids are unique only within it", own, os.getpid(),
                            self.server.task_workers)  # fmt: skip
                if self.server.settings.schedule:
                    log.warning("taskmw: so its %d periodic task(s) run once per HTTP worker, not once in all: "
                                "leave share='auto'", len(self.server.settings.schedule))  # fmt: skip
            path = status_socket or os.environ.get(_control.STATUS_SOCKET_ENV)
            if path:
                _control.serve_status(self.server, path)

    def close(self) -> None:
        """Stop the pool (see :meth:`TaskServer.close`)."""
        self.server.close()

    def __getattr__(self, name: str) -> Any:
        """Anything else is the wrapped app's (``app.config``, ``app.routes``, …)."""
        if name == "app":  # not set yet: during __init__ or unpickling
            raise AttributeError(name)
        return getattr(self.app, name)


def _join(server: TaskServer, plugins: Iterable[object], listeners: Any) -> TaskServer:
    """Register ``plugins`` and ``listeners`` on the adopted pool ``server``
    (in this process; a plugin already registered is skipped)."""
    for plugin in plugins:
        if not server.plugins.is_registered(plugin):
            server.plugins.register(plugin)
    check_no_wrappers(server.plugins)
    if listeners:
        extra = Dispatcher(listeners)  # validates them
        dispatcher = server.plugins.get_plugin("taskmw.dispatcher")
        assert isinstance(dispatcher, Dispatcher)  # registered by every TaskServer
        for cls, items in extra.listeners.items():
            dispatcher.listeners.setdefault(cls, []).extend(items)
    return server


class WSGITaskMiddleware(TaskMiddleware):
    """The WSGI form of :class:`TaskMiddleware`."""

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        environ[ENVIRON_KEY] = self.server
        token = _current.set(self.server)
        try:
            return self.app(environ, start_response)  # type: ignore[no-any-return]
        finally:
            _current.reset(token)


class ASGITaskMiddleware(TaskMiddleware):
    """The ASGI 3 form of :class:`TaskMiddleware`. On lifespan shutdown the
    pool is closed (after the app's own shutdown, off the event loop, while
    the loop goes on delivering finishes)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[ENVIRON_KEY] = self.server
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._lifespan_send(send))
            return
        token = _current.set(self.server)
        try:
            await self.app(scope, receive, send)
        finally:
            _current.reset(token)

    def _lifespan_send(self, send: Send) -> Send:
        async def wrapped(message: Message) -> None:
            if message.get("type") == "lifespan.shutdown.complete":
                await asyncio.get_running_loop().run_in_executor(None, self.server.close)
            await send(message)

        return wrapped
