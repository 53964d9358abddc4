"""The taskmw demo: a werkzeug app that queues slow jobs and lists the
finished ones. Serve it from the repository root with::

    .venv/bin/taskmw start examples.demo:app -w 2 -t 2

then open http://127.0.0.1:8000/ (a form that queues a job, and the finished
jobs with status and duration), or::

    curl -d seconds=3 127.0.0.1:8000/jobs          # queue a 3-second job: its id, at once
    curl -d seconds=1 -d fail=1 127.0.0.1:8000/jobs  # a job that raises
    curl 127.0.0.1:8000/jobs                        # finished jobs, as JSON
    curl 127.0.0.1:8000/metrics                     # Prometheus metrics (with plugins/taskmw-prometheus)

and, in another terminal, ``.venv/bin/taskmw status --watch``.

Each finish comes back to the HTTP worker that queued the job (its
``on_finish`` hook, :class:`FinishLog`), which appends it to a JSON-lines file
(``TASKMW_DEMO_LOG``, default ``<tmp>/taskmw-demo-<master pid>.jsonl``) so
that every HTTP worker can list all of them.
"""

from __future__ import annotations

import html
import json
import os
import tempfile
import time
from collections.abc import Iterable
from typing import Any

from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.utils import redirect
from werkzeug.wrappers import Request, Response

from taskmw import TaskFinishEvent, TaskMiddleware, TaskServer, hookimpl

try:
    import taskmw_prometheus
except ImportError:  # the plugin is optional: pip install ./plugins/taskmw-prometheus
    taskmw_prometheus = None


def finished_log() -> str:
    """The file of finished jobs: ``TASKMW_DEMO_LOG``, else one per server run,
    named after the HTTP workers' parent (the master under ``taskmw start``)."""
    return os.environ.get("TASKMW_DEMO_LOG") or os.path.join(tempfile.gettempdir(), f"taskmw-demo-{os.getppid()}.jsonl")


SHOWN = 50  # finished jobs listed, newest first


def slow_job(seconds: float, fail: bool = False) -> str:
    """A stand-in for real work (a report, a thumbnail, a mail)."""
    time.sleep(seconds)
    if fail:
        raise RuntimeError(f"the job failed after {seconds}s, as asked")
    return f"slept {seconds}s in task worker pid {os.getpid()}"


class FinishLog:
    """Appends one JSON line per finished job (in the HTTP worker that queued it)."""

    @hookimpl
    def on_finish(self, event: TaskFinishEvent) -> None:
        line = {
            "id": event.task_id,
            "status": event.status,
            "duration": round(event.duration, 3),
            "result": event.return_value if event.ok else None,
            "error": event.error.message if event.error else None,
            "worker": event.worker_id,
            "finished": time.time(),
        }
        with open(finished_log(), "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")


def finished_jobs() -> list[dict[str, Any]]:
    """The finished jobs, newest first (a line still being written is skipped)."""
    try:
        with open(finished_log(), encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    jobs = []
    for line in reversed(lines):
        try:
            jobs.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return jobs


def wants_html(request: Request) -> bool:
    return request.accept_mimetypes.best == "text/html"


def queue_job(request: Request, server: TaskServer) -> Response:
    try:
        seconds = float(request.form.get("seconds", "2"))
    except ValueError:
        return Response(json.dumps({"error": "seconds must be a number"}), 400, mimetype="application/json")
    if not 0 <= seconds <= 600:
        return Response(json.dumps({"error": "seconds must be in 0..600"}), 400, mimetype="application/json")
    task_id = server.task(slow_job, seconds, fail=bool(request.form.get("fail")))
    if wants_html(request):
        return redirect("/", 303)
    return Response(json.dumps({"queued": task_id, "http_pid": os.getpid()}) + "\n", mimetype="application/json")


def list_jobs(request: Request) -> Response:
    jobs = finished_jobs()
    if request.path == "/jobs" or not wants_html(request):
        return Response(json.dumps({"finished": jobs}) + "\n", mimetype="application/json")
    rows = "".join(
        f"<tr><td>{j['id']}</td><td class={j['status']}>{j['status']}</td><td>{j['duration']:.3f}s</td>"
        f"<td>{j['worker']}</td><td>{html.escape(str(j['error'] or j['result']))}</td></tr>"
        for j in jobs[:SHOWN]
    )
    page = PAGE.format(rows=rows or "<tr><td colspan=5>none yet</td></tr>", count=len(jobs), pid=os.getpid())
    return Response(page, mimetype="text/html")


PAGE = """<!doctype html>
<meta charset=utf-8><title>taskmw demo</title>
<meta http-equiv=refresh content=2>
<style>body{{font-family:sans-serif;margin:2em}} td,th{{padding:.2em .8em;text-align:left}}
.ok{{color:green}} .error,.lost,.timeout,.cancelled{{color:#b00}}</style>
<h1>taskmw demo</h1>
<form method=post action=/jobs>
 Queue a job that takes <input name=seconds value=2 size=3> seconds
 <label><input type=checkbox name=fail value=1> and fails</label>
 <button>queue</button>
</form>
<h2>Finished jobs ({count}; this page was made by HTTP worker {pid})</h2>
<table><tr><th>id</th><th>status</th><th>duration</th><th>task worker</th><th>result</th></tr>{rows}</table>
<p>Watch the workers: <code>taskmw status --watch</code>. Metrics: <a href=/metrics>/metrics</a>.
"""

URLS = Map([
    Rule("/", endpoint="index", methods=["GET"]),
    Rule("/jobs", endpoint="jobs", methods=["GET", "POST"]),
    Rule("/metrics", endpoint="metrics", methods=["GET"]),
])  # fmt: skip


def demo(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """The WSGI app (``app`` below gives it its task pool)."""
    request = Request(environ)
    try:
        endpoint, _ = URLS.bind_to_environ(environ).match()
        if endpoint == "metrics":
            if taskmw_prometheus is None:
                raise NotFound("metrics need the plugin: pip install ./plugins/taskmw-prometheus")
            return taskmw_prometheus.wsgi_app(environ, start_response)
        if endpoint == "jobs" and request.method == "POST":
            response = queue_job(request, environ["taskmw.server"])
        else:
            response = list_jobs(request)
    except HTTPException as exc:
        response = exc.get_response(environ)
    return response(environ, start_response)


app = TaskMiddleware(demo, task_workers=2, plugins=[FinishLog()])
