"""The dashboard's HTML, made on the server: every page works without
JavaScript (it then refreshes itself every few seconds); with it,
``static/dashboard.js`` swaps in the sections this module makes (the
``/live`` answers) and draws the charts.

Everything shown is escaped: task names, messages and tracebacks come from
the tasks."""

from __future__ import annotations

import dataclasses
import html
import time
from collections.abc import Iterable, Mapping
from typing import Any

from taskmw.events import STATUSES
from taskmw.info import TaskInfo

LISTS = ("scheduled", "queued", "running", "done")
ARGUMENTS_NOT_RECORDED = "not recorded (the pool records arguments with record_arguments=True)"


@dataclasses.dataclass(frozen=True)
class View:
    """What every piece of a page needs."""

    base: str
    allow_cancel: bool
    now: float
    title: str
    interval: float


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def ago(t: float | None, now: float) -> str:
    """``t`` (a ``time.time()``) as an age: ``"3.2 s ago"``."""
    if t is None:
        return "—"
    return f'<span title="{esc(clock(t))}">{esc(span(max(0.0, now - t)))} ago</span>'


def span(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def clock(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1000):03d}"


def mib(n: object) -> str:
    return f"{n / (1 << 20):.1f} MiB" if isinstance(n, int | float) and n else "—"


def badge(text: str, kind: str | None = None) -> str:
    return f'<span class="st st-{esc(kind or text)}">{esc(text)}</span>'


def state_badge(info: TaskInfo) -> str:
    if info.state == "done":
        return badge(info.status or "done")
    return badge(info.state)


def task_link(view: View, task_id: object) -> str:
    return f'<a href="{esc(view.base)}/tasks/{esc(task_id)}">{esc(task_id)}</a>'


def progress_bar(info: TaskInfo) -> str:
    if info.progress is None:
        bar = '<progress max="1"></progress> '  # indeterminate: no report yet
    else:
        bar = f'<progress max="1" value="{info.progress:.4f}"></progress> <b>{info.progress * 100:.0f}%</b> '
    return f'<span class="progress">{bar}{esc(info.message or "")}</span>'


def cancel_form(view: View, info: TaskInfo) -> str:
    """The cancel button (queued) or stop button (running), if cancelling is enabled."""
    if not view.allow_cancel or info.state == "done":
        return ""
    running = info.state == "running"
    label, hint = ("Stop", "kill its worker (replaced at once)") if running else ("Cancel", "it will not run")
    hidden = '<input type="hidden" name="terminate" value="1">' if running else ""
    return (
        f'<form class="inline" method="post" action="{esc(view.base)}/tasks/{info.task_id}/cancel">{hidden}'
        f'<button type="submit" class="cancel" title="{esc(hint)}">{label}</button></form>'
    )


def table(head: Iterable[str], rows: Iterable[Iterable[str]], empty: str, css: str = "") -> str:
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    if not body:
        return f'<p class="empty">{esc(empty)}</p>'
    heads = "".join(f"<th>{esc(h)}</th>" for h in head)
    return f'<table class="{css}"><thead><tr>{heads}</tr></thead><tbody>{body}</tbody></table>'


# -- the sections of the index --------------------------------------------------------------


def sections(
    view: View, stats: Mapping[str, Any], lists: Mapping[str, list[TaskInfo]], scheduling: bool
) -> dict[str, str]:
    """The parts of the index that change: ``{section id: HTML}``."""
    return {
        "summary": summary(stats),
        "workers": workers(view, stats.get("workers", [])),
        "running": running(view, lists["running"]),
        "queued": queued(view, lists["queued"]),
        "scheduled": scheduled(view, lists["scheduled"], scheduling),
        "recent": recent(view, lists["done"]),
    }


def summary(stats: Mapping[str, Any]) -> str:
    workers = stats.get("workers", [])
    busy = sum(1 for w in workers if w.get("state") == "busy")
    totals = stats.get("totals", {})
    cards = [
        ("task workers", f"{len(workers)}", f"{busy} busy"),
        ("queue depth", f"{stats.get('queue_depth', '—')}", "tasks waiting"),
    ]
    out = "".join(
        f'<div class="card"><div class="label">{esc(label)}</div><div class="big">{esc(big)}</div>'
        f'<div class="small">{esc(small)}</div></div>'
        for label, big, small in cards
    )
    finished = "".join(
        f'<div class="total">{badge(status)} <b>{esc(totals.get(status, 0))}</b></div>' for status in STATUSES
    )
    supervisor = stats.get("supervisor_pid")
    out += (
        f'<div class="card wide"><div class="label">finished since the pool started</div>'
        f'<div class="totals">{finished}</div><div class="small">supervisor pid {esc(supervisor or "—")}</div></div>'
    )
    return out


