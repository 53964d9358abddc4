"""Throughput and round-trip latency of taskmw.Ring against other IPC transports.

Two processes: the benchmark process and one forked child. See bench/README.md.
"""

from __future__ import annotations

import pytest
from harness import Harness, consume, echo, percentile_us, ping_pong, send_round
from pytest_benchmark.fixture import BenchmarkFixture

SIZES = {"100B": 100, "10KiB": 10 * 1024}

RECORDS_PER_ROUND = {"100B": 1_500_000, "10KiB": 100_000}
"""Records sent per throughput round, by size: a round of the fastest variant
(ring, batch) takes about 0.25 s and overflows its 64 MiB, so the producer
also meets a full buffer."""

SLOWER = {("ring", "single"): 4, ("faster_fifo", "batch"): 4, ("faster_fifo", "single"): 8, ("mp_queue", "single"): 16}
"""Variants that send RECORDS_PER_ROUND // factor records per round, so that
the suite stays short (rounds of at most about 1 s); records/s does not depend on it."""

THROUGHPUT = [
    ("ring", "batch"),
    ("ring", "single"),
    ("faster_fifo", "batch"),
    ("faster_fifo", "single"),
    ("mp_queue", "single"),
    ("pipe", "batch"),
]
"""(transport, producer API): "batch" sends BATCH records per call, "single"
one record per call. Consumers always use their batched get, where they have one."""

LATENCY = ["ring", "faster_fifo", "mp_queue", "pipe"]

THROUGHPUT_ROUNDS = 5
ROUND_TRIPS = 4000
"""Round trips per latency round (LATENCY_ROUNDS of them, after a warm-up)."""
LATENCY_ROUNDS = 3


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(("transport", "api"), THROUGHPUT, ids=[f"{t}-{a}" for t, a in THROUGHPUT])
def test_throughput(benchmark: BenchmarkFixture, harness: Harness, transport: str, api: str, size: str) -> None:
    """Parent sends N records, the child reads them all and acks on an os.pipe."""
    count = RECORDS_PER_ROUND[size] // SLOWER.get((transport, api), 1)
    channel = harness.channel(transport)
    peer = harness.fork(consume, channel, count)
    record = b"x" * SIZES[size]
    benchmark.group = f"throughput {size}"
    benchmark.extra_info.update(measure="throughput", transport=transport, api=api, size=size, records=count)
    benchmark.pedantic(
        send_round,
        args=(channel, peer, record, count, api == "batch"),
        rounds=THROUGHPUT_ROUNDS,
        warmup_rounds=1,
    )
    if benchmark.stats:
        benchmark.extra_info["records_per_s"] = count / benchmark.stats.stats.median
    benchmark.extra_info["counters"] = channel.counters()


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("transport", LATENCY)
def test_latency(benchmark: BenchmarkFixture, harness: Harness, transport: str, size: str) -> None:
    """Ping-pong: one record to the child, echoed back on a second channel."""
    to_child = harness.channel(transport)
    to_parent = harness.channel(transport)
    peer = harness.fork(echo, to_child, to_parent)
    peer.wait_ack()
    record = b"x" * SIZES[size]
    ping_pong(to_child, to_parent, record, ROUND_TRIPS // 4, [])  # warm-up, not kept
    samples: list[int] = []
    benchmark.group = f"latency {size}"
    benchmark.extra_info.update(measure="latency", transport=transport, api="single", size=size)
    benchmark.pedantic(
        ping_pong, args=(to_child, to_parent, record, ROUND_TRIPS, samples), rounds=LATENCY_ROUNDS
    )
    benchmark.extra_info.update(
        round_trips=len(samples),
        p50_us=percentile_us(samples, 0.50),
        p99_us=percentile_us(samples, 0.99),
        counters=to_child.counters(),
    )
