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
import statistics
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


# -- task pools (bench/test_tasks.py, bench/test_http.py, bench/test_status.py) ------------

TASKMW = "taskmw"
POOL_NAMES = {
    "taskmw": "**taskmw** TaskServer",
    "taskmw_logging": "taskmw with taskmw-logging (file, INFO)",
    "faster_fifo": "faster-fifo queue pair",
    "mp_pool": "multiprocessing.Pool",
    "ppe": "ProcessPoolExecutor",
    "mp_queue": "multiprocessing.Queue pair",
}
CALLS = {
    "taskmw": "`task()`",
    "faster_fifo": "`put()`",
    "mp_pool": "`apply_async()`",
    "ppe": "`submit()`",
}
TASK_MEASURES = ("tasks_throughput", "task_call", "task_round_trip", "paced_cpu")
LOOKUPS = {
    "status_lookup": "`server.status(id)`",
    "result_lookup": "`server.result(id)`",
    "manager_dict_lookup": "`multiprocessing.Manager` dict, `d[id]`",
}
SERVERS = {
    "gunicorn": "gunicorn --preload, 2 sync workers, 2 task workers",
    "uvicorn": "uvicorn + Starlette, one process, 2 task workers",
}


def task_rows(doc: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """The task-pool benchmarks' ``extra_info``, by measure, then by pool
    (HTTP: by ``http:<server>``, then by route; look-ups: ``lookup``, by measure)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for b in doc["benchmarks"]:
        x = b["extra_info"]
        measure = x.get("measure", "")
        if measure in TASK_MEASURES:
            out.setdefault(measure, {})[x["pool"]] = x
        elif measure == "http_routes":  # one benchmark per server, its routes taking turns
            check = {"check": x["check"]} if "check" in x else {}
            out[f"http:{x['server']}"] = {r: {**v, **check, "connections": x.get("connections")}
                                          for r, v in x["routes"].items()}  # fmt: skip
        elif measure == "http":  # an older run: one benchmark per route
            out.setdefault(f"http:{x.get('server', 'gunicorn')}", {})[x["route"]] = x
        elif measure in LOOKUPS:
            out.setdefault("lookup", {})[measure] = x
    return out


def times(value: float | None, base: float | None) -> str:
    """``value / base`` as "1.23×", or "—" when either is missing."""
    if not value or not base:
        return "—"
    return f"{value / base:.2f}×"


def _span(pair: list[float] | None, fmt: str) -> str:
    """A [low, high] pair as "low–high"."""
    return "—" if not pair else f"{fmt.format(pair[0])}–{fmt.format(pair[-1])}"


def _us(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}"


def _by(rows: dict[str, dict[str, Any]], key: str, reverse: bool) -> list[tuple[str, dict[str, Any]]]:
    return sorted(rows.items(), key=lambda kv: kv[1].get(key, 0.0), reverse=reverse)


def tasks_report(t: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Markdown lines: the task-pool tables, the paced CPU, the HTTP tables, the look-ups and the aims."""
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
        logged = rows.get("taskmw_logging", {}).get("counters", {})
        if "finish_lines_logged" in logged:
            lines += ["", f"taskmw-logging wrote {logged['finish_lines_logged']:,} finish lines for "
                          f"{logged.get('finished', 0):,} finishes."]  # fmt: skip
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
    rows = t.get("paced_cpu", {})
    if rows:
        mine = rows.get(TASKMW, {}).get("cpu_us_per_task")
        rate = next(iter(rows.values())).get("rate", "?")
        lines += ["", f"### CPU per task at {rate:,} tasks/s, one at a time, µs (lower is better; every process)",
                  "", "| pool | CPU µs per task | of it: queueing process | of it: pool's processes "
                  "| rounds | taskmw ÷ pool |", "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
        for pool, x in _by(rows, "cpu_us_per_task", reverse=False):
            by = x.get("cpu_us_per_task_by_process", {})
            lines.append(f"| {POOL_NAMES.get(pool, pool)} | {x.get('cpu_us_per_task', 0):.0f} "
                         f"| {_us(by.get('submitter'))} | {_us(by.get('pool'))} "
                         f"| {_span(x.get('cpu_us_per_task_rounds'), '{:.0f}')} "
                         f"| {times(mine, x.get('cpu_us_per_task'))} |")  # fmt: skip
    for server, title in SERVERS.items():
        rows = t.get(f"http:{server}", {})
        if rows:
            lines += ["", *http_table(title, rows)]
    rows = t.get("lookup", {})
    if rows:
        lines += ["", "### A look-up of a finished task, from any process, µs (lower is better)", "",
                  "| look-up | µs |", "|---|---:|"]  # fmt: skip
        for measure, what in LOOKUPS.items():
            if measure in rows:
                lines.append(f"| {what} | {rows[measure].get('lookup_us', 0):.1f} |")
    left = {p: x["left_running"] for m in TASK_MEASURES
            for p, x in t.get(m, {}).items() if x.get("left_running")}  # fmt: skip
    if left:
        lines += ["", f"**Processes that outlived their pool's close():** {left}"]
    return [*lines, "", *aims_table(figures(t))]


def http_table(title: str, rows: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown lines: requests/s and CPU per request of one server's routes."""
    plain = rows.get("plain", {}).get("requests_per_s")
    conns = next(iter(rows.values())).get("connections", "?")
    lines = [f"### HTTP: {title}; wrk, {conns} connections; requests/s (higher is better)", "",
             "CPU per request, µs, summed over the processes of each kind (the client is wrk).", "",
             "| route | requests/s | rounds | ÷ /plain | CPU: HTTP workers | CPU: task pool "
             "| CPU: mp.Queue consumers | CPU: client |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for route, x in rows.items():
        cpu = x.get("cpu_us_per_request", {})
        cpus = " | ".join(_us(cpu.get(k)) for k in ("http_workers", "task_pool", "mp_consumers", "client"))
        lines.append(f"| /{route} | {x.get('requests_per_s', 0):,.0f} "
                     f"| {_span(x.get('requests_per_s_rounds'), '{:,.0f}')} "
                     f"| {times(x.get('requests_per_s'), plain)} | {cpus} |")  # fmt: skip
    check = next((x["check"] for x in rows.values() if "check" in x), None)
    if check:
        mp = (f"; calls put on the multiprocessing.Queue: {check['mpqueue_puts']:,}, run by its consumers: "
              f"{check['mpqueue_done']:,}") if "mpqueue_puts" in check else ""  # fmt: skip
        lines += ["", f"Tasks queued: {check['tasks_queued']:,}; finishes the app observed: "
                      f"{check.get('finishes') or 'none logged'}{mp}; processes left running after SIGTERM: "
                      f"{check.get('left_running', '?')}."]  # fmt: skip
    return lines


# -- the aims and the other ratios, one run or several ------------------------------------


@dataclass(frozen=True)
class Figure:
    """One figure of a run (a ratio, or a µs), with the aim it is held to, if any."""

    name: str
    value: float | None
    unit: str = "×"
    at_least: float | None = None
    at_most: float | None = None

    @property
    def aim(self) -> str:
        if self.at_least is not None:
            return f"≥ {self.at_least:g}{self.unit}"
        if self.at_most is not None:
            return f"≤ {self.at_most:g}{self.unit}"
        return ""

    @property
    def met(self) -> bool | None:
        """Whether the aim was met (None: no aim, or not measured)."""
        if self.value is None or not self.aim:
            return None
        if self.at_least is not None:
            return self.value >= self.at_least
        return self.at_most is not None and self.value <= self.at_most

    def shown(self, value: float | None = None) -> str:
        v = self.value if value is None else value
        return "—" if v is None else f"{v:.2f}{' µs' if self.unit == ' µs' else '×'}"


AIM_VS_FASTER_FIFO = 2.0
"""taskmw's tasks/s at least this many times the faster-fifo pair's."""
AIM_VS_PPE = 20.0
"""taskmw's tasks/s at least this many times ProcessPoolExecutor's."""
AIM_CALL_US = 2.5
"""``task()`` at most this many µs (median, finishes draining)."""
AIM_ROUND_TRIP = 1.0
"""taskmw's round-trip p50 at most this many times faster-fifo's."""
AIM_LOGGING = 0.5
"""taskmw with taskmw-logging at least this fraction of its tasks/s without."""
AIM_HTTP_QUEUE = 0.90
"""/queue at least this fraction of /plain's requests/s (gunicorn and uvicorn)."""
AIM_VS_MPQUEUE = 1.0
"""gunicorn's /queue at least this many times /mpqueue's requests/s (no dearer)."""
AIM_PACED_CPU = 0.6
"""taskmw's CPU per task at a paced rate at most this many times the multiprocessing.Queue pair's."""


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def figures(t: dict[str, dict[str, dict[str, Any]]]) -> list[Figure]:
    """Every ratio of a run that the report follows, the aims first."""
    tput = {p: x.get("tasks_per_s") for p, x in t.get("tasks_throughput", {}).items()}
    call = t.get("task_call", {}).get(TASKMW, {}).get("call_us")
    p50 = {p: x.get("p50_us") for p, x in t.get("task_round_trip", {}).items()}
    cpu = {p: x.get("cpu_us_per_task") for p, x in t.get("paced_cpu", {}).items()}
    wsgi = {r: x.get("requests_per_s") for r, x in t.get("http:gunicorn", {}).items()}
    asgi = {r: x.get("requests_per_s") for r, x in t.get("http:uvicorn", {}).items()}
    me = tput.get(TASKMW)
    out = [
        Figure("tasks/s, taskmw ÷ faster-fifo pair", _ratio(me, tput.get("faster_fifo")), at_least=AIM_VS_FASTER_FIFO),
        Figure("tasks/s, taskmw ÷ ProcessPoolExecutor", _ratio(me, tput.get("ppe")), at_least=AIM_VS_PPE),
        Figure("`task()` median, finishes draining", call, unit=" µs", at_most=AIM_CALL_US),
        Figure("round trip p50, taskmw ÷ faster-fifo pair", _ratio(p50.get(TASKMW), p50.get("faster_fifo")),
               at_most=AIM_ROUND_TRIP),
        Figure("tasks/s with taskmw-logging ÷ without", _ratio(tput.get("taskmw_logging"), me), at_least=AIM_LOGGING),
        Figure("gunicorn: /queue ÷ /plain, requests/s", _ratio(wsgi.get("queue"), wsgi.get("plain")),
               at_least=AIM_HTTP_QUEUE),
        Figure("gunicorn: /queue ÷ /mpqueue, requests/s", _ratio(wsgi.get("queue"), wsgi.get("mpqueue")),
               at_least=AIM_VS_MPQUEUE),
        Figure("uvicorn: /queue ÷ /plain, requests/s", _ratio(asgi.get("queue"), asgi.get("plain")),
               at_least=AIM_HTTP_QUEUE),
        Figure("CPU per task at 3,000/s, taskmw ÷ multiprocessing.Queue pair",
               _ratio(cpu.get(TASKMW), cpu.get("mp_queue")), at_most=AIM_PACED_CPU),
        Figure("tasks/s, taskmw ÷ multiprocessing.Pool", _ratio(me, tput.get("mp_pool"))),
        Figure("gunicorn: /mpqueue ÷ /plain, requests/s", _ratio(wsgi.get("mpqueue"), wsgi.get("plain"))),
        Figure("uvicorn: /wait ÷ /plain, requests/s", _ratio(asgi.get("wait"), asgi.get("plain"))),
    ]  # fmt: skip
    return [f for f in out if f.value is not None]


def _verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("**met**" if ok else "**not met**")


def aims_table(figs: list[Figure]) -> list[str]:
    """Markdown lines: each aim of issue 15, measured in this run, met or not."""
    lines = ["### Aims (issue 15, measured in this run)", "", "| aim | measured | |", "|---|---:|---|"]
    lines += [f"| {f.name} {f.aim} | {f.shown()} | {_verdict(f.met)} |" for f in figs if f.aim]
    others = [f for f in figs if not f.aim]
    if others:
        lines += ["", "Other ratios: " + "; ".join(f"{f.name} {f.shown()}" for f in others) + "."]
    return lines


def spread_report(runs: list[tuple[str, dict[str, Any]]]) -> str:
    """Markdown: every figure over several runs (min, median, max), and in
    how many runs each aim was met."""
    by_name: dict[str, list[Figure]] = {}
    for _path, doc in runs:
        for f in figures(task_rows(doc)):
            by_name.setdefault(f.name, []).append(f)
    lines = [f"## Spread over {len(runs)} runs", ""]
    for path, doc in runs:
        commit = doc.get("commit_info", {})
        dirty = " (dirty tree)" if commit.get("dirty") else ""
        lines.append(f"- `{path}`: {doc.get('datetime', '?')}, commit {str(commit.get('id', '?'))[:10]}{dirty}")
    lines += ["", "| figure | aim | min | median | max | runs | aim met in |", "|---|---|---:|---:|---:|---:|---:|"]
    for name, figs in by_name.items():
        values = sorted(f.value for f in figs if f.value is not None)
        first = figs[0]
        met = f"{sum(bool(f.met) for f in figs)} of {len(figs)}" if first.aim else ""
        lines.append(f"| {name} | {first.aim} | {first.shown(values[0])} "
                     f"| {first.shown(statistics.median(values))} | {first.shown(values[-1])} "
                     f"| {len(values)} | {met} |")  # fmt: skip
    return "\n".join(lines)


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
    parser.add_argument("json_files", nargs="+", metavar="json_file",
                        help="output of pytest bench/ --benchmark-only --benchmark-json=FILE; "
                             "several: the spread of the ratios and aims over those runs")  # fmt: skip
    parser.add_argument("--each", action="store_true", help="with several files, also print each run's report")
    args = parser.parse_args()
    if len(args.json_files) == 1:
        print(report(*load(args.json_files[0])))
        return
    runs = [(path, load(path)[0]) for path in args.json_files]
    if args.each:
        for path in args.json_files:
            print(report(*load(path)), end="\n\n")
    print(spread_report(runs))


if __name__ == "__main__":
    main()
