"""The middleware (:mod:`taskmw.middleware`): it detects WSGI or ASGI and
shares a given pool.
"""

from __future__ import annotations

from typing import Any

import pytest

from taskmw import ASGITaskMiddleware, TaskMiddleware, WSGITaskMiddleware


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    return [b""]


async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
    pass


class AsgiClass:
    config = {"debug": True}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        pass


def test_middleware_detects_the_interface_and_shares_a_given_pool() -> None:
    w = TaskMiddleware(wsgi_app, task_workers=1, entrypoints=False)
    try:
        assert isinstance(w, WSGITaskMiddleware) and not isinstance(w, ASGITaskMiddleware)
        a = TaskMiddleware(asgi_app, server=w.server)
        c = TaskMiddleware(AsgiClass(), server=w.server)
        assert isinstance(a, ASGITaskMiddleware) and isinstance(c, ASGITaskMiddleware)
        assert a.server is w.server and c.config == {"debug": True}  # attributes of the wrapped app
        import inspect

        assert inspect.iscoroutinefunction(type(a).__call__)  # what uvicorn checks for ASGI 3
        with pytest.raises(TypeError):
            a()  # type: ignore[call-arg]  # uvicorn's factory probe must fail, so it uses the app as is
        with pytest.raises(ValueError, match="interface must be"):
            TaskMiddleware(wsgi_app, interface="cgi")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="either server= or the settings"):
            TaskMiddleware(wsgi_app, server=w.server, queue_timeout=1)
    finally:
        w.close()


def test_task_workers_with_a_given_pool_is_refused() -> None:
    server = TaskMiddleware(wsgi_app, task_workers=1, entrypoints=False).server
    try:
        with pytest.raises(ValueError, match="task_workers=3 .*server="):
            TaskMiddleware(wsgi_app, 3, server=server)
    finally:
        server.close()
