"""A periodic task under ``gunicorn -w 3``, with ``--preload`` and without
(the HTTP workers then share the pool the first one built): the pool's
supervisor runs it, once per due time for the whole pool, not once per HTTP
worker; a
SIGKILLed supervisor's successor does not run a due time again; ``taskmw
status`` lists the schedule."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("httpx", reason="the e2e tests need httpx")

from .servers import base_env, gunicorn_argv, running_server, uvicorn_argv  # noqa: E402

WAIT = 20.0


def _runs(workdir: Path) -> list[tuple[float, int]]:
    path = workdir / "periodic-runs.txt"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        start, _, pid = line.partition(" ")
        if pid:
            out.append((float(start), int(pid)))
    return out


def _until(predicate, timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize("preload", [True, False], ids=["preload", "shared"])
def test_every_second_runs_once_per_second_for_three_http_workers(tmp_path: Path, preload: bool) -> None:
    env = base_env(tmp_path) | {"TASKMW_STATUS_SOCKET": str(tmp_path / "status.sock")}
    with running_server(lambda port: gunicorn_argv("periodic_app:app", port, 3, preload=preload), tmp_path,
                        env=env) as server:  # fmt: skip
        assert _until(lambda: len(_runs(tmp_path)) >= 1), server.log_tail()
        first = _runs(tmp_path)[0][0]
        window = 5.0
        assert _until(lambda: time.time() > first + window + 1.5, timeout=window + 5)
        within = [t for t, _ in _runs(tmp_path) if t < first + window + 0.5]
        expected = int(window) + 1  # the due times first, first+1, ..., first+5
        assert expected - 1 <= len(within) <= expected + 1, f"{len(within)} runs in {window}s: {within}"
        dues = [int(t) for t in within]
        assert len(set(dues)) >= len(dues) - 1, f"several runs for one due time: {within}"

        with server.client() as c:
            answers = [c.get("/").json() for _ in range(6)]
        supervisor = answers[0]["stats"]["supervisor_pid"]
        workers = {w["pid"] for w in answers[0]["stats"]["workers"]}
        assert {pid for _, pid in _runs(tmp_path)} <= workers  # run by the task workers
        (entry,) = answers[-1]["stats"]["schedule"]
        assert entry["name"] == "periodic_app.tick" and entry["when"] == "every 1s"

        # The supervisor dies; the watchdog's new one goes on with the same history.
        count = len(_runs(tmp_path))
        os.kill(supervisor, signal.SIGKILL)
        assert _until(lambda: len(_runs(tmp_path)) >= count + 3), server.log_tail()
        dues = [int(t) for t, _ in _runs(tmp_path)]
        assert len(set(dues)) >= len(dues) - 1, f"several runs for one due time: {dues}"

        taskmw_status = [sys.executable, "-m", "taskmw", "status", "--socket", str(tmp_path / "status.sock")]
        shown = subprocess.run([*taskmw_status, "--json"], capture_output=True, text=True, timeout=30, env=env)
        assert shown.returncode == 0, shown.stderr
        (listed,) = json.loads(shown.stdout)["pool"]["schedule"]
        assert listed["name"] == "periodic_app.tick" and listed["runs"] >= count + 3
        assert listed["last_status"] in ("queued", "running", "ok") and listed["next_run"] > time.time() - 1
        text = subprocess.run(taskmw_status, capture_output=True, text=True, timeout=30, env=env)
        assert "Periodic tasks: 1" in text.stdout and "periodic_app.tick" in text.stdout, text.stdout
    assert not server.stop_report.problems(), server.stop_report.problems()


def test_without_preload_the_http_workers_share_one_schedule(tmp_path: Path) -> None:
    """One pool (one supervisor) for both HTTP workers, so no worker warns
    that it runs the schedule itself."""
    with running_server(lambda port: gunicorn_argv("periodic_app:app", port, 2, preload=False), tmp_path) as server:
        assert _until(lambda: len(_runs(tmp_path)) >= 2), server.log_tail()
        assert _until(lambda: len(server.supervisors()) == 1), server.snapshot()
        assert "periodic task(s) run once per HTTP worker" not in server.log_tail(500)
    assert not server.stop_report.problems(), server.stop_report.problems()


def test_uvicorn_workers_share_one_schedule_and_say_so_only_when_they_do_not(tmp_path: Path) -> None:
    """``uvicorn --workers 2``: the workers share one pool (one supervisor,
    no warning); with ``share="never"`` each builds its own pool, which
    runs the schedule too, and says so, as a gunicorn worker does."""
    argv = lambda port: [*uvicorn_argv("periodic_asgi:app", port), "--workers", "2"]  # noqa: E731
    with running_server(argv, tmp_path / "shared") as server:
        assert _until(lambda: len(server.supervisors()) == 1), server.snapshot()
        assert "built its own task pool" not in server.log_tail(500), server.log_tail()
    assert not server.stop_report.problems(), server.stop_report.problems()
    env = {**base_env(tmp_path / "own"), "PERIODIC_SHARE": "never"}
    with running_server(argv, tmp_path / "own", env=env) as server:
        assert _until(lambda: server.log_tail(200).count("periodic task(s) run once per HTTP worker") == 2), (
            server.log_tail()
        )
        assert server.log_tail(200).count("uvicorn worker") >= 2, server.log_tail()
    assert not server.stop_report.problems(), server.stop_report.problems()


def test_one_uvicorn_process_does_not_warn(tmp_path: Path) -> None:
    with running_server(lambda port: uvicorn_argv("periodic_asgi:app", port), tmp_path) as server:
        with server.client() as c:
            assert c.get("/").status_code == 200
        assert "built its own task pool" not in server.log_tail(200), server.log_tail()
    assert not server.stop_report.problems(), server.stop_report.problems()
