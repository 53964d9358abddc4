"""taskmw for Django projects (``pip install 'taskmw[django]'``).

In ``settings.py``::

    INSTALLED_APPS = [..., "taskmw.contrib.django"]       # manage.py taskmw, checks of TASKMW
    MIDDLEWARE = [..., "taskmw.contrib.django.middleware.TaskServerMiddleware"]  # request.taskmw
    TASKMW = {"task_workers": 4, "task_timeout": 60}      # what TaskMiddleware(app, **TASKMW) takes

In ``myproject/wsgi.py`` (``asgi.py``: ``get_asgi_application``)::

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "myproject.settings")
    from taskmw.contrib.django import get_wsgi_application
    application = get_wsgi_application()                  # Django's handler in TaskMiddleware(**TASKMW)

Serve it with ``python manage.py taskmw start`` (or ``taskmw start
myproject.wsgi:application``, ``gunicorn --preload``, ``uvicorn``). In views:
``request.taskmw.task(fn, ...)``, ``taskmw.current_server()`` (WSGI and ASGI
alike), ``fn.delay_on_commit(...)`` on ``@taskmw.task`` functions and
:func:`task_on_commit` (queued once the transaction commits, never if it
rolls back), :func:`receiver` for signal receivers that run in a task
worker. Database connections in task workers are handled by the plugin of
:mod:`taskmw.contrib.django.plugin`, which every pool loads.

Nothing here imports Django until it is used, so the ``django`` plugin costs
nothing in projects without it.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from taskmw.contrib.django.plugin import DjangoConnections, close_inherited_connections
from taskmw.contrib.django.plugin import plugin as connections_plugin
from taskmw.middleware import TaskMiddleware, serve_lifespan
from taskmw.tasks import DeferredListener, ServiceTask, current_server, deferred

__all__ = [
    "DjangoConnections",
    "SignalTask",
    "close_inherited_connections",
    "connect",
    "connections_plugin",
    "get_asgi_application",
    "get_wsgi_application",
    "pool_settings",
    "receiver",
    "task_on_commit",
    "task_on_commit_using",
]

F = TypeVar("F", bound=Callable[..., Any])

SETTING = "TASKMW"


# -- the pool of the project ------------------------------------------------------------------


def pool_settings() -> dict[str, Any]:
    """The keyword arguments of ``TaskMiddleware`` from ``settings.TASKMW``
    (a dict; absent: ``{}``). ``plugins`` may hold dotted paths
    (``"myapp.plugins.audit"``: the object; a class is instantiated) and the
    keys of ``listeners`` may be dotted paths of types.

    Raises:
        django.core.exceptions.ImproperlyConfigured: ``TASKMW`` is not a
            dict, or a dotted path does not import.
    """
    from django.conf import settings  # type: ignore[import-untyped]
    from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]

    given = getattr(settings, SETTING, None)
    if given is None:
        return {}
    if not isinstance(given, dict):
        raise ImproperlyConfigured(f"settings.{SETTING} must be a dict of TaskMiddleware settings, got {given!r}")
    out = dict(given)
    for bad in ("server", "interface"):
        if bad in out:
            raise ImproperlyConfigured(f"settings.{SETTING}[{bad!r}] is set by taskmw.contrib.django, not a setting")
    if "plugins" in out:
        out["plugins"] = [_plugin(p) for p in _listed(out["plugins"], "plugins")]
    listeners = out.get("listeners")
    if listeners is not None:
        if not isinstance(listeners, dict):
            raise ImproperlyConfigured(f"settings.{SETTING}['listeners'] must be a dict, got {listeners!r}")
        out["listeners"] = {_imported(k, "listeners") if isinstance(k, str) else k: v for k, v in listeners.items()}
    return out


def _listed(value: Any, key: str) -> list[Any]:
    from django.core.exceptions import ImproperlyConfigured

    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ImproperlyConfigured(f"settings.{SETTING}[{key!r}] must be a list, got {value!r}")
    return list(value)


def _plugin(value: Any) -> Any:
    if isinstance(value, str):
        value = _imported(value, "plugins")
        if isinstance(value, type):
            value = value()
    return value


def _imported(path: str, key: str) -> Any:
    from django.core.exceptions import ImproperlyConfigured
    from django.utils.module_loading import import_string  # type: ignore[import-untyped]

    try:
        return import_string(path)
    except ImportError as exc:
        raise ImproperlyConfigured(f"settings.{SETTING}[{key!r}]: cannot import {path!r}: {exc}") from exc


def _with_connections_plugin(settings: dict[str, Any]) -> dict[str, Any]:
    """Installed plugins load the connections plugin; with them off, give it in code."""
    if settings.get("entrypoints", True) is False:
        plugins = list(settings.get("plugins", ()))
        if not any(isinstance(p, DjangoConnections) for p in plugins):
            settings["plugins"] = [*plugins, connections_plugin]
    return settings


def get_wsgi_application() -> TaskMiddleware:
    """Django's WSGI handler (``django.setup()`` included) wrapped in
    ``TaskMiddleware(handler, **settings.TASKMW)``: the project's pool is
    built here (or joined, under ``taskmw start``)."""
    from django.core.wsgi import get_wsgi_application as django_wsgi  # type: ignore[import-untyped]

    handler = django_wsgi()
    return TaskMiddleware(handler, interface="wsgi", **_with_connections_plugin(pool_settings()))


def get_asgi_application() -> TaskMiddleware:
    """Django's ASGI handler wrapped in ``TaskMiddleware(handler,
    **settings.TASKMW)``. Django's handler refuses the ASGI lifespan protocol;
    here the lifespan is answered, so that the pool is closed (queued tasks
    drained) at the server's lifespan shutdown, as for any ASGI app."""
    from django.core.asgi import get_asgi_application as django_asgi  # type: ignore[import-untyped]

    handler = django_asgi()

    async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await handler(scope, receive, send)
            return
        await serve_lifespan(receive, send)

    return TaskMiddleware(application, interface="asgi", **_with_connections_plugin(pool_settings()))


