"""How ``taskmw`` fails: a port in use, another user's master, an app whose
import hangs, a reload with code that does not import. Real ``taskmw``
processes, real gunicorn, 127.0.0.1 only; every wait is bounded."""

from __future__ import annotations

import socket
from pathlib import Path

import psutil

from tests.cli.test_cli import APPS, cli_env, taskmw, wait_for


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
