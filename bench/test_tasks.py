"""Task pools: taskmw against ProcessPoolExecutor, multiprocessing.Pool and a
faster-fifo queue pair (throughput, the cost of one queueing call, round
trips), taskmw with taskmw-logging, and the CPU per task at a paced rate
against a ``multiprocessing.Queue`` pair.

Every pool runs the same trivial task (``tasks_harness.trivial``, a 100-byte
argument) on 2 worker processes, and every finish is observed in the
benchmark process. See bench/README.md; ``python bench/report.py bench.json``
prints the ratios and the aims.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pytest_benchmark.fixture import BenchmarkFixture
from tasks_harness import (
    HAVE_TASK_SERVER,
    OTHER_POOLS,
    POOLS,
    TaskPool,
    bench_round_trips,
    bench_throughput,
    descendants,
    paced,
    pool_cpu,
    queue_and_wait,
    wait_gone,
)

PEERS = list(POOLS)  # taskmw first

TASKS_PER_ROUND = {"taskmw": 20_000, "taskmw_logging": 20_000, "faster_fifo": 20_000, "mp_pool": 10_000, "ppe": 5_000}
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


def _needs_taskmw(name: str) -> Any:
    skip = pytest.mark.skipif(not HAVE_TASK_SERVER, reason="taskmw.TaskServer not importable yet")
    if name == "taskmw_logging":
        no_plugin = pytest.mark.skipif(importlib.util.find_spec("taskmw_logging") is None,
                                       reason="taskmw-logging not installed")  # fmt: skip
        return pytest.param(name, marks=[skip, no_plugin])
    return pytest.param(name, marks=skip) if name == "taskmw" else name


POOL_PARAMS = [_needs_taskmw(name) for name in PEERS]
THROUGHPUT_PARAMS = [POOL_PARAMS[0], _needs_taskmw("taskmw_logging"), *POOL_PARAMS[1:]]


@pytest.fixture
def open_pool(benchmark: BenchmarkFixture) -> Iterator[Callable[[str], TaskPool]]:
    """Makes a pool (warmed up); afterwards closes it and checks its processes are gone."""
    made: list[tuple[TaskPool, set[int]]] = []

    def make(name: str) -> TaskPool:
        before = descendants(os.getpid())
        pool = (POOLS.get(name) or OTHER_POOLS[name])()
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


@pytest.mark.parametrize("pool_name", THROUGHPUT_PARAMS)
def test_tasks_throughput(benchmark: BenchmarkFixture, open_pool: Callable[[str], TaskPool], pool_name: str) -> None:
    """N tasks queued, one call each, and every finish observed: tasks/s
    (``taskmw_logging``: taskmw with taskmw-logging logging to a file at INFO)."""
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


# -- CPU per task at a paced rate -----------------------------------------------------

PACED_RATE = 3000
"""Tasks a second in the paced benchmark, queued one at a time with sleeps between."""
PACED_TASKS = 3000
"""Tasks per paced round (1 s at PACED_RATE)."""
PACED_ROUNDS = 3
PACED_POOLS = [_needs_taskmw("taskmw"), "mp_queue"]


@pytest.mark.parametrize("pool_name", PACED_POOLS)
def test_paced_cpu(benchmark: BenchmarkFixture, open_pool: Callable[[str], TaskPool], pool_name: str) -> None:
    """CPU per task, over every process (this one, which queues and observes
    the finishes, and the pool's), while tasks are queued one at a time at
    PACED_RATE a second: what offloading costs at a web app's rate."""
    before_pids = descendants(os.getpid())
    pool = open_pool(pool_name)
    pids = descendants(os.getpid()) - before_pids
    benchmark.group = "tasks: CPU per task at 3,000 tasks/s"
    benchmark.extra_info.update(measure="paced_cpu", pool=pool_name, rate=PACED_RATE, tasks=PACED_TASKS)
    rounds: list[dict[str, float]] = []

    def one_round() -> None:
        before = pool_cpu(pids)
        paced(pool, PACED_RATE, PACED_TASKS)
        after = pool_cpu(pids)
        rounds.append({k: (after[k] - v) / PACED_TASKS * 1e6 for k, v in before.items()})

    benchmark.pedantic(one_round, rounds=PACED_ROUNDS, warmup_rounds=1)
    timed = sorted(rounds[1:], key=lambda r: r["submitter"] + r["pool"])  # the warm-up round is the first
    middle = timed[len(timed) // 2]
    benchmark.extra_info["cpu_us_per_task"] = middle["submitter"] + middle["pool"]
    benchmark.extra_info["cpu_us_per_task_by_process"] = middle
    benchmark.extra_info["cpu_us_per_task_rounds"] = [r["submitter"] + r["pool"] for r in timed]
