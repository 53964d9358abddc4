"""taskmw-svcs: services for ``ServiceTask`` and ``deferred`` listeners, built
in each task worker and closed when it stops.

taskmw asks the ``resolve_service(name)`` hook, in the task worker, for the
callable a :class:`~taskmw.ServiceTask` names (and for the listener of a
:func:`~taskmw.deferred` name). This plugin answers it from

- an svcs_ registry: :class:`SvcsServices` makes one ``svcs.Container`` per
  task worker (in ``on_worker_start``) and closes it in ``on_worker_stop``,
  which runs the cleanups of the services built in that worker (a generator
  factory's code after ``yield``); or
- a plain dict of factories: :class:`DictServices`, for apps without a
  container; each service is built once per worker, on first use, and its
  ``close()`` (if it has one) is called when the worker stops.

Example::

    import svcs, taskmw
    from taskmw_svcs import SvcsServices

    def welcome(email, db): ...                       # the listener and its dependency
    send_welcome = taskmw.deferred(welcome, "mail.welcome")

    def connect():                       # a database connection per task worker
        conn = sqlite3.connect("app.db")
        yield conn
        conn.close()                     # runs when the worker stops

    def make_welcome(container: svcs.Container):
        # from the plain function: the deferred one would queue itself again
        return functools.partial(welcome, db=container.get("db"))

    registry = svcs.Registry()
    registry.register_factory("db", connect)
    registry.register_factory("mail.welcome", make_welcome)

    app = TaskMiddleware(flask_app, plugins=[SvcsServices(registry)])
    # in a handler: send_welcome("a@example.com") runs welcome(..., db=...) in a worker

Service names are the registry's keys (svcs accepts strings as well as
types); ``names={"mailer": Mailer}`` maps a name to another key. A task can
reach any service of its worker with
``taskmw.current_server().hook.resolve_service(name="db")``.

Plugins are given in code (``plugins=[...]``): this distribution registers no
entry point, since the services are the app's.

.. _svcs: https://svcs.hynek.me/
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import svcs
import taskmw

__all__ = ["DictServices", "SvcsServices"]

log = logging.getLogger(__name__)


class SvcsServices:
    """``resolve_service`` backed by an ``svcs.Registry``, with one
    ``svcs.Container`` per task worker.

    Args:
        registry: the registry of factories (built before the pool is, so
            that the task workers are forked with it).
        names: service name -> registry key, for services registered under
            a type; names not in it are looked up as keys themselves.
    """

    def __init__(self, registry: svcs.Registry, names: Mapping[str, Hashable] | None = None) -> None:
        if not isinstance(registry, svcs.Registry):
            raise TypeError(f"SvcsServices needs an svcs.Registry, got {registry!r}")
        self.registry = registry
        self.names = dict(names or {})
        self.container: svcs.Container | None = None
        """This task worker's container (``None`` outside a task worker)."""

    @taskmw.hookimpl
    def on_worker_start(self, worker_id: int, server: Any) -> None:
        self.container = svcs.Container(self.registry)

    @taskmw.hookimpl
    def on_worker_stop(self, worker_id: int, server: Any) -> None:
        container, self.container = self.container, None
        if container is not None:
            container.close()  # svcs logs and swallows a failing cleanup

    @taskmw.hookimpl
    def resolve_service(self, name: str) -> Any:
        key: Any = self.names.get(name, name)  # svcs takes any hashable key; its hints say types
        if self.container is None or key not in self.registry:
            return None
        return self.container.get(key)


class DictServices:
    """``resolve_service`` from a dict of factories, for apps without a container.

    ``DictServices({"mailer": make_mailer, "db": connect})``: a factory takes
    no argument, or one (this object, to ``get()`` other services). Each
    service is built once per task worker, when first resolved; when the
    worker stops, every service built there that has a ``close()`` method is
    closed, the last built first.

    Raises:
        TypeError: a key is not a non-empty string or a factory not callable.
    """

    def __init__(self, factories: Mapping[str, Callable[..., Any]]) -> None:
        self.factories: dict[str, tuple[Callable[..., Any], bool]] = {}
        for name, factory in factories.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"DictServices: service names must be non-empty strings, got {name!r}")
            if not callable(factory):
                raise TypeError(f"DictServices: the factory of {name!r} is not callable: {factory!r}")
            self.factories[name] = (factory, _takes_an_argument(factory))
        self.built: dict[str, Any] | None = None
        """The services built in this task worker, by name (``None`` outside a task worker)."""

    def get(self, name: str) -> Any:
        """The service ``name`` of this task worker, built on first use.

        Raises:
            KeyError: no factory is called ``name``.
            RuntimeError: not in a task worker (between its start and stop).
        """
        if self.built is None:
            raise RuntimeError(f"service {name!r} asked for outside a task worker")
        if name not in self.built:
            if name not in self.factories:
                raise KeyError(f"no service called {name!r}; known: {', '.join(sorted(self.factories))}")
            factory, takes_services = self.factories[name]
            self.built[name] = factory(self) if takes_services else factory()
        return self.built[name]

    @taskmw.hookimpl
    def on_worker_start(self, worker_id: int, server: Any) -> None:
        self.built = {}

    @taskmw.hookimpl
    def on_worker_stop(self, worker_id: int, server: Any) -> None:
        built, self.built = self.built or {}, None
        for name, service in reversed(built.items()):
            close = getattr(service, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:
                    log.exception("closing service %r failed", name)

    @taskmw.hookimpl
    def resolve_service(self, name: str) -> Any:
        if self.built is None or name not in self.factories:
            return None
        return self.get(name)


def _takes_an_argument(factory: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: call it bare
        return False
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty for p in params)
