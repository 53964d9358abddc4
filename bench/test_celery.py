"""What scaling out costs: taskmw's local pool, taskmw through Celery
(``TaskServer(backend="celery")``) and plain Celery ``.delay()``, each with 2
worker processes, running ``tasks_harness.trivial`` (a 100-byte argument);
tasks/s and round-trip latency. See bench/README.md; ``python
bench/report.py bench.json`` prints them as ratios.

Needs redis-server and ``pip install ./plugins/taskmw-celery`` (skipped
otherwise). Every wait is bounded; the Redis server and the Celery worker are
stopped and checked gone afterwards.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery_harness import CeleryDelayPool, Redis, TaskmwCeleryPool, celery_worker, require
from pytest_benchmark.fixture import BenchmarkFixture
from tasks_harness import TaskmwPool, TaskPool, bench_round_trips, bench_throughput, queue_and_wait

require()

POOLS = ["local", "taskmw_celery", "celery"]
TASKS_PER_ROUND = {"local": 20_000, "taskmw_celery": 1_000, "celery": 1_000}
"""Tasks per throughput round (Celery's rounds stay around a second)."""
THROUGHPUT_ROUNDS = 5
ROUND_TRIPS = 200
LATENCY_ROUNDS = 3
WARMUP_TASKS = 200


@pytest.fixture(scope="module")
def celery_app(tmp_path_factory: pytest.TempPathFactory, monkeypatch_module: pytest.MonkeyPatch) -> Iterator[Any]:
    """Redis and one Celery worker for the module; the bench process's copy of the app."""
    workdir = tmp_path_factory.mktemp("celery-bench")
    redis = Redis(workdir)
    try:
        monkeypatch_module.setenv("TASKMW_CELERY_URL", redis.url)
        bench = Path(__file__).resolve().parent
        with celery_worker(redis.url, workdir, app="celery_app:capp", path=bench / "apps", loglevel="warning") as w:
            w.snapshot()
            import celery_app as module

            yield importlib.reload(module)
    finally:
        redis.stop()


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent),
                                                              os.environ.get("PYTHONPATH")])))  # fmt: skip
        yield mp


@pytest.fixture
def open_pool(celery_app: Any) -> Iterator[Callable[[str], TaskPool]]:
    made: list[TaskPool] = []

    def make(name: str) -> TaskPool:
        pool: TaskPool
        if name == "local":
            pool = TaskmwPool()
        elif name == "taskmw_celery":
            pool = TaskmwCeleryPool(celery_app.capp)
        else:
            pool = CeleryDelayPool(celery_app.plain)
        made.append(pool)
        queue_and_wait(pool, WARMUP_TASKS)
        return pool

    yield make
    for pool in made:
        pool.close()


@pytest.mark.parametrize("pool_name", POOLS)
def test_celery_throughput(benchmark: BenchmarkFixture, open_pool: Callable[[str], TaskPool], pool_name: str) -> None:
    """N tasks queued, one call each, and every finish observed: tasks/s."""
    pool = open_pool(pool_name)
    count = TASKS_PER_ROUND[pool_name]
    benchmark.group = "celery: throughput"
    benchmark.extra_info.update(measure="celery_throughput", pool=pool_name, tasks=count)
    bench_throughput(benchmark, pool, count, THROUGHPUT_ROUNDS)
    benchmark.extra_info["counters"] = pool.counters()


@pytest.mark.parametrize("pool_name", POOLS)
def test_celery_round_trip(benchmark: BenchmarkFixture, open_pool: Callable[[str], TaskPool], pool_name: str) -> None:
    """One task at a time, waiting for its return value: p50/p99 µs."""
    pool = open_pool(pool_name)
    benchmark.group = "celery: round trip"
    benchmark.extra_info.update(measure="celery_round_trip", pool=pool_name)
    bench_round_trips(benchmark, pool, ROUND_TRIPS, LATENCY_ROUNDS)
