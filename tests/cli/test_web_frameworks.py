"""Flask and FastAPI apps as their users write them, under ``taskmw start``,
``flask run --debug``, gunicorn and uvicorn (real servers on 127.0.0.1,
through the e2e harness: every process they start must be gone at the end)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.cli.test_cli import cli_env, status, stop_and_check, taskmw, taskmw_server, wait_for
from tests.e2e.servers import base_env, free_port, gunicorn_argv, running_server, uvicorn_argv

E2E_APPS = Path(__file__).resolve().parents[1] / "e2e" / "apps"

pytestmark = pytest.mark.timeout(180)


def factory_calls(workdir: Path) -> dict[int, int]:
    """{pid: times the shopapp factory ran in it}."""
    calls: dict[int, int] = {}
    for path in workdir.glob("factory-*.jsonl"):
        for line in path.read_text().splitlines():
            pid = json.loads(line)["pid"]
            calls[pid] = calls.get(pid, 0) + 1
    return calls


# -- Flask: an app factory --------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["shopapp:create_app()", "shopapp:create_app"])
def test_taskmw_start_calls_a_flask_factory_once_per_process(tmp_path: Path, spec: str) -> None:
    with taskmw_server(tmp_path, spec, "-w", "2", "-t", "2", chdir=E2E_APPS) as (server, pid_file):
        env = server.cli_env  # type: ignore[attr-defined]
        with server.client() as client:
            for _ in range(4):
                r = client.get("/wait")
                assert r.status_code == 200, r.text
                assert r.json()["result"] == 5
        st = wait_for(lambda: (s := status(pid_file, env)) and len(s["pool"]["workers"]) == 2 and s, "2 task workers")
        http = {w["pid"] for w in st["http_workers"]}
        tasks = {w["pid"] for w in st["pool"]["workers"]}
        calls = wait_for(lambda: (c := factory_calls(tmp_path)) and set(c) >= http | tasks and c, "factory calls")
        # once in the child that inspected the app, once in each HTTP worker and task worker; never in the master
        assert set(calls.values()) == {1}, calls
        assert len(calls) == 1 + len(http) + len(tasks) == 5, (calls, http, tasks)
        assert st["master_pid"] not in calls and st["pool"]["supervisor_pid"] not in calls
        stop_and_check(server, pid_file)


def test_flask_run_debug_builds_one_pool_in_the_reloaders_child(tmp_path: Path) -> None:
    pytest.importorskip("flask")
    env = base_env(tmp_path) | {"FLASK_APP": "shopapp"}
    env.pop("WERKZEUG_RUN_MAIN", None)

    def argv(port: int) -> list[str]:
        return [sys.executable, "-m", "flask", "run", "--debug", "--port", str(port), "--host", "127.0.0.1"]

    with running_server(argv, tmp_path, ready_path="/wait", env=env) as server:
        tree = wait_for(lambda: (t := server.snapshot()) and len(t) >= 5 and t, "the reloader, its child and a pool")
        # the reloader, its child (which serves), and one pool: its supervisor and 2 task workers
        assert len(tree) == 5, "\n".join(tree.values())
        calls = factory_calls(tmp_path)
        assert len(calls) == 2, calls  # flask imports the app in the reloader too, but builds no pool there
        os.killpg(server.pid, signal.SIGINT)  # Ctrl-C in the terminal
        report = server.stop(sig=None)
        assert not report.problems(), report.problems()


def test_an_app_factory_called_in_a_task_joins_the_workers_pool(tmp_path: Path) -> None:
    """gunicorn --preload 'shopapp:create_app()': a task that calls the factory
    (which builds TaskMiddleware) joins its worker's pool; before, each call
    forked a new pool (a supervisor and 2 task workers) inside the task worker."""
    with running_server(
        lambda port: gunicorn_argv("shopapp:create_app()", port, workers=2, preload=True), tmp_path, ready_path="/"
    ) as server:
        before = wait_for(lambda: (t := server.snapshot()) and len(t) == 6 and t, "master, 2 HTTP, supervisor, 2 tasks")
        with server.client() as client:
            answers = [client.get("/rebuild").json() for _ in range(3)]
        assert all(a["joined"] and a["worker_id"] in (0, 1) for a in answers), answers
        time.sleep(0.5)  # a pool forked by the factory would be up by now
        after = server.snapshot()
        assert set(after) == set(before), "\n".join(after.values())
        report = server.stop()
        assert not report.problems(), report.problems()


# -- FastAPI: add_middleware and a dependency ---------------------------------------------------------------------


def check_fastapi_app(server) -> None:
    with server.client() as client:
        pool = client.get("/pool").json()
        assert pool["task_workers"] == 2 and pool["same"] is True, pool
        for x in (1, 2, 3):
            r = client.get("/wait", params={"x": x})
            assert r.status_code == 200, r.text
            assert r.json()["value"] == 2 * x


def test_fastapi_add_middleware_and_dependency_under_uvicorn(tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    with running_server(lambda port: uvicorn_argv("fastapi_app:app", port), tmp_path, ready_path="/pool") as server:
        check_fastapi_app(server)
        report = server.stop()
        assert not report.problems(), report.problems()


def test_fastapi_add_middleware_settings_reach_taskmw_start(tmp_path: Path) -> None:
    """add_middleware(TaskMiddleware, task_workers=2): taskmw start's pool has
    2 task workers (its 4 by default silently won before)."""
    pytest.importorskip("fastapi")
    with taskmw_server(tmp_path, "fastapi_app:app", "-w", "1", chdir=E2E_APPS, ready="/pool") as (server, pid_file):
        st = status(pid_file, server.cli_env)  # type: ignore[attr-defined]
        assert st["interface"] == "asgi" and st["pool"]["task_workers"] == 2, st["pool"]
        check_fastapi_app(server)
        stop_and_check(server, pid_file)


def test_fastapi_settings_given_twice_are_refused_naming_what_wins(tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    (tmp_path / "twice.py").write_text(
        "from fastapi import FastAPI\nfrom taskmw import TaskMiddleware\n"
        "api = FastAPI()\napi.add_middleware(TaskMiddleware, task_workers=2)\n"
        "app = TaskMiddleware(api, task_workers=3)\n"
    )
    env = cli_env(tmp_path)
    done = taskmw("start", "twice:app", "--chdir", str(tmp_path), "--pid-file", str(tmp_path / "t.pid"),
                  "--port", str(free_port()), env=env, timeout=60)  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1].startswith("taskmw start: twice:app gives task_workers twice"), done.stderr
    assert "-t/--num-task-workers or TASKMW_NUM_TASK_WORKERS wins over both" in done.stderr
    assert not (tmp_path / "t.pid").exists()


# -- gunicorn without --preload ----------------------------------------------------------------------------------

OWN_POOL = "built its own task pool"


@pytest.mark.parametrize("preload", [False, True])
def test_gunicorn_with_or_without_preload_runs_one_pool(tmp_path: Path, preload: bool) -> None:
    """Without --preload the HTTP workers share the pool the first builds
    (share="auto"): master, 2 HTTP workers, one supervisor, 2 task workers."""
    with running_server(
        lambda port: gunicorn_argv("flask_app:app", port, workers=2, preload=preload), tmp_path
    ) as server:
        wait_for(lambda: len(server.snapshot()) == 6, "every process")
        assert len(server.supervisors()) == 1, server.snapshot()
        report = server.stop()
        assert not report.problems(), report.problems()
    assert [line for line in server.log_path.read_text().splitlines() if OWN_POOL in line] == []
