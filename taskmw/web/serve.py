"""The dashboard on its own port, served by threads of the process that
holds the pool (``taskmw start --dashboard HOST:PORT``: the master):
:class:`DashboardServer`, a threading ``wsgiref`` server."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import socketserver
import threading
import weakref
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from taskmw._address import is_loopback, join_address
from taskmw.web.apps import WSGIDashboard, wsgi_app
from taskmw.web.core import Pool

log = logging.getLogger(__name__)


class _Handler(WSGIRequestHandler):
    timeout = 10  # a client that stalls mid-request loses its thread after this

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("dashboard %s: " + format, self.address_string(), *args)


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


_open: weakref.WeakSet[DashboardServer] = weakref.WeakSet()


def _forget_in_child() -> None:
    """In a forked child (an HTTP worker, a new supervisor): the listening
    socket is the parent's; a copy held here would keep the port bound after
    the parent stopped serving it."""
    for server in list(_open):
        server.forget()


os.register_at_fork(after_in_child=_forget_in_child)


class DashboardServer:
    """:func:`~taskmw.web.wsgi_app` for ``pool`` on ``host:port``, served
    by threads of this process (:meth:`start`, :meth:`close`).

    Raises:
        OSError: the address cannot be bound.
    """

    def __init__(self, pool: Pool, host: str, port: int, *, allow_cancel: bool = False) -> None:
        self.app: WSGIDashboard = wsgi_app(pool, allow_cancel=allow_cancel)
        cls = _Server6 if ":" in host else _Server
        self.httpd = cls((host, port), _Handler)
        self.httpd.set_app(self.app)
        self.host, self.port = host, self.httpd.server_address[1]
        self._pid = os.getpid()
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.5,), name="taskmw-dashboard",
                                       daemon=True)  # fmt: skip
        _open.add(self)
        if not is_loopback(host):
            log.warning("taskmw: the dashboard listens on %s, not on a loopback address: it has no access check, "
                        "anyone who reaches that port sees the tasks%s", host,
                        " and can cancel them" if allow_cancel else "")  # fmt: skip

    @property
    def url(self) -> str:
        return f"http://{join_address(self.host, self.port)}/"

    def start(self) -> None:
        self.thread.start()
        self.app.dashboard.sampler.ensure_running()  # the chart starts now, not at the first visit
        log.info("taskmw: dashboard on %s (%s)", self.url, "cancel enabled" if self.app.dashboard.allow_cancel
                 else "read-only")  # fmt: skip

    def close(self) -> None:
        """Stop serving and close the socket (requests in progress finish on their threads)."""
        _open.discard(self)
        self.app.dashboard.sampler.stop()
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.thread.join(5.0)
        self.httpd.server_close()

    def forget(self) -> None:
        if os.getpid() != self._pid:
            _open.discard(self)
            with contextlib.suppress(OSError):
                os.close(self.httpd.socket.detach())
