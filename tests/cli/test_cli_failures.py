"""How ``taskmw`` fails: a port in use, another user's master, an app whose
import hangs, a reload with code that does not import. Real ``taskmw``
processes, real gunicorn, 127.0.0.1 only; every wait is bounded."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.cli.test_cli import APPS, cli_env, status, stop_and_check, taskmw, taskmw_command, taskmw_server, wait_for

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
