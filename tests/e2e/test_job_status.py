"""Any task, from any HTTP worker: a job queued through one HTTP worker is
polled through the others (``server.status``), cancelled from another one
(``server.cancel``), and still reaches ``done`` when the worker that queued
it was SIGKILLed; under gunicorn ``--preload -w 3`` (Flask, sync workers),
gunicorn ``--preload -w 3`` with uvicorn's worker (Starlette), plain
uvicorn (one process: the same checks through its one worker), and the two
topologies whose HTTP workers each import the app, gunicorn ``-w 3``
without ``--preload`` (Flask) and ``uvicorn --workers 3`` (Starlette), where
the first HTTP worker builds the pool and the others join it (one pool: every
worker reports the same supervisor, and there is one supervisor process).

The apps are ``apps/progress_wsgi.py`` and ``apps/progress_asgi.py`` over
``apps/progress_jobs.py``: a job reports progress 0.5 and waits for a flag
file the test creates (``go-<token>``), and every answer names the pid of
the HTTP worker that gave it. The pool has one task worker, so a job queued
behind a waiting one stays ``queued`` until the test lets the first go.

Reaching the other workers: each poll is a new connection that holds its
worker for a moment, three at a time, until at least two distinct HTTP
workers answered, one of them not the worker that queued the job (bounded
tries; every answer must show the expected state).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("httpx", reason="the e2e tests need httpx")

import httpx  # noqa: E402

from .servers import Server, gunicorn_argv, proc_stat, read_records, running_server, uvicorn_argv  # noqa: E402

pytestmark = pytest.mark.timeout(120)

STATE_TIMEOUT = 20.0  # seconds a job may take to reach a state on a busy 2-core machine
MEET_TIMEOUT = 15.0  # seconds to get answers from enough HTTP workers
HOLD = 0.3  # seconds each poll keeps its HTTP worker busy (so that the next goes elsewhere)


@dataclasses.dataclass(frozen=True)
class Topo:
    needs: tuple[str, ...]
    argv: Callable[[int], list[str]]
    http_workers: int


TOPOS = {
    "gunicorn-preload-flask": Topo(
        ("gunicorn", "flask"), lambda port: gunicorn_argv("progress_wsgi:app", port, workers=3, preload=True), 3
    ),
    "gunicorn-preload-uvicornworker": Topo(
        ("gunicorn", "uvicorn_worker", "starlette"),
        lambda port: gunicorn_argv(
            "progress_asgi:app", port, workers=3, preload=True, worker_class="uvicorn_worker.UvicornWorker"
        ),
        3,
    ),
    "uvicorn": Topo(("uvicorn", "starlette"), lambda port: uvicorn_argv("progress_asgi:app", port), 1),
    "gunicorn-flask": Topo(
        ("gunicorn", "flask"), lambda port: gunicorn_argv("progress_wsgi:app", port, workers=3, preload=False), 3
    ),
    "uvicorn-workers": Topo(
        ("uvicorn", "starlette"), lambda port: uvicorn_argv("progress_asgi:app", port, workers=3), 3
    ),
}
MULTI = [name for name, topo in TOPOS.items() if topo.http_workers > 1]


def _start(name: str, workdir: Path):
    topo = TOPOS[name]
    for module in topo.needs:
        pytest.importorskip(module, reason=f"{name} needs {module}")
    return topo, running_server(topo.argv, workdir)


def _queue(server: Server, token: str) -> tuple[int, int]:
    """POST /jobs: (task id, pid of the HTTP worker that queued it)."""
    with server.client() as c:
        r = c.post("/jobs", params={"token": token})
    assert r.status_code == 200, r.text
    return r.json()["id"], r.json()["pid"]


def _go(workdir: Path, token: str) -> None:
    (workdir / f"go-{token}").touch()


def _get(server: Server, task_id: int, hold: float = 0.0) -> dict:
    with server.client() as c:  # a new connection: any HTTP worker may take it
        r = c.get(f"/jobs/{task_id}", params={"hold": hold})
    assert r.status_code == 200, r.text
    return r.json()


def _wait_state(server: Server, task_id: int, state: str) -> dict:
    deadline = time.monotonic() + STATE_TIMEOUT
    body = _get(server, task_id)
    while body["task"]["state"] != state:
        assert time.monotonic() < deadline, f"task {task_id} not {state} within {STATE_TIMEOUT}s: {body}"
        time.sleep(0.05)
        body = _get(server, task_id)
    return body


def _poll_everywhere(
    server: Server, task_id: int, queuer: int | None, workers: int, check: Callable[[dict], None]
) -> dict[int, dict]:
    """Answers about ``task_id`` from at least two HTTP workers (one of
    them not ``queuer``), or from the only one; ``check`` is applied to
    every answer. Returns {pid: answer}."""
    want = min(2, workers)
    seen: dict[int, dict] = {}

    def enough() -> bool:
        return len(seen) >= want and (workers == 1 or bool(set(seen) - {queuer}))

    deadline = time.monotonic() + MEET_TIMEOUT
    with concurrent.futures.ThreadPoolExecutor(3) as ex:
        while not enough() and time.monotonic() < deadline:
            for body in ex.map(lambda d: (time.sleep(d), _get(server, task_id, HOLD))[1], [0, 0.1, 0.2]):
                check(body)
                seen.setdefault(body["pid"], body)
    assert enough(), f"task {task_id}: answers only from {sorted(seen)} (queued by {queuer}) in {MEET_TIMEOUT}s"
    return seen


def _finishes(workdir: Path, task_id: int) -> list[dict]:
    return [f for f in read_records(workdir, "finish") if f["task_id"] == task_id]


def _one_pool(server: Server, workers: int) -> int:
    """Every HTTP worker that answers (at least two of them, bounded tries)
    reports the same supervisor, and the server's processes hold one
    supervisor; returns its pid."""
    want = min(2, workers)
    seen: dict[int, int] = {}
    deadline = time.monotonic() + MEET_TIMEOUT

    def ask(delay: float) -> dict:
        time.sleep(delay)
        with server.client() as c:
            return c.get("/pool", params={"hold": HOLD}).json()

    with concurrent.futures.ThreadPoolExecutor(3) as ex:
        while len(seen) < want and time.monotonic() < deadline:
            for body in ex.map(ask, [0, 0.1, 0.2]):
                seen[body["pid"]] = body["supervisor"]
    assert len(seen) >= want, f"answers only from {sorted(seen)} in {MEET_TIMEOUT}s"
    assert len(set(seen.values())) == 1, f"HTTP workers report different supervisors: {seen}"
    supervisor = next(iter(seen.values()))
    assert server.supervisors(extra=[supervisor]) == {supervisor}
    return supervisor


def _stop(server: Server) -> None:
    with server.client() as c:
        supervisor = c.get("/pool").json()["supervisor"]
    server.snapshot(extra=[supervisor])
    report = server.stop()
    assert not report.problems(), report.problems()


@pytest.mark.parametrize("name", list(TOPOS))
def test_a_job_is_polled_through_every_worker(name: str, tmp_path: Path) -> None:
    """queued → running (progress 0.5 and its message) → done with its
    result, as seen by HTTP workers other than the one that queued it; its
    one finish reaches the worker that queued it."""
    topo, started = _start(name, tmp_path)
    first, job = f"a{uuid.uuid4().hex[:8]}", f"b{uuid.uuid4().hex[:8]}"
    with started as server:
        _one_pool(server, topo.http_workers)
        first_id, _ = _queue(server, first)
        _wait_state(server, first_id, "running")  # the one task worker is taken
        task_id, queuer = _queue(server, job)
        assert task_id > first_id

        def queued(body: dict) -> None:
            t = body["task"]
            assert (t["task_id"], t["state"], t["status"], t["progress"]) == (task_id, "queued", None, None), body
            assert t["name"] == "progress_jobs.wait_job" and t["queued_at"] is not None, body

        _poll_everywhere(server, task_id, queuer, topo.http_workers, queued)

        _go(tmp_path, first)
        _wait_state(server, task_id, "running")

        def running(body: dict) -> None:
            t = body["task"]
            assert (t["state"], t["status"], t["progress"], t["worker_id"]) == ("running", None, 0.5, 0), body
            assert t["message"] == f"waiting for go-{job}" and t["started_at"] >= t["queued_at"], body

        _poll_everywhere(server, task_id, queuer, topo.http_workers, running)

        _go(tmp_path, job)
        _wait_state(server, task_id, "done")

        def done(body: dict) -> None:
            t = body["task"]
            assert (t["state"], t["status"], t["progress"], t["message"], t["error"]) == (
                "done", "ok", 1.0, "done", None), body  # fmt: skip
            assert body["result"]["token"] == job and t["finished_at"] >= t["started_at"], body

        seen = _poll_everywhere(server, task_id, queuer, topo.http_workers, done)
        assert len({b["result"]["pid"] for b in seen.values()}) == 1  # one run, one task worker
        finishes = _finishes(tmp_path, task_id)
        assert [(f["pid"], f["status"]) for f in finishes] == [(queuer, "ok")]
        _stop(server)


@pytest.mark.parametrize("name", list(TOPOS))
def test_cancel_a_queued_job_from_another_worker(name: str, tmp_path: Path) -> None:
    """A queued job cancelled by another HTTP worker never runs, shows
    ``done``/``cancelled`` everywhere, and its one finish (``cancelled``)
    reaches the worker that queued it; the job ahead of it is untouched."""
    topo, started = _start(name, tmp_path)
    first, job = f"a{uuid.uuid4().hex[:8]}", f"c{uuid.uuid4().hex[:8]}"
    with started as server:
        first_id, _ = _queue(server, first)
        _wait_state(server, first_id, "running")
        task_id, queuer = _queue(server, job)
        assert _get(server, task_id)["task"]["state"] == "queued"

        deadline = time.monotonic() + MEET_TIMEOUT
        unless = queuer if topo.http_workers > 1 else None
        while True:  # new connections until a worker other than the queuing one takes it
            with server.client() as c:
                r = c.post(f"/jobs/{task_id}/cancel", params={"unless_pid": unless} if unless else {})
            if r.status_code == 200:
                break
            assert r.status_code == 409 and time.monotonic() < deadline, r.text
        assert r.json()["cancelled"] is True
        assert topo.http_workers == 1 or r.json()["pid"] != queuer

        # A job cancelled in the queue is finished (cancelled) by the task
        # worker that pops it, which is busy: until then its record says queued.
        assert _get(server, task_id)["task"]["state"] in ("queued", "done")
        _go(tmp_path, first)
        assert _wait_state(server, first_id, "done")["task"]["status"] == "ok"
        _wait_state(server, task_id, "done")

        def cancelled(body: dict) -> None:
            t = body["task"]
            assert (t["state"], t["status"], t["started_at"], t["progress"]) == ("done", "cancelled", None, None), body

        _poll_everywhere(server, task_id, queuer, topo.http_workers, cancelled)
        deadline = time.monotonic() + STATE_TIMEOUT
        while not _finishes(tmp_path, task_id):
            assert time.monotonic() < deadline, "no finish for the cancelled task"
            time.sleep(0.05)
        _go(tmp_path, job)  # were it to run after all, it could finish now
        time.sleep(0.3)
        assert [(f["pid"], f["status"]) for f in _finishes(tmp_path, task_id)] == [(queuer, "cancelled")]
        assert not [t for t in read_records(tmp_path, "task") if t["task_id"] == task_id], "the cancelled job ran"
        with server.client() as c:
            again = c.post(f"/jobs/{task_id}/cancel")
        assert again.status_code == 200 and again.json()["cancelled"] is False  # done already
        _stop(server)


@pytest.mark.parametrize("name", MULTI)
def test_a_killed_dispatchers_job_reaches_done(name: str, tmp_path: Path) -> None:
    """The HTTP worker that queued a job SIGKILLs itself; the job still
    runs, and the other workers see it running and then done, with its
    result (the finish itself has no one to go to)."""
    topo, started = _start(name, tmp_path)
    token = f"k{uuid.uuid4().hex[:8]}"
    with started as server:
        with server.client() as c, pytest.raises(httpx.HTTPError):  # the worker dies before it answers
            c.get("/kill-self", params={"token": token})
        deadline = time.monotonic() + STATE_TIMEOUT
        while not (files := list(tmp_path.glob("killed-*.json"))):
            assert time.monotonic() < deadline, "the HTTP worker wrote no killed-<pid>.json"
            time.sleep(0.05)
        killed = json.loads(files[0].read_text())
        task_id, dead = killed["id"], killed["pid"]
        while (st := proc_stat(dead)) is not None and st.state not in ("Z", "X"):
            assert time.monotonic() < deadline, f"HTTP worker {dead} still alive"
            time.sleep(0.05)

        _wait_state(server, task_id, "running")

        def running(body: dict) -> None:
            assert body["pid"] != dead
            assert (body["task"]["state"], body["task"]["progress"]) == ("running", 0.5), body

        _poll_everywhere(server, task_id, dead, topo.http_workers, running)
        _go(tmp_path, token)
        _wait_state(server, task_id, "done")

        def done(body: dict) -> None:
            assert body["pid"] != dead
            assert (body["task"]["state"], body["task"]["status"]) == ("done", "ok"), body
            assert body["result"]["token"] == token, body

        seen = _poll_everywhere(server, task_id, dead, topo.http_workers, done)
        assert dead not in seen
        assert not [f for f in _finishes(tmp_path, task_id) if f["pid"] != dead]  # no one else got its finish
        _stop(server)
