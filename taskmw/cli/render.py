"""The text of ``taskmw status``."""

from __future__ import annotations

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
        f"  {'ID':>3}  {'PID':>8}  {'STATE':<8}  {'TASK':>8}  {'FOR':>6}  {'DONE':>7}  {'MEM':>8}  {'RESTARTS':>8}",
    ]
    for w in pool["workers"]:
        running = "-" if w.get("task_started") is None else f"{now - w['task_started']:.1f}s"
        lines.append(
            f"  {_opt(w.get('worker_id')):>3}  {w['pid']:>8}  {w['state']:<8}  {_opt(w.get('task_id')):>8}  "
            f"{running:>6}  {_opt(w.get('tasks_done')):>7}  {_mib(w.get('rss_bytes')):>8}  "
            f"{_opt(w.get('restarts')):>8}"
        )
    totals = pool["totals"]
    lines.append("")
    lines.append("Totals: " + "  ".join(f"{k} {v}" for k, v in totals.items()) + f"  (all {sum(totals.values())})")
    return "\n".join(lines)
