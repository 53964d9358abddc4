"""``request.taskmw``: the pool, in every view, under WSGI and ASGI alike.

Add ``"taskmw.contrib.django.middleware.TaskServerMiddleware"`` to
``MIDDLEWARE``. The pool is the one ``TaskMiddleware`` handles the request
with (``environ["taskmw.server"]`` under WSGI, ``scope["taskmw.server"]``
under ASGI), else :func:`taskmw.current_server` (the process's pool); with no
pool at all, ``request.taskmw`` raises ``RuntimeError`` when used, not when
the request comes in. :func:`taskmw.current_server` works in views too (sync
views under ASGI run in a thread that gets the request's context).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from taskmw.middleware import ENVIRON_KEY
from taskmw.tasks import current_server


def server_of(request: Any) -> Any:
    """The pool of ``request`` (a Django ``HttpRequest``): see the module documentation."""
    environ = getattr(request, "environ", None)  # WSGIRequest
    server = environ.get(ENVIRON_KEY) if isinstance(environ, dict) else None
    if server is None:
        scope = getattr(request, "scope", None)  # ASGIRequest
        server = scope.get(ENVIRON_KEY) if isinstance(scope, dict) else None
    if server is None:
        from django.utils.functional import SimpleLazyObject  # type: ignore[import-untyped]

        return SimpleLazyObject(current_server)  # raises when used if there is no pool
    return server


class TaskServerMiddleware:
    """Sets ``request.taskmw`` (sync and async capable)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        from asgiref.sync import iscoroutinefunction, markcoroutinefunction

        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        request.taskmw = server_of(request)
        if self.is_async:
            return self._acall(request)
        return self.get_response(request)

    async def _acall(self, request: Any) -> Any:
        response: Awaitable[Any] = self.get_response(request)
        return await response
