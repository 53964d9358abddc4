"""A live dashboard of a pool: its task workers (state, task, memory,
restarts), queue depth, tasks/s and finishes by status over the last five
minutes, the queued, running (with progress), scheduled and recently
finished tasks (with filters), one page per task (timings, error and
traceback), and, only when enabled, cancel buttons.

Mount it in your app::

    app = TaskMiddleware(mount_wsgi(flask_app.wsgi_app))      # WSGI: /_taskmw/
    Mount("/_taskmw", app=asgi_app())                         # ASGI (Starlette, FastAPI's app.mount)

or serve it from ``taskmw start --dashboard 127.0.0.1:8001``. Read-only
unless ``allow_cancel=True``; ``check(environ_or_scope) -> bool`` is the hook
for your authentication. Plain HTML made on the server, a small script that
updates it every second (polling: it holds no HTTP worker), no framework, no
build step, nothing loaded from elsewhere.

:func:`wsgi_app` and :func:`asgi_app` are the two factories (one
:class:`~taskmw.web.core.Dashboard` behind each); :mod:`taskmw.web.serve`
serves one on a port from the pool's own process.
"""

from taskmw.web.apps import ASGIDashboard, Check, WSGIDashboard, asgi_app, mount_wsgi, wsgi_app
from taskmw.web.core import Dashboard

__all__ = ["ASGIDashboard", "Check", "Dashboard", "WSGIDashboard", "asgi_app", "mount_wsgi", "wsgi_app"]
