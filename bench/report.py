"""Print a Markdown summary of an IPC benchmark run.

Produce the data, then report it (from the repository root)::

    pytest bench/ --benchmark-only --benchmark-json=bench.json
    python bench/report.py bench.json

For each record size it prints throughput (records/s) and round-trip latency
(p50/p99 µs) per transport, each as a ratio against faster-fifo, and the
command that produced the data.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any

BASELINE = "faster_fifo"


@dataclass(frozen=True)
class Row:
    """One benchmark's result, from its ``extra_info``."""

    measure: str  # "throughput" or "latency"
    transport: str
    api: str  # "batch" or "single"
    size: str
    records_per_s: float = 0.0
    p50_us: float = 0.0
    p99_us: float = 0.0


def load(path: str) -> tuple[dict[str, Any], list[Row]]:
    """The JSON document and its benchmarks as rows."""
    with open(path) as f:
        doc: dict[str, Any] = json.load(f)
    rows = []
    for b in doc["benchmarks"]:
        x = b["extra_info"]
        rows.append(
            Row(
                measure=x["measure"],
                transport=x["transport"],
                api=x["api"],
                size=x["size"],
                records_per_s=x.get("records_per_s", 0.0),
                p50_us=x.get("p50_us", 0.0),
                p99_us=x.get("p99_us", 0.0),
            )
        )
    return doc, rows


def ratio(value: float, base: float | None) -> str:
    """``value / base`` as "1.23× faster-fifo", or "—" without a baseline."""
    if not base:
        return "—"
    return f"{value / base:.2f}× faster-fifo"


def throughput_table(rows: list[Row], size: str) -> list[str]:
    """Markdown lines: records/s per transport and API at one size."""
    mine = sorted(
        (r for r in rows if r.measure == "throughput" and r.size == size),
        key=lambda r: -r.records_per_s,
    )
    base = {r.api: r.records_per_s for r in mine if r.transport == BASELINE}
    lines = [
        f"### Throughput, {size} records (higher is better)",
        "",
        "| transport | producer API | records/s | vs faster-fifo, same API |",
        "|---|---|---:|---:|",
    ]
    for r in mine:
        lines.append(
            f"| {r.transport} | {r.api} | {r.records_per_s:,.0f} | {ratio(r.records_per_s, base.get(r.api))} |"
        )
    return lines


def latency_table(rows: list[Row], size: str) -> list[str]:
    """Markdown lines: round-trip p50/p99 per transport at one size."""
    mine = sorted((r for r in rows if r.measure == "latency" and r.size == size), key=lambda r: r.p50_us)
    base = next((r for r in mine if r.transport == BASELINE), None)
    lines = [
        f"### Round-trip latency, {size} records (lower is better)",
        "",
        "| transport | p50 µs | p99 µs | p50 vs faster-fifo | p99 vs faster-fifo |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in mine:
        lines.append(
            f"| {r.transport} | {r.p50_us:.1f} | {r.p99_us:.1f} "
            f"| {ratio(r.p50_us, base.p50_us if base else None)} "
            f"| {ratio(r.p99_us, base.p99_us if base else None)} |"
        )
    return lines


def report(doc: dict[str, Any], rows: list[Row]) -> str:
    """The whole Markdown report."""
    machine = doc.get("machine_info", {})
    commit = doc.get("commit_info", {})
    dirty = " (dirty tree)" if commit.get("dirty") else ""
    lines = [
        "## IPC benchmark: taskmw.Ring vs faster-fifo, multiprocessing.Queue, os.pipe",
        "",
        f"Command (in `{doc.get('cwd', '?')}`): `{doc.get('command', '(not recorded)')}`",
        "",
        f"{doc.get('datetime', '?')} · commit {str(commit.get('id', '?'))[:10]}{dirty} · "
        f"Python {machine.get('python_version', '?')} · {machine.get('cpu', {}).get('brand_raw', '?')}, "
        f"{machine.get('cpu', {}).get('count', '?')} CPUs",
    ]
    for size in dict.fromkeys(r.size for r in rows):  # in run order
        lines += ["", *throughput_table(rows, size), "", *latency_table(rows, size)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json_file", help="output of pytest bench/ --benchmark-only --benchmark-json=FILE")
    args = parser.parse_args()
    print(report(*load(args.json_file)))


if __name__ == "__main__":
    main()
