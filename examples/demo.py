"""The taskmw demo: a werkzeug app that queues slow jobs and follows them.
Serve it from the repository root with::

    .venv/bin/taskmw start examples.demo:app -w 2 -t 2

then open http://127.0.0.1:8000/ (a form that queues a job, and the queued,
running and finished jobs; each job's page follows it to its result), or::

    curl -d seconds=5 127.0.0.1:8000/jobs            # queue a 5-second job: its id and URL, at once
    curl 127.0.0.1:8000/jobs/1                       # that job: queued, running with progress, done with its result
    curl -X POST 127.0.0.1:8000/jobs/1/cancel        # cancel it if it has not started
    curl -d seconds=1 -d fail=1 127.0.0.1:8000/jobs  # a job that raises
    curl 127.0.0.1:8000/jobs                         # queued, running and finished jobs, as JSON
    curl 127.0.0.1:8000/metrics                      # Prometheus metrics (with plugins/taskmw-prometheus)

and, in another terminal, ``.venv/bin/taskmw status --watch`` (or
``taskmw status 1`` for one job).

Any HTTP worker answers about any job, whichever queued it: the pool keeps a
record of its tasks in shared memory (``server.status(id)``,
``server.result(id)``, ``server.tasks()``). A browser gets HTML (its
``Accept`` header lists ``text/html``), anything else JSON.
"""

from __future__ import annotations

import html
import json
import os
import time
from collections.abc import Iterable
from typing import Any

from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.utils import redirect
from werkzeug.wrappers import Request, Response

import taskmw
from taskmw import TaskInfo, TaskMiddleware, TaskServer

try:
    import taskmw_prometheus
except ImportError:  # the plugin is optional: pip install ./plugins/taskmw-prometheus
    taskmw_prometheus = None

SHOWN = 50  # jobs listed per section
STEP = 0.25  # seconds between a job's progress reports


def slow_job(seconds: float, fail: bool = False) -> str:
    """A stand-in for real work (a report, a thumbnail, a mail) that says
    how far it has got."""
    steps = max(1, round(seconds / STEP))
    for step in range(steps):
        taskmw.progress(step / steps, f"step {step + 1} of {steps}")
        time.sleep(seconds / steps)
    if fail:
        raise RuntimeError(f"the job failed after {seconds}s, as asked")
    taskmw.progress(1.0, "done")
    return f"slept {seconds}s in task worker pid {os.getpid()}"


def wants_html(request: Request) -> bool:
    """A browser's ``Accept`` (``text/html,...,*/*;q=0.8``) prefers HTML;
    curl's ``*/*``, or none, gets JSON."""
    return request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html"


def json_response(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data) + "\n", status, mimetype="application/json")


def job_data(server: TaskServer, info: TaskInfo) -> dict[str, Any]:
    """A job as the demo shows it: its record, and its result once done ``ok``."""
    out = info.as_dict()
    out["duration"] = (
        None if info.started_at is None or info.finished_at is None else round(info.finished_at - info.started_at, 3)
    )
    if info.state == "done" and info.status == "ok":
        try:
            out["result"] = server.result(info.task_id, timeout=0)
        except taskmw.UnknownTask as exc:  # evicted (result_ttl, result_bytes)
            out["result"] = None
            out["result_gone"] = exc.reason
    return out


def queue_job(request: Request, server: TaskServer) -> Response:
    try:
        seconds = float(request.form.get("seconds", "2"))
    except ValueError:
        return json_response({"error": "seconds must be a number"}, 400)
    if not 0 <= seconds <= 600:
        return json_response({"error": "seconds must be in 0..600"}, 400)
    task_id = server.task(slow_job, seconds, fail=bool(request.form.get("fail")))
    if wants_html(request):
        return redirect(f"/jobs/{task_id}", 303)
    return json_response({"id": task_id, "url": f"/jobs/{task_id}", "http_pid": os.getpid()})


