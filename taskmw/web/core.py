"""The dashboard without its server: a :class:`Request` in, a
:class:`Response` out (:meth:`Dashboard.handle`), whatever serves it (the
WSGI and ASGI adapters in :mod:`taskmw.web.apps`, the thread of ``taskmw
start --dashboard`` in :mod:`taskmw.web.serve`).

Routes, below the mount point:

- ``GET /``: the page (workers, queue, chart, queued, running, scheduled and
  recent tasks; filters ``?name=`` and ``?status=``);
- ``GET /live``: what the page's script swaps in every ``interval`` seconds
  (the sections' HTML and the samples behind the chart, as JSON);
- ``GET /api/state``: the same data as plain JSON, for scripts;
- ``GET /tasks/<id>`` and ``/tasks/<id>/live``: one task;
- ``POST /tasks/<id>/cancel``: only with ``allow_cancel=True``, same origin only;
- ``GET /static/dashboard.js``, ``/static/dashboard.css``.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from importlib import resources

from taskmw.events import STATUSES
from taskmw.info import TaskInfo
from taskmw.interfaces import Server
from taskmw.web import render

log = logging.getLogger(__name__)

SAMPLE_EVERY = 2.0
"""Seconds between two samples of the pool's totals (the chart's points)."""
SAMPLES_KEPT = 600.0
"""Seconds of samples each serving process keeps (the chart shows the last 5 minutes)."""
RECENT_SCANNED = 200
"""Finished tasks read from the record before the filters pick what is shown."""
SHOWN = 50
"""Tasks shown per list."""
MAX_BODY = 1 << 16

_TASK = re.compile(r"/tasks/([0-9]{1,19})(/live|/cancel)?")
_STATIC = {"dashboard.js": "text/javascript; charset=utf-8", "dashboard.css": "text/css; charset=utf-8"}
SECURITY_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
)


Pool = Server
"""What the dashboard reads from: a pool's server (``stats``, ``tasks``, ``status``, ``cancel``)."""


@dataclasses.dataclass(frozen=True)
class Request:
    """One HTTP request, as the adapters hand it over."""

    method: str
    path: str
    """Below the mount point, starting with ``/`` (empty: the mount point itself, without its slash)."""
    base: str
    """The mount point's path (``""`` at the root, else e.g. ``"/_taskmw"``): every link starts with it."""
    query: Mapping[str, str]
    headers: Mapping[str, str]
    """Lower-case names."""
    body: bytes = b""


@dataclasses.dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def all_headers(self) -> list[tuple[str, str]]:
        """The headers to send: the content type and length, no caching, the security headers, these."""
        return [
            ("Content-Type", self.content_type),
            ("Content-Length", str(len(self.body))),
            ("Cache-Control", "no-store"),
            *SECURITY_HEADERS,
            *self.headers,
        ]


def json_response(data: object, status: int = 200) -> Response:
    return Response(status, json.dumps(data).encode(), "application/json")


def text_response(status: int, text: str, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, (text + "\n").encode(), "text/plain; charset=utf-8", headers or [])


