"""HTTP: what queueing a task costs a request, measured with wrk (16
connections) against a real app server, side by side with a route that
does not queue (``/plain``) and, under gunicorn, one that hands the same
call to a hand-made ``multiprocessing.Queue`` (``/mpqueue``).

* WSGI: ``gunicorn --preload``, 2 sync workers, 2 task workers
  (``apps/wsgi_app.py``): ``/plain``, ``/queue``, ``/mpqueue``.
* ASGI: uvicorn (one process) with a Starlette app, 2 task workers
  (``apps/asgi_app.py``): ``/plain``, ``/queue`` (fire and forget),
  ``/wait`` (``await task_async(...)``).

Skipped without wrk (``apt-get install wrk``), gunicorn, or uvicorn and
starlette. See bench/README.md.
"""

from __future__ import annotations

import importlib.util
import statistics
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from pytest_benchmark.fixture import BenchmarkFixture
from tasks_harness import HAVE_TASK_SERVER, WRK, WRK_CONNECTIONS, Gunicorn, HttpServer, Uvicorn, wrk

SECONDS = 2
"""Seconds of one wrk run (one round; wrk takes whole seconds)."""
ROUNDS = 3
"""Rounds, each one run per route (after a warm-up run of every route)."""
WARMUP = 1
"""Seconds of wrk on every route before anything is timed."""


class _Served:
    """The module's server of one kind, and what the benchmarks sent it."""

    def __init__(self, server: HttpServer, routes: list[str]) -> None:
        self.server = server
        self.routes = routes
        self.sent: dict[str, int] = {}
        self.infos: list[dict[str, Any]] = []

    def load(self, route: str, seconds: float) -> dict[str, float]:
        result = wrk(self.server.addr, f"/{route}", seconds)
        self.sent[route] = self.sent.get(route, 0) + result["requests"]
        return result


def _needs(*modules: str) -> None:
    if not HAVE_TASK_SERVER:
        pytest.skip("taskmw.TaskServer not importable yet")
    if WRK is None:
        pytest.skip("wrk not installed (apt-get install wrk)")
    for m in modules:
        if importlib.util.find_spec(m) is None:
            pytest.skip(f"{m} not installed")


def _serve(kind: type[HttpServer], routes: list[str]) -> Iterator[_Served]:
    served = _Served(kind(), routes)
    try:
        for route in routes:
            served.load(route, WARMUP)
        yield served
    finally:
        s = served.server
        s.stop()
        finishes, mpqueue = s.counted("finishes"), s.counted("mpqueue")
        queued = finishes.pop("queued", 0)
        check: dict[str, Any] = {"tasks_queued": queued, "finishes": finishes, "left_running": len(s.leftover)}
        if "mpqueue" in routes:
            check.update(mpqueue_puts=mpqueue.get("puts", 0), mpqueue_done=mpqueue.get("done", 0))
        for info in served.infos:  # extra_info is written to the JSON at session end
            info["check"] = check
        if s.leftover:
            warnings.warn(f"{kind.__name__}: {len(s.leftover)} processes outlived SIGTERM: {sorted(s.leftover)}",
                          stacklevel=1)  # fmt: skip
        if finishes != {"ok": queued} or check.get("mpqueue_puts") != check.get("mpqueue_done"):
            warnings.warn(f"{kind.__name__}: {check}\n{s.log()[-3000:]}", stacklevel=1)
        else:
            s.remove_log()


@pytest.fixture(scope="module")
def gunicorn() -> Iterator[_Served]:
    """gunicorn (2 sync workers, --preload) serving apps/wsgi_app.py; stopped afterwards."""
    _needs("gunicorn")
    yield from _serve(Gunicorn, WSGI_ROUTES)


@pytest.fixture(scope="module")
def uvicorn() -> Iterator[_Served]:
    """uvicorn serving apps/asgi_app.py (Starlette); stopped afterwards."""
    _needs("uvicorn", "starlette")
    yield from _serve(Uvicorn, ASGI_ROUTES)


def _bench(benchmark: BenchmarkFixture, served: _Served, server: str) -> None:
    """ROUNDS rounds, each one wrk run of SECONDS on every route, the routes
    taking turns (each round starts one route later), so that whatever else
    the machine does weighs on every route alike: per route, requests/s
    (median round) and the CPU per request of each kind of process."""
    benchmark.group = f"HTTP: {server}"
    benchmark.extra_info.update(measure="http_routes", server=server, connections=WRK_CONNECTIONS, seconds=SECONDS)
    served.infos.append(benchmark.extra_info)
    routes = served.routes
    rates: dict[str, list[float]] = {r: [] for r in routes}
    sent = dict.fromkeys(routes, 0)
    cpu: dict[str, dict[str, float]] = {r: {} for r in routes}
    turn = iter(range(ROUNDS))

    def one_round() -> None:
        first = next(turn)
        for route in routes[first % len(routes) :] + routes[: first % len(routes)]:
            before = served.server.cpu()
            result = served.load(route, SECONDS)
            after = served.server.cpu()
            rates[route].append(result["requests_per_s"])
            sent[route] += result["requests"]
            spent = {**{k: after[k] - v for k, v in before.items()}, "client": result["cpu_s"]}
            for k, v in spent.items():
                cpu[route][k] = cpu[route].get(k, 0.0) + v

    benchmark.pedantic(one_round, rounds=ROUNDS, warmup_rounds=0)
    benchmark.extra_info["routes"] = {
        route: {
            "requests_per_s": statistics.median(rates[route]),
            "requests_per_s_rounds": sorted(rates[route]),
            "cpu_us_per_request": {k: v / sent[route] * 1e6 for k, v in cpu[route].items()},
        }
        for route in routes
    }


WSGI_ROUTES = ["plain", "queue", "mpqueue"]
ASGI_ROUTES = ["plain", "queue", "wait"]


def test_wsgi(benchmark: BenchmarkFixture, gunicorn: _Served) -> None:
    """gunicorn --preload, 2 sync workers: /plain, /queue (one task()), /mpqueue (one Queue.put)."""
    _bench(benchmark, gunicorn, "gunicorn")


def test_asgi(benchmark: BenchmarkFixture, uvicorn: _Served) -> None:
    """uvicorn + Starlette: /plain, /queue (task(), fire and forget), /wait (await task_async())."""
    _bench(benchmark, uvicorn, "uvicorn")
