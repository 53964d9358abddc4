"""The dashboard as a WSGI app (:func:`wsgi_app`) and as an ASGI app
(:func:`asgi_app`): two factories over one :class:`~taskmw.web.core.Dashboard`,
so that each is a plain app of its kind that any framework mounts."""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, cast
from wsgiref.types import StartResponse, WSGIEnvironment

from taskmw.middleware import serve_lifespan
from taskmw.web.core import MAX_BODY, Dashboard, Pool, Request, Response, text_response

log = logging.getLogger(__name__)

Check = Callable[[Any], bool]
"""The access check: given the WSGI environ (:func:`wsgi_app`) or the ASGI
scope (:func:`asgi_app`) of every request, True lets it through; False (or
an exception, which is logged) answers 403."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_REASONS = {200: "OK", 303: "See Other", 308: "Permanent Redirect", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 413: "Content Too Large", 500: "Internal Server Error"}  # fmt: skip


def _pool_from(given: Pool | None, found: object) -> Pool:
    """The pool to show: the one given to the factory, else the one of the
    request (``taskmw.server``, set by ``TaskMiddleware``), else
    :func:`taskmw.current_server`."""
    if given is not None:
        return given
    if found is not None:
        return cast(Pool, found)
    from taskmw.tasks import current_server

    return current_server()


def _answer(dashboard: Dashboard, request: Request, given: Pool | None, found: object) -> Response:
    try:
        return dashboard.handle(request, _pool_from(given, found))
    except Exception:
        log.exception("the dashboard failed to answer %s %s", request.method, request.path)
        return text_response(500, "the dashboard failed (its traceback is in the server's log)")


def _allowed(check: Check | None, what: object) -> bool:
    if check is None:
        return True
    try:
        return bool(check(what))
    except Exception:
        log.exception("the dashboard's access check raised: request denied")
        return False


def _query(raw: str) -> dict[str, str]:
    return {k: v[0] for k, v in urllib.parse.parse_qs(raw, keep_blank_values=True).items()}


def _denied() -> Response:
    return text_response(403, "forbidden: the dashboard's access check refused this request")


class WSGIDashboard:
    """The dashboard as a WSGI app (see :func:`wsgi_app`)."""

    def __init__(self, dashboard: Dashboard, server: Pool | None, check: Check | None) -> None:
        self.dashboard = dashboard
        self.server = server
        self.check = check

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        response = self._respond(environ)
        status = f"{response.status} {_REASONS.get(response.status, 'Unknown')}"
        start_response(status, response.all_headers())
        return [b""] if environ.get("REQUEST_METHOD") == "HEAD" else [response.body]

    def _respond(self, environ: WSGIEnvironment) -> Response:
        if not _allowed(self.check, environ):
            return _denied()
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > MAX_BODY:
            return text_response(413, "request body too large")
        body = environ["wsgi.input"].read(length) if length > 0 else b""
        headers = {k[5:].replace("_", "-").lower(): str(v) for k, v in environ.items() if k.startswith("HTTP_")}
        request = Request(
            method=str(environ.get("REQUEST_METHOD", "GET")).upper(),
            path=_decoded(environ.get("PATH_INFO", "")),
            base=_decoded(environ.get("SCRIPT_NAME", "")).rstrip("/"),
            query=_query(str(environ.get("QUERY_STRING", ""))),
            headers=headers,
            body=body,
        )
        return _answer(self.dashboard, request, self.server, environ.get("taskmw.server"))


def _decoded(path: object) -> str:
    """PEP 3333 paths are latin-1 decoded bytes: back to UTF-8 text."""
    text = str(path)
    try:
        return text.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return text


class ASGIDashboard:
    """The dashboard as an ASGI 3 app (see :func:`asgi_app`)."""

    def __init__(self, dashboard: Dashboard, server: Pool | None, check: Check | None) -> None:
        self.dashboard = dashboard
        self.server = server
        self.check = check

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # served on its own (uvicorn taskmw.web...): nothing to start
            await serve_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        response = await self._respond(scope, receive)
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.all_headers()]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else response.body})

    async def _respond(self, scope: Scope, receive: Receive) -> Response:
        if not _allowed(self.check, scope):
            return _denied()
        body = b""
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            body += message.get("body", b"")
            more = bool(message.get("more_body"))
            if len(body) > MAX_BODY:
                return text_response(413, "request body too large")
        root = str(scope.get("root_path", "")).rstrip("/")
        path = str(scope.get("path", ""))
        if root and (path == root or path.startswith(root + "/")):  # Starlette >= 0.33 keeps the full path
            path = path[len(root) :]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        request = Request(
            method=str(scope.get("method", "GET")).upper(),
            path=path,
            base=root,
            query=_query(bytes(scope.get("query_string", b"")).decode("latin-1")),
            headers=headers,
            body=body,
        )
        return _answer(self.dashboard, request, self.server, scope.get("taskmw.server"))


def wsgi_app(
    server: Pool | None = None,
    *,
    allow_cancel: bool = False,
    check: Check | None = None,
    interval: float = 1.0,
    title: str = "taskmw",
) -> WSGIDashboard:
    """The dashboard as a WSGI app, to mount at a path of your app (it
    takes its base from ``SCRIPT_NAME``: werkzeug's ``DispatcherMiddleware``,
    or :func:`mount_wsgi`).

    Args:
        server: the pool to show; ``None``: the request's
            (``environ["taskmw.server"]``, set when the dashboard runs inside
            ``TaskMiddleware``), else :func:`taskmw.current_server`.
        allow_cancel: show cancel (queued) and stop (running) buttons and
            accept their POSTs (same origin only); otherwise the dashboard
            is read-only and such a POST gets 403.
        check: the access check, ``check(environ) -> bool``, called for
            every request (False: 403): your authentication.
        interval: seconds between the page's updates.
        title: the name shown in the header.
    """
    return WSGIDashboard(Dashboard(server, allow_cancel=allow_cancel, interval=interval, title=title), server, check)


def asgi_app(
    server: Pool | None = None,
    *,
    allow_cancel: bool = False,
    check: Check | None = None,
    interval: float = 1.0,
    title: str = "taskmw",
) -> ASGIDashboard:
    """The dashboard as an ASGI app (``Mount("/_taskmw", app=asgi_app())``,
    FastAPI's ``app.mount``: it takes its base from ``root_path``). The
    arguments are :func:`wsgi_app`'s; ``check`` is given the ASGI scope, and
    ``server=None`` looks in ``scope["taskmw.server"]``."""
    return ASGIDashboard(Dashboard(server, allow_cancel=allow_cancel, interval=interval, title=title), server, check)


WSGIApp = Callable[[WSGIEnvironment, StartResponse], Iterable[bytes]]


def mount_wsgi(app: WSGIApp, path: str = "/_taskmw", **options: Any) -> WSGIApp:
    """``app`` with the dashboard (:func:`wsgi_app` with ``options``) at
    ``path``: requests below ``path`` go to the dashboard, the rest to
    ``app``. For Flask: ``flask_app.wsgi_app = mount_wsgi(flask_app.wsgi_app)``."""
    prefix = "/" + path.strip("/")
    dashboard = wsgi_app(**options)

    def mounted(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path_info = str(environ.get("PATH_INFO", ""))
        if path_info == prefix or path_info.startswith(prefix + "/"):
            environ = dict(environ)
            environ["SCRIPT_NAME"] = str(environ.get("SCRIPT_NAME", "")).rstrip("/") + prefix
            environ["PATH_INFO"] = path_info[len(prefix) :]
            return dashboard(environ, start_response)
        return app(environ, start_response)

    return mounted
