"""Print a Markdown summary of a benchmark run (IPC, task pools, Celery).

Produce the data, then report it (from the repository root)::

    pytest bench/ --benchmark-only --benchmark-json=bench.json
    python bench/report.py bench.json

IPC (``test_ipc.py``): for each record size, throughput (records/s) and
round-trip latency (p50/p99 µs) per transport, each as a ratio against
faster-fifo. Task pools (``test_tasks.py``): tasks/s, the cost of one
queueing call, round-trip p50/p99, each with the ratio taskmw ÷ that pool,
then requests/s of the gunicorn routes and whether the issue's aims were met.
Scaling out (``test_celery.py``): tasks/s and round trips of the local pool,
taskmw through Celery and plain Celery, as ratios to taskmw through Celery.
A part is left out when the run has none of its benchmarks; the command
that produced the data is printed first.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any

BASELINE = "faster_fifo"
IPC_MEASURES = ("throughput", "latency")


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
        if x.get("measure") not in IPC_MEASURES:
            continue  # a task-pool benchmark: see task_rows()
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


def ipc_report(rows: list[Row]) -> list[str]:
    """Markdown lines: the IPC benchmark's tables, by record size."""
    lines: list[str] = []
    for size in dict.fromkeys(r.size for r in rows):  # in run order
        lines += ["", *throughput_table(rows, size), "", *latency_table(rows, size)]
    return lines


IPC_TITLE = "## IPC benchmark: taskmw.Ring vs faster-fifo, multiprocessing.Queue, os.pipe"
TASKS_TITLE = "## Task pools: taskmw vs faster-fifo pair, multiprocessing.Pool, ProcessPoolExecutor"


def header(doc: dict[str, Any]) -> list[str]:
    """Markdown lines: the command, commit and machine of the run."""
    machine = doc.get("machine_info", {})
    commit = doc.get("commit_info", {})
    dirty = " (dirty tree)" if commit.get("dirty") else ""
    return [
        f"Command (in `{doc.get('cwd', '?')}`): `{doc.get('command', '(not recorded)')}`",
        "",
        f"{doc.get('datetime', '?')} · commit {str(commit.get('id', '?'))[:10]}{dirty} · "
        f"Python {machine.get('python_version', '?')} · {machine.get('cpu', {}).get('brand_raw', '?')}, "
        f"{machine.get('cpu', {}).get('count', '?')} CPUs",
    ]


def report(doc: dict[str, Any], rows: list[Row]) -> str:
    """The whole Markdown report: the IPC part, the task-pool part, then the Celery part."""
    tasks = task_rows(doc)
    celery = celery_rows(doc)
    title = IPC_TITLE if rows or not (tasks or celery) else TASKS_TITLE if tasks else CELERY_TITLE
    lines = [title, "", *header(doc)]
    if rows:
        lines += ipc_report(rows)
    if tasks:
        lines += ["", *([TASKS_TITLE, ""] if rows else []), *tasks_report(tasks)]
    if celery:
        lines += ["", *([CELERY_TITLE, ""] if rows or tasks else []), *celery_report(celery)]
    return "\n".join(lines)


# -- task pools (bench/test_tasks.py) ---------------------------------------------

TASKMW = "taskmw"
POOL_NAMES = {
    "taskmw": "**taskmw** TaskServer",
    "faster_fifo": "faster-fifo queue pair",
    "mp_pool": "multiprocessing.Pool",
    "ppe": "ProcessPoolExecutor",
}
CALLS = {
    "taskmw": "`task()`",
    "faster_fifo": "`put()`",
    "mp_pool": "`apply_async()`",
    "ppe": "`submit()`",
}
AIM_VS_FASTER_FIFO = 1.5
"""taskmw's tasks/s at least this many times the faster-fifo pair's."""
AIM_VS_PPE = 10.0
"""taskmw's tasks/s at least this many times ProcessPoolExecutor's."""
AIM_CALL_US = 3.0
"""``task()`` at most this many µs (median)."""
AIM_HTTP_COST = 0.05
"""Queueing one task per request costs at most this fraction of requests/s."""


