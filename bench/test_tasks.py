"""Task pools: taskmw against ProcessPoolExecutor, multiprocessing.Pool and a
faster-fifo queue pair, and the cost of queueing a task from a gunicorn route.

Every pool runs the same trivial task (``tasks_harness.trivial``, a 100-byte
argument) on 2 worker processes, and every finish is observed in the
benchmark process. See bench/README.md; ``python bench/report.py bench.json``
prints the ratios and the aims.
"""

from __future__ import annotations

import importlib.util
import os
import resource
import signal
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pytest_benchmark.fixture import BenchmarkFixture
from tasks_harness import (
    HAVE_TASK_SERVER,
    POOLS,
    Gunicorn,
    TaskPool,
    bench_round_trips,
    bench_throughput,
    descendants,
    http_load,
    queue_and_wait,
    wait_gone,
)

PEERS = list(POOLS)  # taskmw first

TASKS_PER_ROUND = {"taskmw": 20_000, "faster_fifo": 20_000, "mp_pool": 10_000, "ppe": 5_000}
"""Tasks per throughput round; the slower pools get fewer so that the suite
stays short (rounds well under a second); tasks/s does not depend on it."""
THROUGHPUT_ROUNDS = 9
WARMUP_TASKS = 2_000
"""Tasks run (and waited for) on every new pool before anything is timed."""

CALLS_PER_ROUND = 1000
"""Calls timed together in the call-cost benchmark; per-call cost = round / this."""
CALL_ROUNDS = 30

ROUND_TRIPS = 1500
"""Round trips per latency round (LATENCY_ROUNDS of them, after a warm-up)."""
LATENCY_ROUNDS = 3

ROUTES = ["plain", "queue"]
HTTP_REQUESTS = 2000
"""Requests per HTTP round, from HTTP_THREADS client threads."""
HTTP_THREADS = 4
HTTP_ROUNDS = 7
HTTP_WARMUP = 500


def _needs_taskmw(name: str) -> Any:
    skip = pytest.mark.skipif(not HAVE_TASK_SERVER, reason="taskmw.TaskServer not importable yet")
    return pytest.param(name, marks=skip) if name == "taskmw" else name


POOL_PARAMS = [_needs_taskmw(name) for name in PEERS]


@pytest.fixture
def open_pool(benchmark: BenchmarkFixture) -> Iterator[Callable[[str], TaskPool]]:
    """Makes a pool (warmed up); afterwards closes it and checks its processes are gone."""
    made: list[tuple[TaskPool, set[int]]] = []

    def make(name: str) -> TaskPool:
        before = descendants(os.getpid())
        pool = POOLS[name]()
        made.append((pool, before))
        queue_and_wait(pool, WARMUP_TASKS)
        return pool

    yield make
    for pool, before in made:
        benchmark.extra_info["counters"] = pool.counters()
        pids = descendants(os.getpid()) - before  # the pool's processes (some start on first use)
        pool.close()
        left = wait_gone(pids, 5.0)
        benchmark.extra_info["processes"] = len(pids)
        benchmark.extra_info["left_running"] = len(left)
        if left:
            warnings.warn(f"{pool.name}: {len(left)} of its processes outlived close(): {sorted(left)}", stacklevel=1)
            for pid in left:  # started by this pool: end them, by id
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            wait_gone(left, 5.0)


@pytest.mark.parametrize("pool_name", POOL_PARAMS)
def test_tasks_throughput(benchmark: BenchmarkFixture, open_pool: Callable[[str], TaskPool], pool_name: str) -> None:
    """N tasks queued, one call each, and every finish observed: tasks/s."""
    pool = open_pool(pool_name)
    count = TASKS_PER_ROUND[pool_name]
    benchmark.group = "tasks: throughput"
    benchmark.extra_info.update(measure="tasks_throughput", pool=pool_name, tasks=count)
    bench_throughput(benchmark, pool, count, THROUGHPUT_ROUNDS)