def workers(view: View, rows: list[dict[str, Any]]) -> str:
    def row(w: Mapping[str, Any]) -> list[str]:
        task = w.get("task_id")
        started = w.get("task_started")
        return [
            esc(w.get("worker_id", "")),
            esc(w.get("pid") or "—"),
            badge(str(w.get("state", "?"))),
            task_link(view, task) if task is not None else "—",
            esc(span(max(0.0, view.now - started))) if task is not None and started else "—",
            esc(w.get("tasks_done", 0)),
            esc(mib(w.get("rss_bytes"))),
            esc(w.get("restarts", 0)),
        ]

    head = ("worker", "pid", "state", "task", "for", "tasks done", "memory", "restarts")
    return table(head, map(row, rows), "no task workers", "workers")


def running(view: View, infos: list[TaskInfo]) -> str:
    head = ("id", "task", "worker", "started", "progress", "")
    rows = (
        [
            task_link(view, i.task_id),
            f"<code>{esc(i.name or '?')}</code>",
            esc(i.worker_id if i.worker_id is not None else "—"),
            ago(i.started_at, view.now),
            progress_bar(i),
            cancel_form(view, i),
        ]
        for i in infos
    )
    return table(head, rows, "nothing running", "running")


def queued(view: View, infos: list[TaskInfo]) -> str:
    head = ("id", "task", "queued", "attempt", "")
    rows = (
        [
            task_link(view, i.task_id),
            f"<code>{esc(i.name or '?')}</code>",
            ago(i.queued_at, view.now),
            esc(i.attempts),
            cancel_form(view, i),
        ]
        for i in infos
    )
    return table(head, rows, "nothing queued", "queued")


def scheduled(view: View, infos: list[TaskInfo], scheduling: bool) -> str:
    if not scheduling:
        return '<p class="empty">nothing scheduled (this pool does not schedule tasks for later)</p>'
    head = ("id", "task", "queued", "due")
    rows = (
        [task_link(view, i.task_id), f"<code>{esc(i.name or '?')}</code>", ago(i.queued_at, view.now), due(i, view.now)]
        for i in infos
    )
    return table(head, rows, "nothing scheduled", "scheduled")


def due(info: TaskInfo, now: float) -> str:
    """When a scheduled task is due: ``"in 3.2 s"``."""
    if info.scheduled_for is None:
        return "—"
    return f'<span title="{esc(clock(info.scheduled_for))}">in {esc(span(max(0.0, info.scheduled_for - now)))}</span>'


def duration(info: TaskInfo, now: float) -> str:
    if info.started_at is None:
        return "—"
    end = info.finished_at if info.finished_at is not None else now
    return span(max(0.0, end - info.started_at))


def recent(view: View, infos: list[TaskInfo]) -> str:
    head = ("id", "task", "status", "worker", "ran", "finished", "error")
    rows = (
        [
            task_link(view, i.task_id),
            f"<code>{esc(i.name or '?')}</code>",
            state_badge(i),
            esc(i.worker_id if i.worker_id is not None else "—"),
            esc(duration(i, view.now)),
            ago(i.finished_at, view.now),
            (f"<code>{esc(i.error.type)}</code>: {esc(i.error.message[:200])}" if i.error is not None else ""),
        ]
        for i in infos
    )
    return table(head, rows, "no finished task (matching the filters)", "recent")


# -- pages -----------------------------------------------------------------------------------


def page(view: View, title: str, body: str, live: str | None) -> str:
    """A whole page; ``live``: the URL its script polls (``None``: it does not change)."""
    base = esc(view.base)
    attrs = f' data-live="{esc(live)}" data-interval="{int(view.interval * 1000)}"' if live else ""
    refresh = '<noscript><meta http-equiv="refresh" content="5"></noscript>' if live else ""
    mode = "cancel enabled" if view.allow_cancel else "read-only"
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title>"
        f'<link rel="stylesheet" href="{base}/static/dashboard.css">'
        f'<script src="{base}/static/dashboard.js" defer></script>{refresh}</head>'
        f"<body{attrs}>"
        f'<header><a class="home" href="{base}/">{esc(view.title)} dashboard</a>'
        f'<span class="mode mode-{"rw" if view.allow_cancel else "ro"}">{mode}</span>'
        f'<span id="updated" class="updated">as of {esc(clock(view.now))}</span></header>'
        f"<main>{body}</main></body></html>\n"
    )


