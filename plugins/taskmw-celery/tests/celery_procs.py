"""The processes of the Celery backend's tests (and benchmarks): a real
``redis-server`` on a free port of 127.0.0.1 and real ``celery worker``
processes (prefork, 2 pool processes unless told), each stopped at the end
and checked gone (the e2e harness's :class:`~e2e.servers.Server` runs the workers: it
is taskmw's, in the repository's ``tests/e2e/servers.py``).

Without ``redis-server`` or the ``celery``/``redis`` packages the tests are
skipped with the reason, except in CI (``CI=true``), where they fail: CI
installs them (``.ci/run``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

APPS = Path(__file__).resolve().parent / "apps"
REPO = Path(__file__).resolve().parents[3]
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))  # e2e.servers: the process harness of taskmw's own tests

from e2e.servers import Server, alive, base_env, free_port, proc_stat  # noqa: E402

READY_TIMEOUT = 60.0
"""Seconds a Celery worker may take to say it is ready (a busy 2-core machine)."""


def missing(what: str) -> None:
    """Skip (fail in CI) for want of ``what``."""
    message = f"the Celery backend's tests need {what}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{message}: .ci/run must install it", pytrace=False)
    pytest.skip(message, allow_module_level=True)


def require() -> None:
    """Skip (fail in CI) unless redis-server and the celery and redis packages are there."""
    for module in ("celery", "redis", "taskmw_celery"):
        if importlib.util.find_spec(module) is None:
            missing(f"the {module} package (pip install ./plugins/taskmw-celery)")
    if shutil.which("redis-server") is None:
        missing("redis-server (apt-get install redis-server)")


class Redis:
    """``redis-server`` on 127.0.0.1:<free port>, no persistence."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            missing("redis-server (apt-get install redis-server)")
            return
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = open(workdir / "redis.log", "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(workdir)],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        st = proc_stat(self.proc.pid)
        self.ident = (self.proc.pid, st.starttime if st else 0)
        import redis

        self.client = redis.Redis(host="127.0.0.1", port=self.port)
        deadline = time.monotonic() + 20.0
        while True:
            try:
                if self.client.ping():
                    return
            except redis.exceptions.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    log = (workdir / "redis.log").read_text()[-2000:]
                    raise RuntimeError(f"redis-server did not start: {log}") from None
                time.sleep(0.05)

    def url_for(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        """SIGTERM, a bounded wait, SIGKILL if needed; then check it is gone."""
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(10.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10.0)
        self.log.close()
        assert not alive(self.ident), "redis-server outlived its stop"


def worker_argv(name: str, app: str, loglevel: str, concurrency: int = 2) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", app, "worker", "--pool", "prefork", "-c", str(concurrency),
        "--loglevel", loglevel, "--without-gossip", "--without-mingle", "--without-heartbeat", "-n", name,
    ]  # fmt: skip


@contextlib.contextmanager
def celery_worker(
    url: str,
    records: Path,
    acks_late: bool = True,
    app: str = "cworker:capp",
    path: Path = APPS,
    loglevel: str = "info",
    time_limit: float = 120.0,
    concurrency: int = 2,
) -> Iterator[Server]:
    """A ``celery worker`` for ``app`` (importable from ``path``; default
    ``apps/cworker.py``) on Redis ``url``, writing records into ``records``;
    on exit SIGTERM (warm shutdown), bounded waits, and a check that none of
    its processes is left. ``concurrency``: its pool processes."""
    workdir = records / f"worker-{'late' if acks_late else 'early'}"
    workdir.mkdir(parents=True, exist_ok=True)
    env = base_env(records)
    env.update(
        PYTHONPATH=os.pathsep.join([str(path), env["PYTHONPATH"]]),
        TASKMW_CELERY_URL=url,
        TASKMW_ACKS_LATE="1" if acks_late else "0",
        TASKMW_TIME_LIMIT=str(time_limit),
    )
    if os.geteuid() == 0:  # Celery refuses root with pickle unless told (CI may run as root; see README)
        env["C_FORCE_ROOT"] = "1"
    name = f"taskmw-{os.getpid()}-{free_port()}@{socket.gethostname()}"
    worker = Server(worker_argv(name, app, loglevel, concurrency), workdir, env, 0)
    from celery import Celery

    pinger = Celery("taskmw-ping", broker=url, set_as_current=False)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not pinger.control.ping(destination=[name], timeout=0.5):  # answers once it consumes
            if worker.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Celery worker did not get ready; log:\n{worker.log_tail()}")
        worker.snapshot()
        yield worker
    finally:
        pinger.close()
        report = worker.stop(signal.SIGTERM)
    assert not report.problems(), report.problems()
    assert report.returncode == 0, f"celery worker exited {report.returncode}; log:\n{worker.log_tail()}"


def pool_pids(worker: Server) -> set[int]:
    """The worker's pool processes (children of its main process)."""
    return {pid for (pid, _start) in worker.snapshot() if (st := proc_stat(pid)) and st.ppid == worker.pid}
