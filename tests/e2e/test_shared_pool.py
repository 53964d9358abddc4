"""One pool for gunicorn's HTTP workers without ``--preload`` (the ``share``
setting's ``"auto"``): the pool outlives the HTTP worker that built it
(SIGKILLed, or stopped gracefully by SIGTERM as gunicorn recycles a worker
with ``--max-requests``), a job queued through another
worker still runs and is polled, and the pool stops with gunicorn (no
process left: the server's whole session is checked, and the supervisor by
pid). A process that is not one of gunicorn's workers is refused by the
pool's socket: nothing is sent to it.

The app is ``apps/progress_wsgi.py`` (see ``test_job_status.py``, whose
helpers these tests use).
"""

from __future__ import annotations

import os
import signal
import socket
import time
import uuid
from pathlib import Path

import psutil
import pytest

from .servers import gunicorn_argv, running_server
from .test_job_status import STATE_TIMEOUT, _go, _one_pool, _poll_everywhere, _queue, _wait_state

pytest.importorskip("gunicorn", reason="the shared pool tests run gunicorn")
pytest.importorskip("flask", reason="the shared pool tests run a Flask app")

pytestmark = pytest.mark.timeout(180)

WORKERS = 3


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait(predicate, what: str, timeout: float = STATE_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} within {timeout}s"
        time.sleep(0.05)


def _sockets(master: int) -> list[str]:
    """The abstract socket names of the pools of gunicorn master ``master``."""
    with open("/proc/net/unix") as f:
        names = [line.split()[-1] for line in f if len(line.split()) >= 8]
    return sorted({n[1:] for n in names if n.startswith(f"@taskmw-{os.getuid()}-{master}-")})


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_the_pool_outlives_the_http_worker_that_built_it(sig: int, tmp_path: Path) -> None:
    """SIGTERM is gunicorn's own way to end one worker (what ``--max-requests``
    does): it exits gracefully, closing its server (which leaves the pool);
    gunicorn starts another, which joins it."""
    argv = lambda port: gunicorn_argv("progress_wsgi:app", port, workers=WORKERS, preload=False)  # noqa: E731
    with running_server(argv, tmp_path) as server:
        supervisor = _one_pool(server, WORKERS)
        builder = psutil.Process(supervisor).ppid()
        assert builder != server.pid and psutil.Process(builder).ppid() == server.pid  # an HTTP worker built it
        os.kill(builder, sig)
        _wait(lambda: _gone(builder), f"HTTP worker {builder} gone")
        assert not _gone(supervisor), "the pool stopped with its builder"
        token = f"o{uuid.uuid4().hex[:8]}"
        task_id, queuer = _queue(server, token)
        assert queuer != builder
        _wait_state(server, task_id, "running")
        _go(tmp_path, token)
        _wait_state(server, task_id, "done")

        def done(body: dict) -> None:
            assert (body["task"]["state"], body["task"]["status"]) == ("done", "ok"), body
            assert body["result"]["token"] == token, body

        _poll_everywhere(server, task_id, queuer, WORKERS, done)
        _wait(lambda: len(server.snapshot()) >= 6, "gunicorn's new HTTP worker")  # master, 3 HTTP, pool of 2
        assert _one_pool(server, WORKERS) == supervisor  # gunicorn's new worker joined the same pool
        server.snapshot(extra=[supervisor])
        report = server.stop()
        assert not report.problems(), report.problems()
    _wait(lambda: _gone(supervisor), f"the pool's supervisor {supervisor} stopped with gunicorn")


def test_a_process_that_is_not_a_sibling_is_refused(tmp_path: Path) -> None:
    argv = lambda port: gunicorn_argv("progress_wsgi:app", port, workers=2, preload=False)  # noqa: E731
    with running_server(argv, tmp_path) as server:
        supervisor = _one_pool(server, 2)
        names = _sockets(server.pid)
        assert len(names) == 1, names  # one pool, named after the master
        stranger = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        stranger.settimeout(10)
        stranger.connect("\0" + names[0])  # this test process: the same user, not a child of the master
        data, fds, _, _ = socket.recv_fds(stranger, 1 << 16, 253)
        assert (data, fds) == (b"", [])  # hung up: no settings, no fds
        stranger.close()
        _wait(lambda: "refused a process that asked to join" in server.log_tail(500), "the refusal logged")
        assert f"is not a child of the app server's master (pid {server.pid})" in server.log_tail(500)
        assert _one_pool(server, 2) == supervisor  # the pool is unharmed
        server.snapshot(extra=[supervisor])
        report = server.stop()
        assert not report.problems(), report.problems()
