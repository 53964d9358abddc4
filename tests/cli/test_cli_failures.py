"""How ``taskmw`` fails: a port in use, another user's master, an app whose
import hangs, a reload with code that does not import. Real ``taskmw``
processes, real gunicorn, 127.0.0.1 only; every wait is bounded."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.cli.test_cli import (
    APPS,
    Load,
    cli_env,
    status,
    stop_and_check,
    taskmw,
    taskmw_command,
    taskmw_server,
    versioned_app,
    wait_for,
)
from tests.e2e.servers import free_port

# Run a command as the user nobody. The capability only lets it read and search what root's
# mode-0700 home holds (this machine's interpreter lives there); writing, and so connecting to a
# mode-0600 unix socket, is still denied to it as to any other user.
AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=+dac_read_search",
             "--ambient-caps=+dac_read_search"]  # fmt: skip


def processes_naming(text: str) -> list[str]:
    """Live processes whose command line holds ``text`` (a test's own path)."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        cmdline = " ".join(p.info["cmdline"] or [])
        if text in cmdline and p.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(f"{p.info['pid']}: {cmdline}")
    return found


def test_start_on_a_port_in_use_says_so_in_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    pid_file = tmp_path / "t.pid"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = taskmw("start", "asgi_app:app", "--chdir", str(APPS), "--port", str(port), "--pid-file",
                      str(pid_file), "-w", "1", "-t", "1", env=cli_env(tmp_path), timeout=60)  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"127.0.0.1:{port}" in lines[0] and "in use" in lines[0], lines[0]
    assert not pid_file.exists() and not Path(f"{pid_file}.sock").exists()
    wait_for(lambda: not processes_naming(str(pid_file)), "no process of the failed start", timeout=15)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A world-writable folder (mode 0777, not sticky: anyone may delete anyone's files)."""
    path = Path(tempfile.mkdtemp(prefix="taskmw-shared-", dir="/tmp"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_start_as_another_user_leaves_a_running_masters_files_alone(shared_dir: Path) -> None:
    with taskmw_server(shared_dir, "asgi_app:app", "-w", "1", "-t", "1", chdir=APPS, ready="/ready") as (
        server,
        pid_file,
    ):
        env = server.cli_env  # type: ignore[attr-defined]
        master = int(pid_file.read_text())
        sock = Path(f"{pid_file}.sock")
        argv = [*AS_NOBODY, *taskmw_command(), "start", "asgi_app:app", "--chdir", str(APPS), "--port",
                str(server.port), "--pid-file", str(pid_file), "-w", "1", "-t", "1"]  # fmt: skip
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert done.returncode == 1, f"{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr, done.stderr
        assert "permission denied" in done.stderr and "another user" in done.stderr, done.stderr
        assert str(pid_file) in done.stderr
        assert pid_file.read_text().strip() == str(master)
        assert sock.exists() and sock.stat().st_uid == 0
        assert status(pid_file, env)["master_pid"] == master  # still the master, still answering
        with server.client() as client:
            assert client.get("/ready").status_code == 200
        stop_and_check(server, pid_file)


def kill_leftovers(text: str) -> None:
    """SIGKILL what a failed test left running (processes whose command line holds ``text``)."""
    for p in psutil.process_iter(["cmdline"]):
        if text in " ".join(p.info["cmdline"] or []):
            with contextlib.suppress(psutil.Error):
                p.kill()
    wait_for(lambda: not processes_naming(text), f"the processes naming {text} to be gone", timeout=15)


def test_an_app_import_that_hangs_is_bounded_by_the_import_timeout(tmp_path: Path) -> None:
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "hangs.py").write_text("import time\ntime.sleep(45)  # an import that never ends, for the test\n")
    pid_file = tmp_path / "t.pid"
    env = cli_env(tmp_path) | {"TASKMW_IMPORT_TIMEOUT": "2"}
    try:
        started = time.monotonic()
        done = taskmw("start", "hangs:app", "--daemonize", "--chdir", str(app_dir), "--port", str(free_port()),
                      "--pid-file", str(pid_file), env=env, timeout=30)  # fmt: skip
        assert time.monotonic() - started < 20
        assert done.returncode == 1, done.stderr
        assert "did not finish within 2s" in done.stderr and "TASKMW_IMPORT_TIMEOUT" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        assert not pid_file.exists()
        wait_for(lambda: not processes_naming(str(pid_file)), "the inspecting child to be killed", timeout=15)
    finally:
        kill_leftovers(str(pid_file))


def slow_plugin(where: Path, go: Path) -> None:
    """An installed ``taskmw`` plugin (a dist-info on the path) whose import
    waits until ``go`` exists: the master, which loads it when it builds the
    pool, hangs before it listens."""
    (where / "slowplug.py").write_text(
        "import os, time\n"
        "deadline = time.monotonic() + 45\n"
        f"while not os.path.exists({str(go)!r}) and time.monotonic() < deadline:\n"
        "    time.sleep(0.05)\n"
        "plugin = object()\n"
    )
    info = where / "slowplug-0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: slowplug\nVersion: 0\n")
    (info / "entry_points.txt").write_text("[taskmw]\nslow = slowplug:plugin\n")


def test_start_daemonize_waits_for_the_daemon_no_longer_than_the_ready_timeout(tmp_path: Path) -> None:
    plugin_dir, go = tmp_path / "plugins", tmp_path / "go"
    plugin_dir.mkdir()
    slow_plugin(plugin_dir, go)
    pid_file, log_file = tmp_path / "t.pid", tmp_path / "t.log"
    env = cli_env(tmp_path)
    env |= {"TASKMW_READY_TIMEOUT": "2", "PYTHONPATH": os.pathsep.join([str(plugin_dir), env["PYTHONPATH"]])}
    try:
        started = time.monotonic()
        done = taskmw("start", "asgi_app:app", "--daemonize", "-w", "1", "-t", "1", "--chdir", str(APPS),
                      "--port", str(free_port()), "--pid-file", str(pid_file), "--log-file", str(log_file),
                      env=env, timeout=30)  # fmt: skip
        assert time.monotonic() - started < 20
        assert done.returncode == 1, done.stderr
        assert "did not say it listens within 2s" in done.stderr and "TASKMW_READY_TIMEOUT" in done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        # the daemon goes on starting, as the message says: let it, then stop it
        daemon = wait_for(lambda: pid_file.exists() and int(pid_file.read_text() or 0), "the daemon's pid file")
        go.touch()
        assert wait_for(lambda: status_or_none(pid_file, env), "the daemon to answer")["master_pid"] == daemon
        tree = [psutil.Process(daemon), *psutil.Process(daemon).children(recursive=True)]
        assert len(tree) >= 4  # master, HTTP worker, supervisor, task worker
        stopped = taskmw("stop", "--pid-file", str(pid_file), env=env, timeout=60)
        assert stopped.returncode == 0, stopped.stderr
        wait_for(lambda: not [p for p in tree if p.is_running()], "every process of the daemon to be gone", timeout=20)
        assert not pid_file.exists()
    finally:
        go.touch()
        with contextlib.suppress(OSError, ValueError, psutil.Error):  # the last resort of a failed test
            daemon_tree = psutil.Process(int(pid_file.read_text()))
            for p in [*daemon_tree.children(recursive=True), daemon_tree]:
                p.kill()
        kill_leftovers(str(pid_file))


def status_or_none(pid_file: Path, env: dict[str, str]) -> dict | None:
    done = taskmw("status", "--json", "--pid-file", str(pid_file), env=env, timeout=30)
    return json.loads(done.stdout) if done.returncode == 0 else None


def test_reload_to_code_that_does_not_import_keeps_the_old_workers_serving(tmp_path: Path) -> None:
    app_dir, template = versioned_app(tmp_path)

    with taskmw_server(tmp_path, "versioned:app", "-w", "2", chdir=app_dir) as (server, pid_file):
        env = server.cli_env  # type: ignore[attr-defined]
        before = status(pid_file, env)
        server.snapshot()
        with Load(server.base_url) as load:
            wait_for(lambda: len(load.ids) >= 20, "20 requests before the reload")
            (app_dir / "versioned.py").write_text(template.format(version="v1") + "\ndef broken(:\n")
            done = taskmw("reload", "--pid-file", str(pid_file), "--timeout", "60", env=env)
            assert done.returncode == 1, f"{done.stdout}\n{done.stderr}\n{server.log_tail()}"
            assert "old workers keep serving" in done.stderr and "SyntaxError" in done.stderr, done.stderr
            assert "Errno" not in done.stderr and "Traceback (most recent call last)" in done.stderr
            count = len(load.ids)
            wait_for(lambda: len(load.ids) >= count + 20, "20 requests after the refused reload")
            after = status(pid_file, env)
            assert after["master_pid"] == before["master_pid"]
            assert [w["pid"] for w in after["http_workers"]] == [w["pid"] for w in before["http_workers"]]
            assert [w["pid"] for w in after["pool"]["workers"]] == [w["pid"] for w in before["pool"]["workers"]]
            assert "SyntaxError" in after["last_reload"]["error"]

            # the fixed code reloads as usual
            (app_dir / "versioned.py").write_text(template.format(version="v2"))
            done = taskmw("reload", "--pid-file", str(pid_file), "--timeout", "60", env=env)
            assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{server.log_tail()}"
            server.snapshot()
            count = len(load.ids)
            wait_for(lambda: len(load.ids) >= count + 20, "20 requests after the reload")
        assert not load.failures, load.failures[:5]
        assert load.versions == {"v1", "v2"}
        assert status(pid_file, env)["last_reload"]["error"] is None
        stop_and_check(server, pid_file, tracebacks=1)  # the refused reload's import error, in the master's log
