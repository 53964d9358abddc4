"""Periodic tasks under ``taskmw start``: the master builds the pool without
importing the app, so the schedule comes from the child that inspects it
(the app's ``@taskmw.periodic`` functions); ``taskmw status`` lists it, and a
``taskmw reload`` (new HTTP and task workers) does not run a due time twice."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.cli.test_cli import WAIT, status, stop_and_check, taskmw, taskmw_server, wait_for

E2E_APPS = Path(__file__).resolve().parents[1] / "e2e" / "apps"


def _runs(workdir: Path) -> list[float]:
    path = workdir / "periodic-runs.txt"
    if not path.exists():
        return []
    return [float(line.split()[0]) for line in path.read_text().splitlines() if len(line.split()) == 2]


def test_taskmw_start_runs_the_apps_periodic_tasks_once(tmp_path: Path) -> None:
    kept = tmp_path / "schedule.json"
    with taskmw_server(tmp_path, "periodic_app:app", "-w", "3", "--missed-runs", "skip", "--max-worker-memory",
                       "1G", "--schedule-file", str(kept), chdir=E2E_APPS) as (server, pid_file):  # fmt: skip
        wait_for(lambda: len(_runs(tmp_path)) >= 2, "two periodic runs")
        st = status(pid_file, server.cli_env)  # type: ignore[attr-defined]
        (entry,) = st["pool"]["schedule"]
        assert entry["name"] == "periodic_app.tick" and entry["when"] == "every 1s" and entry["runs"] >= 2
        text = taskmw("status", "--pid-file", str(pid_file), env=server.cli_env, timeout=30)  # type: ignore[attr-defined]
        assert "Periodic tasks: 1" in text.stdout and "every 1s" in text.stdout, text.stdout

        done = taskmw("reload", "--pid-file", str(pid_file), "--timeout", "60", env=server.cli_env)  # type: ignore[attr-defined]
        assert done.returncode == 0, done.stderr
        count = len(_runs(tmp_path))
        wait_for(lambda: len(_runs(tmp_path)) >= count + 3, "three runs after the reload", timeout=WAIT)
        first, now = _runs(tmp_path)[0], time.time()
        dues = [int(t) for t in _runs(tmp_path)]
        assert len(set(dues)) >= len(dues) - 1, f"several runs for one due time: {dues}"
        assert len(dues) <= now - first + 2, f"{len(dues)} runs in {now - first:.1f}s: {dues}"
        stop_and_check(server, pid_file)
    assert json.loads(kept.read_text())["last_due"]["periodic_app.tick"] >= int(dues[-1])
