"""The built-in plugins, registered in every pool after the user's (so they
run last): the invoker runs :class:`~taskmw.Task` and
:class:`~taskmw.ServiceTask`; the dispatcher hands any other data object to
the listeners registered for its type; the deferred resolver supplies the
listeners given to :func:`~taskmw.deferred`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from taskmw.events import TaskEvent
from taskmw.hookspecs import hookimpl
from taskmw.tasks import DeferredListener, ServiceTask, Task, _deferred_listeners

Listener = Callable[[Any], Any] | str
"""A listener of the dispatcher: a callable taking the data object, or the
name of a service that ``resolve_service`` turns into one."""


def resolve(event: TaskEvent, name: str) -> Callable[..., Any]:
    """The service ``name``, from the ``resolve_service`` hook.

    Raises:
        LookupError: no plugin knows ``name``.
    """
    service = event.server.hook.resolve_service(name=name)
    if service is None:
        raise LookupError(
            f"no plugin resolved the service {name!r}: implement resolve_service(name) in a plugin, "
            "or defer a listener under that name with taskmw.deferred()"
        )
    if isinstance(service, DeferredListener):  # never queue a deferred listener again from its worker
        return service.listener
    if not callable(service):
        raise TypeError(f"service {name!r} resolved to {service!r}, which is not callable")
    return service  # type: ignore[no-any-return]


class Invoker:
    """Runs :class:`Task` (its callable) and :class:`ServiceTask` (the resolved service)."""

    @hookimpl(trylast=True)
    def on_task(self, event: TaskEvent) -> None:
        data = event.data
        if isinstance(data, Task):
            event.set_return_value(data.fn(*data.args, **data.kwargs))
            event.complete()
        elif isinstance(data, ServiceTask):
            event.set_return_value(resolve(event, data.name)(*data.args, **data.kwargs))
            event.complete()


class Dispatcher:
    """Dispatches a data object by type: every listener registered for a class
    in ``type(data).__mro__`` is called with it, most specific class first.
    The return value is what the last listener returned."""

    def __init__(self, listeners: Mapping[type, Sequence[Listener]]) -> None:
        for cls, items in listeners.items():
            if not isinstance(cls, type):
                raise TypeError(f"listeners: keys must be classes, got {cls!r}")
            if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
                raise TypeError(f"listeners[{cls.__qualname__}] must be a list of callables or service names")
            for item in items:
                if not (callable(item) or isinstance(item, str)):
                    raise TypeError(f"listeners[{cls.__qualname__}]: {item!r} is neither callable nor a service name")
        self.listeners = {cls: list(items) for cls, items in listeners.items()}

    @hookimpl(trylast=True)
    def on_task(self, event: TaskEvent) -> None:
        data = event.data
        if isinstance(data, (Task, ServiceTask)) or not self.listeners:
            return
        ran = False
        for cls in type(data).__mro__:
            for listener in self.listeners.get(cls, ()):
                fn = resolve(event, listener) if isinstance(listener, str) else listener
                event.set_return_value(fn(data))
                ran = True
        if ran:
            event.complete()


class DeferredResolver:
    """Resolves the service names given to :func:`~taskmw.deferred` to their listeners."""

    @hookimpl(trylast=True)
    def resolve_service(self, name: str) -> Any:
        return _deferred_listeners.get(name)