def index_page(view: View, parts: Mapping[str, str], query: str, name: str, status: str) -> str:
    def section(key: str, heading: str, extra: str = "") -> str:
        return f'<section><h2>{esc(heading)}</h2>{extra}<div id="s-{key}">{parts[key]}</div></section>'

    options = "".join(
        f'<option value="{s}"{" selected" if s == status else ""}>{s}</option>' for s in ("", *STATUSES)
    ).replace('<option value=""></option>', '<option value="">any status</option>', 1)
    filters = (
        f'<form class="filters" method="get" action="{esc(view.base)}/">'
        f'<label>name contains <input type="search" name="name" value="{esc(name)}" size="24"></label> '
        f'<label>status <select name="status">{options}</select></label> <button type="submit">Filter</button>'
        + (f' <a href="{esc(view.base)}/">clear</a>' if query else "")
        + "</form>"
    )
    charts = (
        '<section class="charts"><h2>Last 5 minutes <small>tasks/s (last 10 s): <b id="rate">—</b></small></h2>'
        '<div class="chart"><h3>Finishes by status, per 10 s</h3>'
        '<svg id="chart-finishes" viewBox="0 0 640 170" role="img" aria-label="finishes by status"></svg>'
        '<div class="legend">'
        + "".join(f"{badge(s)} " for s in STATUSES)
        + '</div></div><div class="chart"><h3>Queue depth</h3>'
        '<svg id="chart-queue" viewBox="0 0 640 170" role="img" aria-label="queue depth"></svg></div>'
        '<p id="chart-note" class="small">The charts need JavaScript.</p></section>'
    )
    body = (
        f'<div id="s-summary" class="summary">{parts["summary"]}</div>'
        + charts
        + section("workers", "Task workers")
        + section("running", "Running")
        + section("queued", "Queued")
        + section("scheduled", "Scheduled")
        + section("recent", "Recently finished", filters)
    )
    live = f"{view.base}/live" + (f"?{query}" if query else "")
    return page(view, f"{view.title} dashboard", body, live)


def task_section(view: View, info: TaskInfo) -> str:
    """One task's facts (what ``/tasks/<id>/live`` swaps in)."""
    waited = None
    if info.queued_at is not None:
        waited = (info.started_at if info.started_at is not None else view.now) - info.queued_at
    rows = [
        ("state", state_badge(info) + (f" (state {esc(info.state)})" if info.state == "done" else "")),
        ("task", f"<code>{esc(info.name or '?')}</code>"),
        (
            "arguments",
            f"<code>{esc(info.arguments)}</code>"
            if info.arguments is not None
            else f'<span class="muted">{esc(ARGUMENTS_NOT_RECORDED)}</span>',
        ),
        ("worker", esc(info.worker_id if info.worker_id is not None else "—")),
        ("attempts", esc(info.attempts)),
        ("queued at", _at(info.queued_at, view.now)),
        ("started at", _at(info.started_at, view.now)),
        ("finished at", _at(info.finished_at, view.now)),
        ("waited in the queue", esc(span(max(0.0, waited))) if waited is not None else "—"),
        ("ran" if info.state == "done" else "running for", esc(duration(info, view.now))),
    ]
    if info.progress is not None or info.message:
        rows.append(("progress", progress_bar(info)))
    facts = "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in rows)
    out = f'<table class="facts">{facts}</table>'
    if info.error is not None:
        error = info.error
        out += f'<h2>Error</h2><p class="error"><code>{esc(error.type)}</code>: {esc(error.message)}</p>'
        if error.traceback:
            out += f'<pre class="traceback">{esc(error.traceback)}</pre>'

    form = cancel_form(view, info)
    if form:
        out += f'<p class="actions">{form}</p>'
    return out


def _at(t: float | None, now: float) -> str:
    return "—" if t is None else f"{esc(clock(t))} ({ago(t, now)})"


def task_page(view: View, info: TaskInfo, section: str, notice: str = "") -> str:
    live = None if info.state == "done" else f"{view.base}/tasks/{info.task_id}/live"
    note = f'<p class="notice">{esc(notice)}</p>' if notice else ""
    body = (
        f"<h1>Task {info.task_id} <small><code>{esc(info.name or '?')}</code></small></h1>{note}"
        f'<div id="s-task">{section}</div><p><a href="{esc(view.base)}/">← all tasks</a></p>'
    )
    return page(view, f"task {info.task_id} · {view.title}", body, live)


def unknown_task_page(view: View, task_id: int, reason: str) -> str:
    body = (
        f'<h1>Task {task_id}</h1><p class="error">No record: {esc(reason)}</p>'
        f'<p><a href="{esc(view.base)}/">← all tasks</a></p>'
    )
    return page(view, f"task {task_id} · {view.title}", body, None)
