"""Each process of ``taskmw start`` names its role and its app in its title
(setproctitle), read back from ``/proc/<pid>/cmdline``."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from tests.cli.test_cli import status, stop_and_check, taskmw_server, wait_for

E2E_APPS = Path(__file__).resolve().parents[1] / "e2e" / "apps"


def title_of(pid: int) -> str:
    return " ".join(psutil.Process(pid).cmdline()).strip()


@pytest.mark.parametrize(("args", "label"), [((), "shopapp:create_app()"), (("--gunicorn-arg=--name=shop",), "shop")])
def test_every_role_is_in_the_process_title(tmp_path: Path, args: tuple[str, ...], label: str) -> None:
    spec = "shopapp:create_app()"
    with taskmw_server(tmp_path, spec, "-w", "2", "-t", "2", *args, chdir=E2E_APPS) as (server, pid_file):
        env = server.cli_env  # type: ignore[attr-defined]
        st = wait_for(lambda: (s := status(pid_file, env)) and all(w["state"] == "idle" for w in s["pool"]["workers"])
                      and len(s["http_workers"]) == 2 and s, "every worker up")  # fmt: skip
        assert title_of(st["master_pid"]) == f"taskmw: master [{label}]"
        assert title_of(st["pool"]["supervisor_pid"]) == f"taskmw: supervisor [{label}]"
        assert [title_of(w["pid"]) for w in st["http_workers"]] == [f"taskmw: HTTP worker [{label}]"] * 2
        assert sorted(title_of(w["pid"]) for w in st["pool"]["workers"]) == [
            f"taskmw: task worker {n} [{label}]" for n in (0, 1)
        ]
        stop_and_check(server, pid_file)
