"""``taskmw start|stop|reload|status`` end to end, as a user runs them: the
console script starts a real server in the background, httpx sends requests,
``status --json`` is checked against what was sent, ``reload`` runs under
load, ``stop`` leaves no process behind, and ``/metrics`` is parsed with
``prometheus_client``'s parser.

The servers run through the e2e harness (``tests/e2e/servers.py``): every
process of a run is tracked and must be gone after it stops.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.servers import Server, base_env, free_port, gunicorn_argv, read_records, running_server
from tests.plugins.installed import require

ROOT = Path(__file__).resolve().parents[2]
APPS = Path(__file__).resolve().parent / "apps"
WAIT = 30.0  # seconds any condition below may take on a busy 2-core machine


def taskmw_command() -> list[str]:
    """The console script of this venv (what a user runs), else ``python -m taskmw``."""
    script = Path(sys.executable).with_name("taskmw")
    return [str(script)] if script.exists() else [sys.executable, "-m", "taskmw"]


def cli_env(workdir: Path) -> dict[str, str]:
    env = base_env(workdir)
    for name in list(env):
        if name.startswith("TASKMW_") and name != "TASKMW_E2E_DIR" or name == "PROMETHEUS_MULTIPROC_DIR":
            del env[name]
    return env


def taskmw(*args: str, env: dict[str, str], timeout: float = 150.0) -> subprocess.CompletedProcess[str]:
    """Run ``taskmw ARGS`` to completion (bounded)."""
    return subprocess.run(
        [*taskmw_command(), *args], env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def status(pid_file: Path, env: dict[str, str]) -> dict:
    done = taskmw("status", "--json", "--pid-file", str(pid_file), env=env, timeout=30)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def wait_for(predicate, what: str, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@contextlib.contextmanager
def taskmw_server(
    workdir: Path, spec: str, *args: str, chdir: Path, ready: str = "/", **env_extra: str
) -> Iterator[tuple[Server, Path]]:
    """``taskmw start SPEC ARGS`` in the background, ready; yields it and its pid file."""
    pid_file = workdir / "taskmw.pid"
    env = cli_env(workdir) | env_extra

    def argv(port: int) -> list[str]:
        return [*taskmw_command(), "start", spec, "--port", str(port), "--pid-file", str(pid_file),
                "--chdir", str(chdir), "--graceful-timeout", "20", *args]  # fmt: skip

    with running_server(argv, workdir, ready_path=ready, env=env) as server:
        server.cli_env = env  # type: ignore[attr-defined]
        yield server, pid_file
        assert not server.stop_report or not server.stop_report.problems()


def stop_and_check(server: Server, pid_file: Path, log: Path | None = None, tracebacks: int = 0) -> None:
    """``taskmw stop``; then the master, every HTTP worker and every pool
    process must be gone, the pid file and control socket removed, and the
    server's log (``log``, else its output) free of tracebacks (but the
    ``tracebacks`` a test caused on purpose)."""
    server.snapshot()
    done = taskmw("stop", "--pid-file", str(pid_file), env=server.cli_env)  # type: ignore[attr-defined]
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{server.log_tail()}"
    assert "stopped" in done.stdout
    report = server.stop(sig=None)
    assert report.returncode == 0, server.log_tail()
    assert not report.problems(), report.problems()
    assert not pid_file.exists() and not Path(f"{pid_file}.sock").exists()
    text = (log or server.log_path).read_text(errors="replace")
    assert text.count("Traceback") == tracebacks, text[-3000:]


def pool_pids(st: dict) -> list[int]:
    return [st["master_pid"], st["pool"]["supervisor_pid"], *(w["pid"] for w in st["http_workers"]),
            *(w["pid"] for w in st["pool"]["workers"])]  # fmt: skip


# -- the commands without a server ---------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["start"], ["stop"], ["reload"], ["status"]])
def test_every_command_has_help(command: list[str]) -> None:
    done = taskmw(*command, "--help", env=dict(os.environ), timeout=30)
    assert done.returncode == 0, done.stderr
    assert "usage: taskmw" in done.stdout
    if command == ["start"]:
        assert "--num-task-workers" in done.stdout and "TASKMW_NUM_TASK_WORKERS" in done.stdout


def test_commands_without_a_server_say_so(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    for command in ("status", "stop", "reload"):
        done = taskmw(command, "--pid-file", str(tmp_path / "none.pid"), env=env, timeout=30)
        assert done.returncode == 1
        assert f"no pid file at {tmp_path / 'none.pid'}" in done.stderr
    stale = tmp_path / "stale.pid"
    stale.write_text(f"{os.getpid()}\n")  # a live process, but no taskmw master
    done = taskmw("stop", "--pid-file", str(stale), env=env, timeout=30)
    assert done.returncode == 1 and "not a running taskmw master" in done.stderr


def test_start_reports_an_app_that_does_not_import(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    done = taskmw("start", "no_such_module_here:app", "--chdir", str(tmp_path), "--pid-file",
                  str(tmp_path / "t.pid"), "--port", str(free_port()), env=env, timeout=60)  # fmt: skip
    assert done.returncode == 1
    assert "cannot import 'no_such_module_here'" in done.stderr
    (tmp_path / "broken.py").write_text("raise RuntimeError('broken at import')\n")
    done = taskmw("start", "broken:app", "--chdir", str(tmp_path), "--pid-file", str(tmp_path / "t.pid"),
                  "--port", str(free_port()), env=env, timeout=60)  # fmt: skip
    assert done.returncode == 1 and "RuntimeError: broken at import" in done.stderr
    assert not (tmp_path / "t.pid").exists()


# -- the demo: start, status, metrics, stop ------------------------------------------------------------


def test_demo_status_metrics_and_stop(tmp_path: Path) -> None:
    require("taskmw-prometheus")  # the demo's /metrics
    from prometheus_client.parser import text_string_to_metric_families

    args = ("-w", "2", "-t", "2")
    with taskmw_server(tmp_path, "examples.demo:app", *args, chdir=ROOT, ready="/jobs") as (server, pid_file):
        env = server.cli_env  # type: ignore[attr-defined]
        jobs = [{"seconds": "0.3"}] * 6 + [{"seconds": "0.1", "fail": "1"}] * 2
        ids = []
        with server.client() as client:
            for form in jobs:
                r = client.post("/jobs", data=form, headers={"Accept": "application/json"})
                assert r.status_code == 200, r.text
                ids.append(r.json()["id"])
            assert len(set(ids)) == len(jobs)

            # --watch redraws in place (cursor home + clear) and stops after --count redraws
            watch = taskmw("status", "--watch", "--count", "2", "--interval", "0.2", "--pid-file", str(pid_file),
                           env=env, timeout=30)  # fmt: skip
            assert watch.returncode == 0, watch.stderr
            assert watch.stdout.count("\x1b[H\x1b[2J") == 2
            assert "Task workers: 2 of 2" in watch.stdout and "HTTP workers: 2 of 2" in watch.stdout

            finished = wait_for(
                lambda: (f := client.get("/jobs").json()["finished"]) and len(f) == len(jobs) and f,
                "every job to be listed as finished",
            )
        assert sorted(j["task_id"] for j in finished) == sorted(ids)
        assert sorted(j["status"] for j in finished) == ["error"] * 2 + ["ok"] * 6
        assert all(j["result"].startswith("slept 0.3s") for j in finished if j["status"] == "ok")

        st = status(pid_file, env)
        pool = st["pool"]
        assert st["interface"] == "wsgi" and st["app"] == "examples.demo:app"
        assert len(st["http_workers"]) == 2 and st["num_workers"] == 2
        assert pool["task_workers"] == 2 and len(pool["workers"]) == 2
        assert pool["queue_depth"] == 0
        assert pool["totals"] == {"ok": 6, "error": 2, "lost": 0, "timeout": 0, "cancelled": 0}
        assert sum(w["tasks_done"] for w in pool["workers"]) == len(jobs)
        assert all(w["state"] == "idle" and w["task_id"] is None for w in pool["workers"])
        assert all(w["rss_bytes"] > 0 for w in pool["workers"] + st["http_workers"])
        assert st["tasks_per_second"] is None or st["tasks_per_second"] >= 0
        assert set(pool_pids(st)) <= {pid for pid, _ in server.snapshot()}  # all tracked: checked at stop
        text = taskmw("status", "--pid-file", str(pid_file), env=env, timeout=30).stdout
        assert "ok 6  error 2" in text
        assert "Queued tasks: 0  (none)" in text and "Running tasks: 0  (none)" in text
        assert "Recently finished: 8" in text and "Scheduled" not in text

        with server.client() as client:
            r = client.get("/metrics")
        assert r.status_code == 200, r.text
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text)
            for s in family.samples
        }
        assert samples[("taskmw_tasks_total", (("status", "ok"),))] == 6
        assert samples[("taskmw_tasks_total", (("status", "error"),))] == 2
        assert samples[("taskmw_task_duration_seconds_count", (("status", "ok"),))] == 6
        assert samples[("taskmw_task_duration_seconds_sum", (("status", "ok"),))] >= 6 * 0.3
        assert samples[("taskmw_task_duration_seconds_bucket", (("le", "0.25"), ("status", "ok")))] == 0
        starts = {k[1][0][1]: v for k, v in samples.items() if k[0] == "taskmw_task_worker_starts_total"}
        assert starts == {"0": 1, "1": 1}
        assert samples[("taskmw_queue_depth", ())] == 0
        assert samples[("taskmw_task_workers", (("state", "idle"),))] == 2

        logged = importlib.util.find_spec("taskmw_logging") is not None  # it logs the tracebacks of the 2 failed jobs
        stop_and_check(server, pid_file, tracebacks=2 if logged else 0)


# -- reload under load --------------------------------------------------------------------------------------


class Load:
    """Requests ``/queue`` from two threads until stopped (at most ``limit``
    requests each, one every ``pause`` seconds at most: the tasks must not
    pile up faster than three workers run them); keeps the task ids and any
    failure."""

    def __init__(self, base_url: str, limit: int = 1000, pause: float = 0.01) -> None:
        self.pause = pause
        self.ids: list[int] = []
        self.versions: set[str] = set()
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(base_url, limit), daemon=True) for _ in range(2)]

    def run(self, base_url: str, limit: int) -> None:
        with httpx.Client(base_url=base_url, timeout=20.0, trust_env=False) as client:
            for _ in range(limit):
                if self.stop.is_set():
                    return
                try:
                    r = client.get("/queue")
                    if r.status_code != 200:
                        self.failures.append(f"HTTP {r.status_code}: {r.text[:200]}")
                        continue
                    body = r.json()
                    self.ids.append(body["id"])
                    self.versions.add(body["version"])
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                time.sleep(self.pause)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)
        assert not any(t.is_alive() for t in self.threads)


def versioned_app(tmp_path: Path) -> tuple[Path, str]:
    """A folder holding ``versioned.py`` at version v1, and its template (``.format(version=...)``)."""
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    template = (APPS / "versioned.py.tmpl").read_text()
    (app_dir / "versioned.py").write_text(template.format(version="v1"))
    return app_dir, template


def test_reload_under_load_loses_nothing_and_loads_new_code(tmp_path: Path) -> None:
    app_dir, template = versioned_app(tmp_path)

    with taskmw_server(tmp_path, "versioned:app", "-w", "2", chdir=app_dir) as (server, pid_file):
        env = server.cli_env  # type: ignore[attr-defined]
        before = status(pid_file, env)
        assert before["pool"]["task_workers"] == 3  # from the app's TaskMiddleware(task_workers=3): no -t given
        with server.client() as client:
            assert client.get("/version").json() == {"http": "v1", "task": "v1"}
        server.snapshot()

        with Load(server.base_url) as load:
            wait_for(lambda: len(load.ids) >= 50, "50 requests before the reload")
            (app_dir / "versioned.py").write_text(template.format(version="v2"))
            done = taskmw("reload", "--pid-file", str(pid_file), "--timeout", "60", env=env)
            assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{server.log_tail()}"
            server.snapshot()
            count = len(load.ids)
            wait_for(lambda: len(load.ids) >= count + 50, "50 requests after the reload")
        assert not load.failures, load.failures[:5]
        assert load.versions == {"v1", "v2"}

        after = status(pid_file, env)
        old = {w["pid"] for w in before["http_workers"]} | {w["pid"] for w in before["pool"]["workers"]}
        new = {w["pid"] for w in after["http_workers"]} | {w["pid"] for w in after["pool"]["workers"]}
        assert not old & new
        assert after["master_pid"] == before["master_pid"]
        assert after["pool"]["supervisor_pid"] == before["pool"]["supervisor_pid"]
        with server.client() as client:
            assert client.get("/version").json() == {"http": "v2", "task": "v2"}

        # every queued task finished exactly once, ok, in the HTTP worker that queued it
        def finishes() -> list[dict]:
            return [r for r in read_records(tmp_path, "finish") if r["id"] in set(load.ids)]

        wait_for(lambda: len(finishes()) >= len(load.ids), f"{len(load.ids)} finishes")
        got = finishes()
        assert sorted(r["id"] for r in got) == sorted(load.ids)
        assert {r["status"] for r in got} == {"ok"}
        totals = status(pid_file, env)["pool"]["totals"]
        assert totals["ok"] == len(load.ids) + 2  # and the two /version taskwaits
        assert totals["lost"] == totals["error"] == totals["cancelled"] == 0

        # reload -w: another HTTP worker count from now on, every worker new again
        done = taskmw("reload", "-w", "3", "--pid-file", str(pid_file), "--timeout", "60", env=env)
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{server.log_tail()}"
        server.snapshot()
        last = status(pid_file, env)
        assert last["num_workers"] == 3 and len(last["http_workers"]) == 3
        assert not {w["pid"] for w in last["http_workers"]} & {w["pid"] for w in after["http_workers"]}
        with server.client() as client:
            assert client.get("/version").json() == {"http": "v2", "task": "v2"}

        stop_and_check(server, pid_file)


# -- ASGI, daemonized ----------------------------------------------------------------------------------


def test_asgi_app_daemonized(tmp_path: Path) -> None:
    pid_file = tmp_path / "taskmw.pid"
    log_file = tmp_path / "server.log.daemon"
    env = cli_env(tmp_path)
    port = free_port()
    argv = [*taskmw_command(), "start", "asgi_app:app", "--daemonize", "-w", "2", "-t", "2", "--port", str(port),
            "--pid-file", str(pid_file), "--log-file", str(log_file), "--chdir", str(APPS)]  # fmt: skip
    server = Server(argv, tmp_path, env, port)
    server.cli_env = env  # type: ignore[attr-defined]
    daemon = None
    try:
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.proc.wait(timeout=60)  # returns once the daemon listens
        with contextlib.suppress(OSError, ValueError):
            daemon = int(pid_file.read_text())
        assert server.proc.returncode == 0, server.log_tail()
        assert "in the background" in server.log_tail()
        assert daemon is not None
        assert daemon != server.pid
        server.snapshot(extra=[daemon])
        with server.client() as client:  # the launcher has exited, so not server.wait_ready()

            def answers() -> bool:
                with contextlib.suppress(httpx.HTTPError):
                    return client.get("/ready").status_code == 200
                return False

            wait_for(answers, "the daemon's HTTP workers")
        with server.client() as client:
            ids = [client.get("/queue", params={"x": i}).json()["id"] for i in range(10)]
            assert client.get("/wait", params={"x": 21}).json()["value"] == 42
        assert len(set(ids)) == 10
        st = wait_for(lambda: (s := status(pid_file, env))["pool"]["totals"]["ok"] == 11 and s, "11 finished tasks")
        assert st["interface"] == "asgi" and st["master_pid"] == daemon
        assert len(st["http_workers"]) == 2 and len(st["pool"]["workers"]) == 2
        server.snapshot(extra=[daemon])

        # the old HTTP workers' lifespan shutdown leaves the master's pool running
        done = taskmw("reload", "--pid-file", str(pid_file), "--timeout", "60", env=env)
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
        server.snapshot(extra=[daemon])
        with server.client() as client:
            assert client.get("/wait", params={"x": 5}).json()["value"] == 10
        assert status(pid_file, env)["pool"]["totals"]["ok"] == 12
        stop_and_check(server, pid_file, log_file)
    finally:
        if daemon is not None and server.stop_report is None:
            server.snapshot(extra=[daemon])
            with contextlib.suppress(ProcessLookupError):
                os.kill(daemon, signal.SIGTERM)
        server.stop(sig=None)


# -- status of a pool served without taskmw start ----------------------------------------------------


def test_status_of_a_pool_under_gunicorn_preload(tmp_path: Path) -> None:
    """``TASKMW_STATUS_SOCKET`` makes the pool's builder (gunicorn's master)
    answer ``taskmw status --socket``; the socket goes when it exits."""
    sock = tmp_path / "status.sock"
    env = cli_env(tmp_path) | {"TASKMW_STATUS_SOCKET": str(sock)}
    with running_server(
        lambda port: gunicorn_argv("flask_app:app", port, 2, preload=True), tmp_path, env=env
    ) as server:
        with server.client() as client:
            queued = [client.get("/queue", params={"a": i, "b": 1}) for i in range(5)]
            assert all(r.status_code == 200 for r in queued)
            assert client.get("/wait", params={"a": 2, "b": 3}).json()["result"]["sum"] == 5

        def counted() -> dict | bool:
            done = taskmw("status", "--json", "--socket", str(sock), env=cli_env(tmp_path), timeout=30)
            assert done.returncode == 0, done.stderr
            st = json.loads(done.stdout)
            return st["pool"]["totals"]["ok"] == 6 and st

        st = wait_for(counted, "6 finished tasks in status")
        assert st["master_pid"] == server.pid and st["app"] is None and st["http_workers"] == []
        assert st["pool"]["task_workers"] == 2 and st["pool"]["queue_depth"] == 0
        text = taskmw("status", env=env, timeout=30)  # the socket from the environment
        assert text.returncode == 0, text.stderr
        assert f"built by pid {server.pid}" in text.stdout and "ok 6" in text.stdout
        assert "Recently finished: 6" in text.stdout
        one = taskmw("status", "--json", str(queued[0].json()["id"]), env=env, timeout=30)  # the `task` command
        assert one.returncode == 0, one.stderr
        assert json.loads(one.stdout)["state"] == "done" and json.loads(one.stdout)["name"] == "jobs.add"
        report = server.stop()
        assert not report.problems(), report.problems()
    assert not sock.exists()
