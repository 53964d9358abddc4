"""Prometheus metrics for taskmw: a plugin (entry point ``prometheus`` in the
group ``taskmw``) and a ``/metrics`` route for WSGI and ASGI apps.

``prometheus_client`` runs in its multiprocess mode: counters and histograms
are written by every process (HTTP workers count finishes in ``on_finish``,
task workers count their starts in ``on_worker_start``) into files under
``PROMETHEUS_MULTIPROC_DIR``, and a scrape adds them up. The queue depth and
the worker table are read from the pool at scrape time.

Importing the module does nothing else: the directory (and the variable) are
set up by :func:`setup`, when the plugin is loaded (as a pool is built,
before it forks), when a metric is first used or at the first scrape.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import taskmw
from taskmw import TaskFinishEvent, TaskServer, hookimpl

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


_PREFIX = "taskmw-prometheus-"


def _remove_orphaned_dirs() -> None:
    """Remove this user's directories made by processes that are gone without
    removing them (killed, or left by ``os._exit``)."""
    with os.scandir(tempfile.gettempdir()) as entries:
        for entry in entries:
            pid = entry.name[len(_PREFIX) :].partition("-")[0]
            if not entry.name.startswith(_PREFIX) or not pid.isdigit():
                continue
            try:
                if entry.stat(follow_symlinks=False).st_uid != os.getuid() or not entry.is_dir(follow_symlinks=False):
                    continue
                os.kill(int(pid), 0)
            except ProcessLookupError:
                shutil.rmtree(entry.path, ignore_errors=True)
            except OSError:
                continue


def _multiproc_dir() -> str:
    """The multiprocess directory: ``PROMETHEUS_MULTIPROC_DIR``, or a fresh
    temporary one made (and, at exit, removed) by this process."""
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        os.makedirs(path, exist_ok=True)
        return path
    _remove_orphaned_dirs()
    creator = os.getpid()
    path = tempfile.mkdtemp(prefix=f"{_PREFIX}{creator}-")
    os.environ[MULTIPROC_ENV] = path

    def remove() -> None:
        if os.getpid() == creator:
            shutil.rmtree(path, ignore_errors=True)

    atexit.register(remove)
    return path


_lock = threading.Lock()
_dir: str | None = None
_metrics: dict[str, Any] = {}


def setup() -> str:
    """Put this process's ``prometheus_client`` in multiprocess mode, once;
    returns the directory (``PROMETHEUS_MULTIPROC_DIR``).

    Nothing happens when the module is imported: this runs when the plugin
    is loaded (the entry point, read when a pool is built, before it forks
    its workers, or ``taskmw_prometheus.plugin`` in code), when a metric is
    first used and at the first scrape. Call it yourself before anything else
    imports ``prometheus_client`` if the app has metrics of its own and does
    not set ``PROMETHEUS_MULTIPROC_DIR``.
    """
    global _dir
    if _dir is None:
        with _lock:
            if _dir is None:
                path = _multiproc_dir()
                _metrics.update(_make_metrics())
                _dir = path
    return _dir


def _make_metrics() -> dict[str, Any]:
    from prometheus_client import Counter, Histogram, values

    if values.ValueClass is values.MutexValue:  # imported before the directory was set
        log.warning(
            "prometheus_client was imported before taskmw_prometheus set %s: metrics made before then stay per "
            "process (set it yourself, or call taskmw_prometheus.setup() first)",
            MULTIPROC_ENV,
        )
        values.ValueClass = values.get_value_class()  # taskmw's own metrics, made below, add up across processes
    return {
        "TASKS": Counter("taskmw_tasks", "Finished tasks, by status.", ["status"]),
        "DURATION": Histogram("taskmw_task_duration_seconds", "Run time of finished tasks, by status.", ["status"]),
        "WORKER_STARTS": Counter("taskmw_task_worker_starts", "Task worker (re)starts, by worker id.", ["worker_id"]),
    }


def _metric(name: str) -> Any:
    setup()
    return _metrics[name]


class PrometheusPlugin:
    """Counts finishes (in the process that queued each task) and task
    worker starts (in each task worker)."""

    @hookimpl
    def on_finish(self, event: TaskFinishEvent) -> None:
        _metric("TASKS").labels(event.status).inc()
        _metric("DURATION").labels(event.status).observe(event.duration)

    @hookimpl
    def on_worker_start(self, worker_id: int, server: TaskServer) -> None:
        _metric("WORKER_STARTS").labels(str(worker_id)).inc()


if TYPE_CHECKING:
    from prometheus_client import Counter, Histogram
    from prometheus_client.core import Metric

    plugin: PrometheusPlugin
    TASKS: Counter
    DURATION: Histogram
    WORKER_STARTS: Counter
    MULTIPROC_DIR: str


def __getattr__(name: str) -> Any:
    """``plugin`` (the instance the entry point registers: getting it runs
    :func:`setup`, so loading the plugin prepares the directory before the
    pool forks), the metrics ``TASKS``, ``DURATION``, ``WORKER_STARTS`` and
    ``MULTIPROC_DIR``, made on first use."""
    if name == "plugin":
        setup()
        value: Any = globals().setdefault("plugin", PrometheusPlugin())
        return value
    if name == "MULTIPROC_DIR":
        return setup()
    if name in ("TASKS", "DURATION", "WORKER_STARTS"):
        return _metric(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class PoolCollector:
    """Gauges read from the pool's shared counters (``TaskServer.stats()``)
    at scrape time: queue depth, task workers by state, restarts per worker."""

    def __init__(self, server: TaskServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        stats = self.server.stats()
        yield GaugeMetricFamily("taskmw_queue_depth", "Tasks waiting in the queue.", value=stats["queue_depth"])
        states = GaugeMetricFamily("taskmw_task_workers", "Task workers, by state.", labels=["state"])
        counts: dict[str, int] = {}
        for w in stats["workers"]:
            counts[w["state"]] = counts.get(w["state"], 0) + 1
        for state in ("starting", "idle", "busy", "stopping"):
            states.add_metric([state], counts.get(state, 0))
        yield states
        restarts = GaugeMetricFamily(
            "taskmw_task_worker_restarts", "Times each task worker was replaced.", labels=["worker_id"]
        )
        for w in stats["workers"]:
            restarts.add_metric([str(w["worker_id"])], w["restarts"])
        yield restarts


def metrics_text(server: TaskServer | None = None) -> bytes:
    """Every process's metrics, added up, plus the pool's gauges, in the
    Prometheus text format. ``server`` defaults to
    :func:`taskmw.current_server`."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    path = setup()
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)
    registry.register(PoolCollector(server if server is not None else taskmw.current_server()))
    return generate_latest(registry)


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """A WSGI app answering with :func:`metrics_text` (mount it at ``/metrics``)."""
    from prometheus_client import CONTENT_TYPE_LATEST

    body = metrics_text(environ.get("taskmw.server"))
    start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body)))])
    return [body]


async def asgi_app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    """An ASGI app answering with :func:`metrics_text` (mount it at ``/metrics``)."""
    from prometheus_client import CONTENT_TYPE_LATEST

    body = metrics_text(scope.get("taskmw.server"))
    headers = [(b"content-type", CONTENT_TYPE_LATEST.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


__all__ = ["DURATION", "TASKS", "WORKER_STARTS", "PoolCollector", "PrometheusPlugin", "asgi_app", "metrics_text",
           "plugin", "setup", "wsgi_app"]  # fmt: skip