def task_rows(doc: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """The task-pool benchmarks' ``extra_info``, by measure, then by pool (or route)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for b in doc["benchmarks"]:
        x = b["extra_info"]
        measure = x.get("measure", "")
        if measure in ("tasks_throughput", "task_call", "task_round_trip"):
            out.setdefault(measure, {})[x["pool"]] = x
        elif measure == "http":
            out.setdefault(measure, {})[x["route"]] = x
    return out


def times(value: float | None, base: float | None) -> str:
    """``value / base`` as "1.23×", or "—" when either is missing."""
    if not value or not base:
        return "—"
    return f"{value / base:.2f}×"


def _span(pair: list[float] | None, fmt: str) -> str:
    """A [low, high] pair as "low–high"."""
    return "—" if not pair else f"{fmt.format(pair[0])}–{fmt.format(pair[1])}"


def _us(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}"


def _by(rows: dict[str, dict[str, Any]], key: str, reverse: bool) -> list[tuple[str, dict[str, Any]]]:
    return sorted(rows.items(), key=lambda kv: kv[1].get(key, 0.0), reverse=reverse)


def tasks_report(t: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Markdown lines: the task-pool tables, the HTTP table and the aims."""
    lines = [
        "A trivial module-level task with a 100-byte argument, 2 worker processes, every finish observed. "
        "The last column is taskmw's figure divided by that pool's.",
    ]
    rows = t.get("tasks_throughput", {})
    if rows:
        mine = rows.get(TASKMW, {}).get("tasks_per_s")
        lines += ["", "### Throughput, tasks/s (higher is better)", "",
                  "| pool | tasks/s | middle half of rounds | taskmw ÷ pool |", "|---|---:|---:|---:|"]  # fmt: skip
        for pool, x in _by(rows, "tasks_per_s", reverse=True):
            lines.append(f"| {POOL_NAMES.get(pool, pool)} | {x.get('tasks_per_s', 0):,.0f} "
                         f"| {_span(x.get('tasks_per_s_iqr'), '{:,.0f}')} "
                         f"| {times(mine, x.get('tasks_per_s'))} |")  # fmt: skip
    rows = t.get("task_call", {})
    if rows:
        mine = rows.get(TASKMW, {}).get("call_us")
        lines += ["", f"### Cost of one queueing call, µs (lower is better; median of rounds of "
                      f"{next(iter(rows.values())).get('calls_per_round', '?')} calls, workers draining)", "",
                  "| pool | call | µs per call | middle half of rounds | fastest round | taskmw ÷ pool |",
                  "|---|---|---:|---:|---:|---:|"]  # fmt: skip
        for pool, x in _by(rows, "call_us", reverse=False):
            lines.append(f"| {POOL_NAMES.get(pool, pool)} | {CALLS.get(pool, '?')} | {x.get('call_us', 0):.2f} "
                         f"| {_span(x.get('call_us_iqr'), '{:.2f}')} | {x.get('call_us_min', 0):.2f} "
                         f"| {times(mine, x.get('call_us'))} |")  # fmt: skip
    rows = t.get("task_round_trip", {})
    if rows:
        me = rows.get(TASKMW, {})
        lines += ["", "### Round trip, one task at a time, µs (lower is better)", "",
                  "| pool | p50 µs | p99 µs | taskmw ÷ pool, p50 | taskmw ÷ pool, p99 |",
                  "|---|---:|---:|---:|---:|"]  # fmt: skip
        for pool, x in _by(rows, "p50_us", reverse=False):
            lines.append(f"| {POOL_NAMES.get(pool, pool)} | {x.get('p50_us', 0):.1f} | {x.get('p99_us', 0):.1f} "
                         f"| {times(me.get('p50_us'), x.get('p50_us'))} "
                         f"| {times(me.get('p99_us'), x.get('p99_us'))} |")  # fmt: skip
    rows = t.get("http", {})
    if rows:
        plain = rows.get("plain", {}).get("requests_per_s")
        lines += ["", "### gunicorn (2 sync workers, --preload), requests/s (higher is better)", "",
                  "CPU per request, µs, summed over the processes of each kind (the client is the benchmark "
                  "process, whose threads send the requests).", "",
                  "| route | requests/s | middle half of rounds | vs /plain | CPU: HTTP workers | CPU: task pool "
                  "| CPU: client |",
                  "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for route, x in rows.items():
            cpu = x.get("cpu_us_per_request", {})
            lines.append(f"| /{route} | {x.get('requests_per_s', 0):,.0f} "
                         f"| {_span(x.get('requests_per_s_iqr'), '{:,.0f}')} "
                         f"| {times(x.get('requests_per_s'), plain)} | {_us(cpu.get('http_workers'))} "
                         f"| {_us(cpu.get('task_pool'))} | {_us(cpu.get('client'))} |")  # fmt: skip
        q = rows.get("queue", {})
        if "http_tasks_queued" in q:
            lines += ["", f"Tasks queued by /queue: {q['http_tasks_queued']:,}; finishes the HTTP workers "
                          f"observed: {q.get('http_finishes') or 'none logged'}; processes left running after "
                          f"SIGTERM: {q.get('left_running', '?')}."]  # fmt: skip
    left = {p: x["left_running"] for m in ("tasks_throughput", "task_call", "task_round_trip")
            for p, x in t.get(m, {}).items() if x.get("left_running")}  # fmt: skip
    if left:
        lines += ["", f"**Processes that outlived their pool's close():** {left}"]
    return [*lines, "", *aims(t)]


def aims(t: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Markdown lines: each aim of the issue, measured in this run, met or not."""
    tput = {p: x.get("tasks_per_s") for p, x in t.get("tasks_throughput", {}).items()}
    call = t.get("task_call", {}).get(TASKMW, {}).get("call_us")
    http = {r: x.get("requests_per_s") for r, x in t.get("http", {}).items()}

    def verdict(ok: bool | None) -> str:
        return "—" if ok is None else ("**met**" if ok else "**not met**")

    def ratio_aim(peer: str, aim: float) -> tuple[str, str, str]:
        mine, theirs = tput.get(TASKMW), tput.get(peer)
        r = mine / theirs if mine and theirs else None
        return (f"tasks/s ≥ {aim:g}× {POOL_NAMES[peer]}", f"{r:.2f}×" if r else "—",
                verdict(None if r is None else r >= aim))  # fmt: skip

    queued, plain = http.get("queue"), http.get("plain")
    cost = 1 - queued / plain if queued and plain else None
    rows = [
        ratio_aim("faster_fifo", AIM_VS_FASTER_FIFO),
        ratio_aim("ppe", AIM_VS_PPE),
        (f"`task()` ≤ {AIM_CALL_US:g} µs median", f"{call:.2f} µs" if call else "—",
         verdict(None if call is None else call <= AIM_CALL_US)),
        (f"/queue costs ≤ {AIM_HTTP_COST:.0%} of /plain's requests/s", f"{cost:.1%}" if cost is not None else "—",
         verdict(None if cost is None else cost <= AIM_HTTP_COST)),
    ]  # fmt: skip
    lines = ["### Aims (measured in this run)", "", "| aim | measured | |", "|---|---:|---|"]
    return lines + [f"| {a} | {m} | {v} |" for a, m, v in rows]


# -- scaling out (bench/test_celery.py) ------------------------------------------------

CELERY_TITLE = "## Scaling out: taskmw's local pool vs taskmw through Celery vs plain Celery"
CELERY_NAMES = {
    "local": "taskmw, local pool",
    "taskmw_celery": '**taskmw through Celery** (`backend="celery"`)',
    "celery": "plain Celery `.delay()`",
}


def celery_rows(doc: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """The Celery benchmarks' ``extra_info``, by measure, then by pool."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for b in doc["benchmarks"]:
        x = b["extra_info"]
        if x.get("measure") in ("celery_throughput", "celery_round_trip"):
            out.setdefault(x["measure"], {})[x["pool"]] = x
    return out


def celery_report(t: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Markdown lines: tasks/s and round trips of the three, as ratios to
    taskmw through Celery (what the local pool gains, what plain Celery costs)."""
    tput = t.get("celery_throughput", {})
    rt = t.get("celery_round_trip", {})
    mine_t = tput.get("taskmw_celery", {}).get("tasks_per_s")
    mine_rt = rt.get("taskmw_celery", {})
    lines = [
        "The same trivial task (100-byte argument), 2 worker processes each (Celery: one `celery worker "
        "--pool prefork -c 2`, Redis broker and result backend, all on this machine), every finish observed "
        "by the benchmark process. Ratios are each figure divided by taskmw-through-Celery's.",
        "",
        "| backend | tasks/s | middle half of rounds | ÷ via Celery | p50 round trip µs | p99 µs | p50 ÷ via Celery |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for pool in CELERY_NAMES:
        x, r = tput.get(pool, {}), rt.get(pool, {})
        if not x and not r:
            continue
        lines.append(f"| {CELERY_NAMES[pool]} | {x.get('tasks_per_s', 0):,.0f} "
                     f"| {_span(x.get('tasks_per_s_iqr'), '{:,.0f}')} | {times(x.get('tasks_per_s'), mine_t)} "
                     f"| {r.get('p50_us', 0):,.0f} | {r.get('p99_us', 0):,.0f} "
                     f"| {times(r.get('p50_us'), mine_rt.get('p50_us'))} |")  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json_file", help="output of pytest bench/ --benchmark-only --benchmark-json=FILE")
    args = parser.parse_args()
    print(report(*load(args.json_file)))


if __name__ == "__main__":
    main()
