"""The text of ``taskmw status``."""

from __future__ import annotations

import time
from typing import Any


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / (1 << 20):.1f}M"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _opt(value: Any) -> str:
    return "-" if value is None else str(value)


def _ago(now: float, then: float | None) -> str:
    return "-" if then is None else _duration(max(0.0, now - then))


def _progress(t: dict[str, Any]) -> str:
    p = t.get("progress")
    return "-" if p is None else f"{p * 100:.0f}%"


def _cut(text: str | None, width: int) -> str:
    text = "" if text is None else " ".join(str(text).split())  # one line
    return text if len(text) <= width else text[: width - 1] + "…"


SHOWN_TASKS = 10
"""Tasks ``taskmw status`` lists per section (``--json`` has all it got)."""


def render_tasks(tasks: dict[str, list[dict[str, Any]]], now: float, queue_depth: int | None = None) -> list[str]:
    """The task sections of ``taskmw status``: queued, running, scheduled
    (only when there are any) and recently finished tasks, from
    ``stats()["tasks"]``."""
    lines: list[str] = []
    head = f"  {'ID':>8}  {'NAME':<32}  {'WORKER':>6}  {'AGE':>6}  {'PROGRESS':>8}  MESSAGE"
    for key, title in (("queued", "Queued"), ("running", "Running"), ("scheduled", "Scheduled")):
        shown = tasks.get(key) or []
        if key == "scheduled" and not shown:
            continue  # no delayed task waits
        count = len(shown) if key != "queued" or queue_depth is None else max(queue_depth, len(shown))
        lines += ["", f"{title} tasks: {count}" + ("" if shown else "  (none)")]
        if shown:
            lines.append(head if key != "scheduled" else head.replace("   AGE", "DUE IN"))
        for t in shown[:SHOWN_TASKS]:
            when = _ago(t.get("scheduled_for") or now, now) if key == "scheduled" else _ago(now, t.get("queued_at"))
            lines.append(
                f"  {t['task_id']:>8}  {_cut(t.get('name'), 32):<32}  {_opt(t.get('worker_id')):>6}  "
                f"{when:>6}  {_progress(t):>8}  {_cut(t.get('message'), 40)}".rstrip()
            )
        if count > min(len(shown), SHOWN_TASKS):
            lines.append(f"  … and {count - min(len(shown), SHOWN_TASKS)} more")
    done = tasks.get("done") or []
    lines += ["", f"Recently finished: {len(done)}" + ("" if done else "  (none)")]
    if done:
        lines.append(f"  {'ID':>8}  {'NAME':<32}  {'WORKER':>6}  {'STATUS':<9}  {'TOOK':>6}  {'AGO':>6}  ERROR")
    for t in done[:SHOWN_TASKS]:
        err = t.get("error")
        why = f"{err['type']}: {err['message']}" if err else ""
        lines.append(
            f"  {t['task_id']:>8}  {_cut(t.get('name'), 32):<32}  {_opt(t.get('worker_id')):>6}  "
            f"{_opt(t.get('status')):<9}  {_took(t):>6}  {_ago(now, t.get('finished_at')):>6}  {_cut(why, 40)}".rstrip()
        )
    return lines


def _recycled(w: dict[str, Any]) -> str:
    """How often a worker's row was recycled, and why its last worker went: ``2 (memory)``."""
    reason = w.get("restart_reason")
    return f"{w.get('recycled', 0)}" + (f" ({reason})" if reason else "")


def render_schedule(schedule: list[dict[str, Any]], now: float) -> list[str]:
    """The periodic tasks of ``taskmw status``: each entry's name, every/cron,
    next run, last run and its status (from ``stats()["schedule"]``)."""
    lines = ["", f"Periodic tasks: {len(schedule)}",
             f"  {'NAME':<32}  {'WHEN':<24}  {'NEXT RUN':>10}  {'LAST RUN':>10}  {'LAST ID':>8}  {'STATUS':<9}  "
             "RUNS  SKIPPED"]  # fmt: skip
    for e in schedule:
        nxt = e.get("next_run")
        next_in = "-" if nxt is None else f"in {_duration(max(0.0, nxt - now))}"
        lines.append(
            f"  {_cut(e['name'], 32):<32}  {_cut(e['when'], 24):<24}  {next_in:>10}  "
            f"{_ago(now, e.get('last_run')) + (' ago' if e.get('last_run') else ''):>10}  "
            f"{_opt(e.get('last_task_id')):>8}  {_opt(e.get('last_status')):<9}  {e['runs']:>4}  {e['skipped']:>7}"
        )
    return lines