@pytest.mark.parametrize("pool_name", POOL_PARAMS)
def test_task_call(benchmark: BenchmarkFixture, open_pool: Callable[[str], TaskPool], pool_name: str) -> None:
    """The cost of one queueing call (task, submit, apply_async, put), timed in
    rounds of CALLS_PER_ROUND calls while the workers drain what was queued.
    Before each round (not timed) the previous round's tasks are waited for."""
    pool = open_pool(pool_name)
    benchmark.group = "tasks: cost of one queueing call"
    benchmark.extra_info.update(measure="task_call", pool=pool_name, calls_per_round=CALLS_PER_ROUND)
    benchmark.pedantic(
        pool.queue, args=(CALLS_PER_ROUND,), setup=pool.wait, rounds=CALL_ROUNDS, warmup_rounds=1, iterations=1
    )
    pool.wait()
    if benchmark.stats:
        s = benchmark.stats.stats
        benchmark.extra_info["call_us"] = s.median / CALLS_PER_ROUND * 1e6
        benchmark.extra_info["call_us_min"] = s.min / CALLS_PER_ROUND * 1e6
        benchmark.extra_info["call_us_iqr"] = [s.q1 / CALLS_PER_ROUND * 1e6, s.q3 / CALLS_PER_ROUND * 1e6]


@pytest.mark.parametrize("pool_name", POOL_PARAMS)
def test_task_round_trip(benchmark: BenchmarkFixture, open_pool: Callable[[str], TaskPool], pool_name: str) -> None:
    """One task at a time, waiting for its return value (taskwait, submit().result(),
    apply_async().get(), put + get): per-call latency p50/p99."""
    pool = open_pool(pool_name)
    benchmark.group = "tasks: round trip"
    benchmark.extra_info.update(measure="task_round_trip", pool=pool_name)
    bench_round_trips(benchmark, pool, ROUND_TRIPS, LATENCY_ROUNDS)


# -- HTTP ------------------------------------------------------------------------


class _Server:
    """The module's one gunicorn, and what the HTTP tests sent it."""

    def __init__(self) -> None:
        self.gunicorn = Gunicorn()
        self.queued = 0
        self.infos: list[dict[str, Any]] = []

    def load(self, route: str, count: int) -> None:
        http_load(self.gunicorn.addr, f"/{route}", count, HTTP_THREADS)
        if route == "queue":
            self.queued += count


@pytest.fixture(scope="module")
def http_server() -> Iterator[_Server]:
    """gunicorn (2 sync workers, --preload) serving bench/apps/wsgi_app.py, for
    every route's benchmark; stopped (SIGTERM, bounded wait, SIGKILL) afterwards."""
    if not HAVE_TASK_SERVER:
        pytest.skip("taskmw.TaskServer not importable yet")
    if importlib.util.find_spec("gunicorn") is None:
        pytest.skip("gunicorn not installed")
    server = _Server()
    try:
        for route in ROUTES:
            server.load(route, HTTP_WARMUP)
        yield server
    finally:
        g = server.gunicorn
        g.stop()
        finishes = g.finishes()
        for info in server.infos:  # extra_info is written to the JSON at session end
            info.update(http_tasks_queued=server.queued, http_finishes=finishes, left_running=len(g.leftover))
        if g.leftover:
            warnings.warn(f"gunicorn: {len(g.leftover)} processes outlived SIGTERM: {sorted(g.leftover)}", stacklevel=1)
        if finishes.get("ok", 0) != server.queued:
            warnings.warn(
                f"HTTP: {server.queued} tasks queued, finishes logged by the workers: {finishes}\n{g.log()[-3000:]}",
                stacklevel=1,
            )
        else:
            g.remove_log()


@pytest.mark.parametrize("route", ROUTES)
def test_http(benchmark: BenchmarkFixture, http_server: _Server, route: str) -> None:
    """Requests/s of a gunicorn route, /plain or /queue (the same plus one task())."""
    benchmark.group = "tasks: HTTP requests"
    benchmark.extra_info.update(
        measure="http", pool="taskmw", route=route, requests=HTTP_REQUESTS, client_threads=HTTP_THREADS
    )
    http_server.infos.append(benchmark.extra_info)
    server_cpu, client_cpu = http_server.gunicorn.cpu(), _self_cpu()
    benchmark.pedantic(http_server.load, args=(route, HTTP_REQUESTS), rounds=HTTP_ROUNDS, warmup_rounds=1)
    if benchmark.stats:
        s = benchmark.stats.stats
        benchmark.extra_info["requests_per_s"] = HTTP_REQUESTS / s.median
        benchmark.extra_info["requests_per_s_iqr"] = [HTTP_REQUESTS / s.q3, HTTP_REQUESTS / s.q1]
    # CPU per request, over every round: where a /queue request's extra cost goes.
    sent = HTTP_REQUESTS * (HTTP_ROUNDS + 1)
    after = http_server.gunicorn.cpu()
    benchmark.extra_info["cpu_us_per_request"] = {
        **{k: (after[k] - v) / sent * 1e6 for k, v in server_cpu.items()},
        "client": (_self_cpu() - client_cpu) / sent * 1e6,
    }


def _self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime
