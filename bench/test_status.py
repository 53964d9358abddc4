"""The pool's record of tasks: what a look-up costs, from a process that did
not queue the task, side by side with the hand-made way to share job state
between HTTP workers (a ``multiprocessing.Manager`` dict, one proxy call per
look-up) and with Celery's ``AsyncResult`` (in bench/test_celery.py).

The cost of *recording* every task shows in bench/test_tasks.py's
throughput, measured against the commit before the record (README).
"""

from __future__ import annotations

import multiprocessing
import os
import random
from collections.abc import Iterator

import pytest
from pytest_benchmark.fixture import BenchmarkFixture
from tasks_harness import trivial

from taskmw import TaskServer

TASKS = 10_000
LOOKUPS_PER_ROUND = 1000


@pytest.fixture(scope="module")
def finished_pool() -> Iterator[tuple[TaskServer, list[int]]]:
    with TaskServer(2, entrypoints=False) as server:
        ids = [server.task(trivial, b"x" * 100) for _ in range(TASKS)]
        server.result(ids[-1], timeout=60)
        yield server, ids


def test_status_lookup(benchmark: BenchmarkFixture, finished_pool: tuple[TaskServer, list[int]]) -> None:
    """``server.status(id)`` of random finished tasks (the same shared memory
    in every process of the pool, so a look-up here costs what it costs in
    another HTTP worker)."""
    server, ids = finished_pool
    picks = [random.choice(ids) for _ in range(LOOKUPS_PER_ROUND)]
    benchmark.group = "record: one look-up"
    benchmark.extra_info.update(measure="status_lookup", lookups_per_round=LOOKUPS_PER_ROUND, pid=os.getpid())

    def lookups() -> None:
        for task_id in picks:
            server.status(task_id)

    benchmark.pedantic(lookups, rounds=20, warmup_rounds=1, iterations=1)
    if benchmark.stats:
        benchmark.extra_info["lookup_us"] = benchmark.stats.stats.median / LOOKUPS_PER_ROUND * 1e6


def test_result_lookup(benchmark: BenchmarkFixture, finished_pool: tuple[TaskServer, list[int]]) -> None:
    """``server.result(id)`` of random finished tasks (the record, then the kept finish record)."""
    server, ids = finished_pool
    picks = [random.choice(ids) for _ in range(LOOKUPS_PER_ROUND)]
    benchmark.group = "record: one look-up"
    benchmark.extra_info.update(measure="result_lookup", lookups_per_round=LOOKUPS_PER_ROUND)

    def lookups() -> None:
        for task_id in picks:
            server.result(task_id)

    benchmark.pedantic(lookups, rounds=20, warmup_rounds=1, iterations=1)
    if benchmark.stats:
        benchmark.extra_info["lookup_us"] = benchmark.stats.stats.median / LOOKUPS_PER_ROUND * 1e6


def test_manager_dict_lookup(benchmark: BenchmarkFixture) -> None:
    """The hand-made peer: job states in a ``multiprocessing.Manager().dict()``
    shared by every HTTP worker, one proxy call per look-up."""
    with multiprocessing.Manager() as manager:
        jobs = manager.dict({i: {"state": "done", "status": "ok", "result": 100} for i in range(TASKS)})
        picks = [random.randrange(TASKS) for _ in range(LOOKUPS_PER_ROUND)]
        benchmark.group = "record: one look-up"
        benchmark.extra_info.update(measure="manager_dict_lookup", lookups_per_round=LOOKUPS_PER_ROUND)

        def lookups() -> None:
            for job in picks:
                jobs[job]

        benchmark.pedantic(lookups, rounds=20, warmup_rounds=1, iterations=1)
        if benchmark.stats:
            benchmark.extra_info["lookup_us"] = benchmark.stats.stats.median / LOOKUPS_PER_ROUND * 1e6