def _took(t: dict[str, Any]) -> str:
    start, end = t.get("started_at"), t.get("finished_at")
    return "-" if start is None or end is None else f"{max(0.0, end - start):.1f}s"


def _when(now: float, then: float | None) -> str:
    if then is None:
        return "-"
    return f"{time.strftime('%H:%M:%S', time.localtime(then))} ({_ago(now, then)} ago)"


def _due(now: float, due: float) -> str:
    """A delayed task's due time, and how far off it is (or was)."""
    if due <= now:
        return _when(now, due)
    return f"{time.strftime('%H:%M:%S', time.localtime(due))} (in {_ago(due, now)})"


def render_task(t: dict[str, Any], now: float) -> str:
    """The text of ``taskmw status TASK_ID`` for a task's record
    (``TaskInfo.as_dict()``)."""
    state = t["state"] + (f" ({t['status']})" if t.get("status") else "")
    lines = [
        f"task {t['task_id']}  {state}",
        f"  name      {t.get('name') or '-'}",
        f"  worker    {_opt(t.get('worker_id'))}",
        f"  attempts  {_opt(t.get('attempts'))}",
        f"  queued    {_when(now, t.get('queued_at'))}",
        *([f"  due       {_due(now, t['scheduled_for'])}"] if t.get("scheduled_for") else []),
        f"  started   {_when(now, t.get('started_at'))}",
        f"  finished  {_when(now, t.get('finished_at'))}",
    ]
    start, end = t.get("started_at"), t.get("finished_at")
    if start is not None:
        lines.append(f"  {'took' if end is not None else 'running':<9} {(end or now) - start:.3f}s")
    lines.append(f"  progress  {_progress(t)}")
    lines.append(f"  message   {_cut(t.get('message'), 200) or '-'}")
    err = t.get("error")
    if err:
        lines.append(f"  error     {err['type']}: {_cut(err['message'], 200)}")
        if err.get("traceback"):
            lines += ["", *("  " + line for line in err["traceback"].rstrip().splitlines())]
    return "\n".join(lines)


def render_status(s: dict[str, Any]) -> str:
    """The text of ``taskmw status`` for the control socket's answer ``s``."""
    pool = s["pool"]
    now = s["now"]
    rate = s.get("tasks_per_second")
    up = _duration(now - s["started"])
    if s["app"] is None:  # a pool built outside `taskmw start`: only the pool is known
        lines = [f"taskmw pool  built by pid {s['master_pid']}  up {up}"]
    else:
        lines = [
            f"taskmw  {s['app']} ({s['interface']})  {s['bind']}  master pid {s['master_pid']}  up {up}",
            "",
            f"HTTP workers: {len(s['http_workers'])} of {s['num_workers']}",
            f"  {'PID':>8}  {'MEM':>8}",
        ]
        lines += [f"  {w['pid']:>8}  {_mib(w['rss_bytes']):>8}" for w in s["http_workers"]]
    lines += [
        "",
        f"Task workers: {len(pool['workers'])} of {pool['task_workers']}   supervisor pid {pool['supervisor_pid']}   "
        f"queue depth {pool['queue_depth']}   tasks/s {'-' if rate is None else f'{rate:.1f}'}",
        f"  {'ID':>3}  {'PID':>8}  {'STATE':<8}  {'TASK':>8}  {'FOR':>6}  {'DONE':>7}  {'MEM':>8}  {'RESTARTS':>8}  "
        "RECYCLED",
    ]
    for w in pool["workers"]:
        running = "-" if w.get("task_started") is None else f"{now - w['task_started']:.1f}s"
        lines.append(
            f"  {_opt(w.get('worker_id')):>3}  {w['pid']:>8}  {w['state']:<8}  {_opt(w.get('task_id')):>8}  "
            f"{running:>6}  {_opt(w.get('tasks_done')):>7}  {_mib(w.get('rss_bytes')):>8}  "
            f"{_opt(w.get('restarts')):>8}  {_recycled(w)}".rstrip()
        )
    if pool.get("schedule"):
        lines += render_schedule(pool["schedule"], now)
    totals = pool["totals"]
    lines.append("")
    lines.append("Totals: " + "  ".join(f"{k} {v}" for k, v in totals.items()) + f"  (all {sum(totals.values())})")
    if pool.get("tasks") is not None:  # a pool that keeps task records
        lines += render_tasks(pool["tasks"], now, pool.get("queue_depth"))
    return "\n".join(lines)
