"""Throughput and round-trip latency of taskmw.Ring against other IPC transports.

Two processes: the benchmark process and one forked child. See bench/README.md.
"""

from __future__ import annotations

import pytest
from harness import Harness, ping_pong, consume, echo, percentile_us, send_round

SIZES = {"100B": 100, "10KiB": 10 * 1024}

RECORDS_PER_ROUND = {"100B": 200_000, "10KiB": 40_000}
"""Records sent per throughput round, by size (a round of the fastest transport
takes a few tenths of a second)."""

SLOW = {"mp_queue": 4}
"""Transports that send RECORDS_PER_ROUND // factor records per round, to keep
the suite short; records/s does not depend on it."""

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
def test_throughput(benchmark, harness: Harness, transport: str, api: str, size: str) -> None:  # type: ignore[no-untyped-def]
    """Parent sends N records, the child reads them all and acks on an os.pipe."""
    count = RECORDS_PER_ROUND[size] // SLOW.get(transport, 1)
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


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("transport", LATENCY)
def test_latency(benchmark, harness: Harness, transport: str, size: str) -> None:  # type: ignore[no-untyped-def]
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
    )
