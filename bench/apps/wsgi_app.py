"""The WSGI app of the HTTP benchmark (``bench/test_tasks.py::test_http``).

Served by ``gunicorn --preload -w 2 --chdir bench/apps wsgi_app:application``,
so one task pool (2 task workers) serves both HTTP workers. Two routes,
identical but for one line:

* ``/plain`` answers ``ok``;
* ``/queue`` first queues one trivial task (:func:`trivial`, 100 bytes of
  argument) with ``environ["taskmw.server"].task(...)``.

Each HTTP worker counts the finishes it receives (:class:`FinishCounter`);
the gunicorn config's ``worker_exit`` hook logs the counts, so the benchmark
can check that every queued task finished.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from taskmw import TaskMiddleware, hookimpl

PAYLOAD = b"x" * 100
BODY = b"ok\n"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


def trivial(data: bytes) -> int:
    """The task: a module-level function (pickled by reference)."""
    return len(data)


class FinishCounter:
    """Counts this process's finishes by status (``on_finish`` runs on a reader thread)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()

    @hookimpl  # type: ignore[untyped-decorator]
    def on_finish(self, event: Any) -> None:
        with self._lock:
            self.counts[event.status] = self.counts.get(event.status, 0) + 1


finishes = FinishCounter()


def routes(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    if path == "/queue":
        environ["taskmw.server"].task(trivial, PAYLOAD)
    elif path != "/plain":
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "0")])
        return [b""]
    start_response("200 OK", HEADERS)
    return [BODY]


application = TaskMiddleware(routes, task_workers=2, plugins=[finishes], entrypoints=False)