# -- after the transaction commits ---------------------------------------------------------


def task_on_commit(fn_or_data: Any, /, *args: Any, **kwargs: Any) -> None:
    """Queue ``server.task(fn_or_data, *args, **kwargs)`` once the current
    transaction of the default database commits: at once outside a
    transaction (autocommit), never if it rolls back
    (:func:`django.db.transaction.on_commit`). Anything ``task()`` takes
    works, per-task options (``delay=``, ``task_timeout=``, ``retries=``, ...) included.

    The pool is the one serving this request (:func:`taskmw.current_server`),
    found now (``RuntimeError`` here if there is none); ``task()`` itself runs
    at commit, so what it raises then (``TypeError`` for an argument that
    cannot be pickled, ``QueueFull``) comes out of the block that commits,
    after the data is committed. The task id is not known here: use
    ``server.task`` after the transaction if you need it.
    """
    task_on_commit_using(None, fn_or_data, *args, **kwargs)


def task_on_commit_using(using: str | None, fn_or_data: Any, /, *args: Any, **kwargs: Any) -> None:
    """:func:`task_on_commit` for the transaction of database ``using``
    (``None``: the default database)."""
    from django.db import transaction  # type: ignore[import-untyped]

    server = current_server()
    transaction.on_commit(functools.partial(server.task, fn_or_data, *args, **kwargs), using=using)


# -- signal receivers that run in a task worker ---------------------------------------------------


class SignalTask:
    """A signal receiver that queues a deferred listener: connected by
    :func:`connect` and :func:`receiver`.

    Django calls receivers as ``receiver(signal=signal, sender=sender,
    **kwargs)``; the ``signal`` (a ``Signal``, which cannot be pickled) is
    not sent: the listener gets ``sender`` (a model class travels by
    reference) and the signal's other arguments (``instance``, ``created``,
    ``using``, …: a model instance travels by value, as it was when the
    signal was sent; its primary key is the safer thing to use). With
    ``on_commit`` (the default) the task is queued once the transaction of
    the signal's ``using`` database (else the default one) commits, never if
    it rolls back.
    """

    def __init__(self, listener: DeferredListener[Any], on_commit: bool = True) -> None:
        self.listener = listener
        self.on_commit = on_commit

    def __call__(self, signal: Any = None, sender: Any = None, **kwargs: Any) -> int | None:
        data = ServiceTask(self.listener.name, sender=sender, **kwargs)
        if not self.on_commit:
            return current_server().task(data)
        using = kwargs.get("using")
        task_on_commit_using(using if isinstance(using, str) else None, data)
        return None

    def __repr__(self) -> str:
        return f"<SignalTask {self.listener.name!r} on_commit={self.on_commit}>"


def connect(
    signal: Any,
    listener: Callable[..., Any],
    name: str | None = None,
    *,
    sender: Any = None,
    on_commit: bool = True,
    dispatch_uid: str | None = None,
) -> SignalTask:
    """Connect ``listener`` to the Django ``signal`` so that it runs in a task
    worker (see :class:`SignalTask`): ``listener`` is made a
    ``taskmw.deferred`` listener named ``name`` (default: its module and
    qualified name), and the receiver is connected strongly (it lives as long
    as the signal), once per ``dispatch_uid`` (default: from the name).
    ``listener`` may already be a ``deferred`` one. Returns the receiver."""
    if name is None and isinstance(listener, DeferredListener):
        name = listener.name
    if name is None:
        name = f"django.signal:{listener.__module__}.{listener.__qualname__}"
    task = SignalTask(deferred(listener, name), on_commit)
    signal.connect(task, sender=sender, weak=False, dispatch_uid=dispatch_uid or f"taskmw:{name}")
    return task


def receiver(
    signal: Any,
    *,
    name: str | None = None,
    sender: Any = None,
    on_commit: bool = True,
    dispatch_uid: str | None = None,
) -> Callable[[F], F]:
    """``django.dispatch.receiver`` for receivers that run in a task worker::

        @receiver(post_save, sender=Order)
        def order_saved(sender, instance, created, **kwargs):
            ...                            # in a task worker, after the save's transaction commits

    ``signal`` may be a list of signals. The function is returned unchanged
    (calling it runs it here); see :func:`connect`."""
    signals = signal if isinstance(signal, (list, tuple)) else [signal]

    def decorate(fn: F) -> F:
        for sig in signals:
            connect(sig, fn, name, sender=sender, on_commit=on_commit, dispatch_uid=dispatch_uid)
        return fn

    return decorate


def __getattr__(name: str) -> Any:
    if name == "TaskServerMiddleware":  # imported lazily: it is Django's concern
        return importlib.import_module("taskmw.contrib.django.middleware").TaskServerMiddleware
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