def show_job(request: Request, server: TaskServer, task_id: int) -> Response:
    try:
        job = job_data(server, server.status(task_id))
    except taskmw.UnknownTask as exc:
        if wants_html(request):
            return Response(JOB_GONE.format(id=task_id, reason=html.escape(exc.reason)), 404, mimetype="text/html")
        return json_response({"error": str(exc), "http_pid": os.getpid()}, 404)
    if not wants_html(request):
        return json_response({**job, "http_pid": os.getpid()})
    return Response(job_page(job, request.host), mimetype="text/html")


def cancel_job(request: Request, server: TaskServer, task_id: int) -> Response:
    try:
        cancelled = server.cancel(task_id)
    except taskmw.UnknownTask as exc:
        return json_response({"error": str(exc)}, 404)
    if wants_html(request):
        return redirect(f"/jobs/{task_id}", 303)
    return json_response({"id": task_id, "cancelled": cancelled, "http_pid": os.getpid()})


def list_jobs(request: Request, server: TaskServer) -> Response:
    tasks = server.tasks(SHOWN)
    jobs = {
        "queued": [job_data(server, i) for i in tasks["queued"]],
        "running": [job_data(server, i) for i in tasks["running"]],
        "finished": [job_data(server, i) for i in tasks["done"]],
    }
    if not wants_html(request):
        return json_response({**jobs, "http_pid": os.getpid()})
    return Response(index_page(jobs, request.host), mimetype="text/html")


# -- the pages ---------------------------------------------------------------------------------

STYLE = """<style>body{font-family:sans-serif;margin:2em} td,th{padding:.2em .8em;text-align:left}
.ok{color:green} .error,.lost,.timeout,.cancelled{color:#b00} .queued,.running{color:#a60}</style>"""

INDEX = """<!doctype html>
<meta charset=utf-8><title>taskmw demo</title>
<meta http-equiv=refresh content=2>
{style}
<h1>taskmw demo</h1>
<form method=post action=/jobs>
 Queue a job that takes <input name=seconds value=5 size=3> seconds
 <label><input type=checkbox name=fail value=1> and fails</label>
 <button>queue</button>
</form>
{sections}
<p>This page was made by HTTP worker {pid}. Watch the workers: <code>taskmw status --watch</code>.
Metrics: <a href=/metrics>/metrics</a>. JSON: <code>curl {host}/jobs</code>.
"""

JOB = """<!doctype html>
<meta charset=utf-8><title>taskmw job {id}</title>
{refresh}
{style}
<h1>Job {id}: <span class={css}>{state}</span></h1>
<table>
<tr><th>progress<td>{progress}
<tr><th>message<td>{message}
<tr><th>task worker<td>{worker}
<tr><th>queued<td>{queued}
<tr><th>started<td>{started}
<tr><th>finished<td>{finished}
<tr><th>took<td>{took}
<tr><th>{outcome_label}<td>{outcome}
</table>
{cancel}
<p>This page was made by HTTP worker {pid}{refreshing}. <a href=/>All jobs</a>.
JSON: <code>curl {host}/jobs/{id}</code>.
"""

JOB_GONE = """<!doctype html>
<meta charset=utf-8><title>taskmw job {id}</title>
<h1>No job {id}</h1><p>{reason}. <a href=/>All jobs</a>.
"""


def _clock(t: float | None) -> str:
    return "-" if t is None else time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1000):03d}"


def _progress(job: dict[str, Any]) -> str:
    p = job["progress"]
    return "-" if p is None else f"<progress max=1 value={p:.3f}></progress> {p * 100:.0f}%"


def _worker(job: dict[str, Any]) -> str:
    return "-" if job["worker_id"] is None else str(job["worker_id"])


def _took(job: dict[str, Any]) -> str:
    return "-" if job["duration"] is None else f"{job['duration']:.3f}s"