class Sampler:
    """The pool's finish totals and queue depth every :data:`SAMPLE_EVERY`
    seconds, for the last :data:`SAMPLES_KEPT` seconds, in memory: the points
    of the chart. One thread per serving process, started by the first
    request it serves (so a pool built before gunicorn forks its HTTP
    workers gets one in each of them, not in the master that never serves).

    The totals are the pool's, so the points of every process lie on the
    same curves: the page merges what each HTTP worker it reaches knows."""

    def __init__(self, pool: Callable[[], Pool]) -> None:
        self._pool = pool
        self._lock = threading.Lock()
        self._pid = 0
        self._stop = threading.Event()
        self.points: collections.deque[tuple[float, dict[str, int], int]] = collections.deque()

    def ensure_running(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self.points.clear()  # a forked copy of another process's points would repeat them
            self._stop = threading.Event()
            self.sample()
            threading.Thread(target=self._run, args=(self._stop,), name="taskmw-dashboard-sampler", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def sample(self) -> None:
        try:
            stats = self._pool().stats()
            totals = {str(k): int(v) for k, v in stats["totals"].items()}
            depth = int(stats.get("queue_depth") or 0)
        except Exception:  # noqa: BLE001 - a closed pool, another backend: no point, no chart
            log.debug("sampling the pool's totals failed", exc_info=True)
            return
        now = time.time()
        self.points.append((now, totals, depth))
        while self.points and now - self.points[0][0] > SAMPLES_KEPT:
            self.points.popleft()

    def since(self, t: float) -> list[list[object]]:
        """The points after ``t`` (``time.time()``), as JSON-able lists ``[t, totals, depth]``."""
        rounded = ((round(p[0], 3), p[1], p[2]) for p in list(self.points))  # as the page has them
        return [[at, totals, depth] for at, totals, depth in rounded if at > t]

    def rate(self, window: float = 10.0) -> float | None:
        """Tasks finished per second over the last ``window`` seconds (``None``: fewer than two points)."""
        points = [p for p in list(self.points) if p[0] >= time.time() - window - SAMPLE_EVERY]
        if len(points) < 2 or points[-1][0] <= points[0][0]:
            return None
        return (sum(points[-1][1].values()) - sum(points[0][1].values())) / (points[-1][0] - points[0][0])

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(SAMPLE_EVERY):
            if self._pid != os.getpid():
                return
            self.sample()


@dataclasses.dataclass(frozen=True)
class Filters:
    name: str = ""
    """Tasks whose name contains this (every list)."""
    status: str = ""
    """Finished tasks with this status (the recent list)."""

    @classmethod
    def of(cls, query: Mapping[str, str]) -> Filters:
        status = query.get("status", "")
        return cls(query.get("name", "").strip()[:200], status if status in STATUSES else "")

    def keep(self, info: TaskInfo) -> bool:
        if self.name and self.name.lower() not in info.name.lower():
            return False
        return not (self.status and info.state == "done" and info.status != self.status)

    def query(self) -> str:
        return urllib.parse.urlencode({k: v for k, v in dataclasses.asdict(self).items() if v})


class Dashboard:
    """The dashboard of the pool each request comes with (:meth:`handle`);
    ``pool``: the one to sample before any request came."""

    def __init__(
        self, pool: Pool | None = None, *, allow_cancel: bool = False, interval: float = 1.0, title: str = "taskmw"
    ) -> None:
        if not 0.2 <= interval <= 60:
            raise ValueError(f"interval must be between 0.2 and 60 seconds, got {interval!r}")
        self.allow_cancel = allow_cancel
        self.interval = interval
        self.title = title
        self.sampler = Sampler(self._current_pool)
        self._last_pool: Pool | None = pool
        """The pool the sampler reads: the one given, else the first one a request came with."""

    def _current_pool(self) -> Pool:
        pool = self._last_pool
        if pool is None:
            raise RuntimeError("no pool seen yet")
        return pool

    def handle(self, request: Request, pool: Pool) -> Response:
        """Answer ``request`` about ``pool``."""
        if self._last_pool is None:
            self._last_pool = pool
        self.sampler.ensure_running()
        return self._route(request, pool)

    def _route(self, request: Request, pool: Pool) -> Response:
        path, get = request.path, request.method in ("GET", "HEAD")
        if path == "":
            return Response(308, b"", headers=[("Location", request.base + "/")])
        if path.startswith("/static/"):
            name = path.removeprefix("/static/")
            if name not in _STATIC:
                return text_response(404, "no such file")
            if not get:
                return text_response(405, "only GET", [("Allow", "GET, HEAD")])
            body = resources.files("taskmw.web").joinpath("static", name).read_bytes()
            return Response(200, body, _STATIC[name])
        match = _TASK.fullmatch(path)
        if match is not None and match.group(2) == "/cancel":
            if request.method != "POST":
                return text_response(405, "cancel is a POST (a button of the task's page)", [("Allow", "POST")])
            return self._cancel(request, pool, int(match.group(1)))
        if path not in ("/", "/live", "/api/state") and match is None:
            return text_response(404, "no such page")
        if not get:
            return text_response(405, "read-only: only GET", [("Allow", "GET, HEAD")])
        if match is not None:
            return self._task(request, pool, int(match.group(1)), live=match.group(2) == "/live")
        filters = Filters.of(request.query)
        stats = pool.stats()
        lists, scheduling = self._lists(pool, filters)
        if path == "/api/state":
            return json_response(
                {
                    "now": time.time(),
                    "stats": {k: v for k, v in stats.items() if k != "tasks"},
                    "tasks": {k: [i.as_dict() for i in v] for k, v in lists.items()},
                    "tasks_per_second": self.sampler.rate(),
                    "allow_cancel": self.allow_cancel,
                }
            )
        view = render.View(request.base, self.allow_cancel, time.time(), self.title, self.interval)
        sections = render.sections(view, stats, lists, scheduling)
        if path == "/live":
            since = _float(request.query.get("since"))
            return json_response({"now": view.now, "sections": sections, "samples": self.sampler.since(since)})
        return Response(200, render.index_page(view, sections, filters.query(), filters.name, filters.status).encode())

    def _lists(self, pool: Pool, filters: Filters) -> tuple[dict[str, list[TaskInfo]], bool]:
        """The filtered lists, and whether the pool has scheduled tasks at all."""
        raw = pool.tasks(RECENT_SCANNED)
        lists = {state: [i for i in raw.get(state, []) if filters.keep(i)][:SHOWN] for state in render.LISTS}
        return lists, "scheduled" in raw

    def _task(self, request: Request, pool: Pool, task_id: int, live: bool) -> Response:
        view = render.View(request.base, self.allow_cancel, time.time(), self.title, self.interval)
        try:
            info = pool.status(task_id)
        except LookupError as exc:  # taskmw.UnknownTask: never issued, or evicted
            if live:
                return json_response({"now": view.now, "unknown": str(exc)}, 404)
            return Response(404, render.unknown_task_page(view, task_id, str(exc)).encode())
        section = render.task_section(view, info)
        if live:
            return json_response({"now": view.now, "sections": {"task": section}, "done": info.state == "done"})
        notice = ""
        if "cancelled" in request.query:
            notice = "Cancelled." if info.state == "done" else "Cancelled: it finishes once its worker is stopped."
        elif "not_cancelled" in request.query:
            notice = "Not cancelled: it had finished already, or it runs (use Stop)."
        return Response(200, render.task_page(view, info, section, notice).encode())

    def _cancel(self, request: Request, pool: Pool, task_id: int) -> Response:
        if not self.allow_cancel:
            return text_response(403, "cancelling is disabled: this dashboard is read-only (allow_cancel=False)")
        reason = cross_origin(request.headers)
        if reason is not None:
            return text_response(403, f"refused: {reason}")
        form = urllib.parse.parse_qs(request.body.decode("utf-8", "replace"))
        terminate = form.get("terminate", [""])[0] in ("1", "true", "on")
        try:
            done = pool.cancel(task_id, terminate=terminate)
        except LookupError as exc:
            return text_response(404, str(exc))
        wants_json = "application/json" in request.headers.get("accept", "")
        if wants_json:
            return json_response({"task_id": task_id, "cancelled": done})
        where = f"{request.base}/tasks/{task_id}?{'cancelled' if done else 'not_cancelled'}=1"
        return Response(303, b"", headers=[("Location", where)])


def cross_origin(headers: Mapping[str, str]) -> str | None:
    """Why a state-changing request does not come from a page of this host
    (``None``: it does). The CSRF defense of the cancel buttons: the
    browser's ``Origin`` (else ``Referer``) must name the ``Host`` the
    request went to, and ``Sec-Fetch-Site``, when sent, must say same-origin."""
    host = headers.get("host", "")
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"Sec-Fetch-Site is {site!r}, not same-origin"
    source = headers.get("origin") or headers.get("referer")
    if not source or source == "null":
        return "no Origin or Referer header: cannot tell that the request comes from this dashboard"
    netloc = urllib.parse.urlsplit(source).netloc
    if not host or netloc.lower() != host.lower():
        return f"the request comes from {netloc or source!r}, not from this host ({host!r})"
    return None


def _float(text: str | None) -> float:
    try:
        return float(text) if text else 0.0
    except ValueError:
        return 0.0