def _state(job: dict[str, Any]) -> tuple[str, str]:
    """Its state as shown, and its CSS class."""
    if job["state"] == "done":
        return f"done ({job['status']})", job["status"]
    return job["state"], job["state"]


def _outcome(job: dict[str, Any]) -> str:
    if job["error"] is not None:
        return f"{job['error']['type']}: {job['error']['message']}"
    if job["state"] != "done":
        return "-"
    return str(job.get("result")) if "result_gone" not in job else f"(not kept: {job['result_gone']})"


def job_page(job: dict[str, Any], host: str) -> str:
    e = html.escape
    done = job["state"] == "done"
    state, css = _state(job)
    cancel = "" if done else f"<form method=post action=/jobs/{job['task_id']}/cancel><button>cancel</button></form>"
    return JOB.format(
        id=job["task_id"], state=e(state), css=e(css or ""), style=STYLE,
        refresh="" if done else "<meta http-equiv=refresh content=1>",
        refreshing="" if done else "; it refreshes every second until the job is done",
        progress=_progress(job), message=e(job["message"] or "-"), worker=_worker(job),
        queued=_clock(job["queued_at"]), started=_clock(job["started_at"]), finished=_clock(job["finished_at"]),
        took=_took(job),
        outcome_label="error" if job["error"] is not None else "result", outcome=e(_outcome(job)),
        cancel=cancel, pid=os.getpid(), host=e(host),
    )  # fmt: skip


def index_page(jobs: dict[str, list[dict[str, Any]]], host: str) -> str:
    e = html.escape
    sections = []
    for key, title in (("queued", "Queued"), ("running", "Running"), ("finished", "Finished")):
        rows = []
        for j in jobs[key]:
            state, css = _state(j)
            rows.append(
                f"<tr><td><a href=/jobs/{j['task_id']}>{j['task_id']}</a></td><td class={e(css or '')}>{e(state)}"
                f"</td><td>{_progress(j)}</td><td>{e(j['message'] or '')}</td><td>{_worker(j)}"
                f"</td><td>{_took(j)}</td>"
                f"<td>{e(_outcome(j))}</td></tr>"
            )
        body = "".join(rows) or "<tr><td colspan=7>none</td></tr>"
        sections.append(
            f"<h2>{title} jobs ({len(jobs[key])})</h2><table><tr><th>id</th><th>state</th><th>progress</th>"
            f"<th>message</th><th>task worker</th><th>took</th><th>result</th></tr>{body}</table>"
        )
    return INDEX.format(style=STYLE, sections="\n".join(sections), pid=os.getpid(), host=e(host))


# -- the app -----------------------------------------------------------------------------------

URLS = Map([
    Rule("/", endpoint="index", methods=["GET"]),
    Rule("/jobs", endpoint="jobs", methods=["GET", "POST"]),
    Rule("/jobs/<int:task_id>", endpoint="job", methods=["GET"]),
    Rule("/jobs/<int:task_id>/cancel", endpoint="cancel", methods=["POST"]),
    Rule("/metrics", endpoint="metrics", methods=["GET"]),
])  # fmt: skip


def demo(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """The WSGI app (``app`` below gives it its task pool)."""
    request = Request(environ)
    server: TaskServer = environ["taskmw.server"]
    try:
        endpoint, values = URLS.bind_to_environ(environ).match()
        if endpoint == "metrics":
            if taskmw_prometheus is None:
                raise NotFound("metrics need the plugin: pip install ./plugins/taskmw-prometheus")
            return taskmw_prometheus.wsgi_app(environ, start_response)
        if endpoint == "jobs" and request.method == "POST":
            response = queue_job(request, server)
        elif endpoint == "job":
            response = show_job(request, server, values["task_id"])
        elif endpoint == "cancel":
            response = cancel_job(request, server, values["task_id"])
        else:
            response = list_jobs(request, server)
    except HTTPException as exc:
        response = exc.get_response(environ)
    return response(environ, start_response)


app = TaskMiddleware(demo, task_workers=2)
