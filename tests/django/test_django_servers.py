"""The example shop (examples/django) end to end, on SQLite, with real
processes: ``manage.py taskmw start`` (gunicorn), ``uvicorn
shop.asgi:application`` (Django's ASGI handler), ``manage.py taskmw
status|stop``, and the project's own pytest-django suite (the recipe).

Servers run through the e2e harness (tests/e2e/servers.py): every process
of a run is tracked and must be gone after it stops; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import EXAMPLE

from tests.cli.test_cli import WAIT, cli_env, wait_for
from tests.e2e.servers import Server, proc_stat, running_server, uvicorn_argv

pytest.importorskip("uvicorn")

MANAGE = EXAMPLE / "manage.py"
PASSWORD = "not-a-secret-42"


def shop_env(workdir: Path) -> dict[str, str]:
    env = cli_env(workdir)
    env["SHOP_DB"] = str(workdir / "shop.sqlite3")
    env["PYTHONPATH"] = os.pathsep.join([str(EXAMPLE), env["PYTHONPATH"]])
    env["DJANGO_SETTINGS_MODULE"] = "shop.settings"
    return env


def manage(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(MANAGE), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)  # fmt: skip


@pytest.fixture
def shop(tmp_path: Path) -> dict[str, str]:
    """A migrated shop database with an admin user; the environment to serve it."""
    env = shop_env(tmp_path)
    done = manage("migrate", "-v0", env=env)
    assert done.returncode == 0, done.stderr
    env_admin = dict(env, DJANGO_SUPERUSER_PASSWORD=PASSWORD)
    done = manage("createsuperuser", "--noinput", "--username", "admin", "--email", "a@example.com", env=env_admin)
    assert done.returncode == 0, done.stderr
    return env


def exercise(server: Server, interface: str, supervisor_of_workers: int | None = None) -> None:
    """What a user does with the shop, checked: the pool in views, an order
    shipped by a task worker after commit, a rolled-back one never, the
    post_save receiver in a task worker, the admin pages."""
    with server.client() as c:
        for path in ["/pool", "/pool-async"] if interface == "asgi" else ["/pool"]:
            pool = c.get(path).json()
            assert pool["via"] == ("scope" if interface == "asgi" else "environ"), pool
            assert pool["current_server_is_request_taskmw"] is True
            assert pool["supervisor"] is not None
        supervisor = pool["supervisor"]
        ok, rolled_back = f"ok-{uuid.uuid4().hex[:8]}", f"rb-{uuid.uuid4().hex[:8]}"
        r = c.post("/orders", data={"ref": rolled_back, "fail": "1"})
        assert r.status_code == 409, r.text
        r = c.post("/orders", data={"ref": ok})
        assert r.status_code == 201, r.text
        http_pid = r.json()["pid"]

        def shipped() -> dict[str, Any] | None:
            got = c.get(f"/orders/{ok}").json()
            kinds = {e["kind"] for e in got["events"]}
            return got if got["status"] == "shipped" and kinds == {"ship", "created"} else None

        order = wait_for(shipped, f"order {ok} shipped and its creation recorded", WAIT)
        for pid in [order["shipped_by"], *(e["pid"] for e in order["events"])]:
            st = proc_stat(pid)
            assert pid != http_pid and st is not None and st.ppid == supervisor, (pid, supervisor)
        # Queued before the order that shipped, had it been queued at all:
        assert c.get(f"/orders/{rolled_back}").json() == {"ref": rolled_back, "exists": False, "status": None,
                                                          "shipped_by": None, "events": []}  # fmt: skip
        # The admin, logged in: the order is listed.
        login = c.get("/admin/login/")
        assert login.status_code == 200
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text)
        assert token is not None
        r = c.post("/admin/login/?next=/admin/orders/order/",
                   data={"username": "admin", "password": PASSWORD, "csrfmiddlewaretoken": token.group(1),
                         "next": "/admin/orders/order/"})  # fmt: skip
        assert r.status_code == 302, r.text[:500]
        listing = c.get("/admin/orders/order/")
        assert listing.status_code == 200 and ok in listing.text and "shipped" in listing.text


def no_traceback(server: Server) -> None:
    text = server.log_path.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]


@pytest.fixture
def taskmw_shop(shop: dict[str, str], tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    """``manage.py taskmw start`` (gunicorn), ready."""
    pid_file = tmp_path / "taskmw.pid"

    def argv(port: int) -> list[str]:
        return [sys.executable, str(MANAGE), "taskmw", "start", "--port", str(port), "--pid-file", str(pid_file),
                "-w", "2", "--graceful-timeout", "20"]  # fmt: skip

    with running_server(argv, tmp_path, ready_path="/pool", env=shop) as server:
        yield server, pid_file


def test_manage_py_taskmw_start_status_stop(taskmw_shop: tuple[Server, Path], shop: dict[str, str]) -> None:
    server, pid_file = taskmw_shop
    exercise(server, "wsgi")
    done = manage("taskmw", "status", "--json", "--pid-file", str(pid_file), env=shop)
    assert done.returncode == 0, done.stderr
    st = json.loads(done.stdout)
    assert st["app"] == "shop.wsgi:application" and st["interface"] == "wsgi"
    assert st["master_pid"] == server.pid  # manage.py became the master (exec)
    assert len(st["pool"]["workers"]) == 2 and len(st["http_workers"]) == 2
    assert st["pool"]["totals"]["ok"] >= 2  # shipped, its creation recorded
    server.snapshot()
    done = manage("taskmw", "stop", "--pid-file", str(pid_file), env=shop, timeout=120)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{server.log_tail()}"
    report = server.stop(sig=None)
    assert report.returncode == 0, server.log_tail()
    assert not report.problems(), report.problems()
    assert not pid_file.exists()
    no_traceback(server)


def test_manage_py_taskmw_status_without_a_server(shop: dict[str, str], tmp_path: Path) -> None:
    done = manage("taskmw", "status", "--pid-file", str(tmp_path / "none.pid"), env=shop)
    assert done.returncode == 1
    assert "taskmw status: no pid file" in done.stderr


def test_uvicorn_serves_the_asgi_application(shop: dict[str, str], tmp_path: Path) -> None:
    with running_server(lambda port: uvicorn_argv("shop.asgi:application", port), tmp_path, "/pool", shop) as server:
        exercise(server, "asgi")
        server.snapshot()
    report = server.stop()
    assert report.returncode in (0, -signal.SIGTERM), server.log_tail()  # uvicorn re-raises the signal
    assert not report.problems(), report.problems()
    assert "Application shutdown complete" in server.log_path.read_text()  # the lifespan closed the pool
    no_traceback(server)


def test_the_pytest_django_recipe(tmp_path: Path) -> None:
    """The example project's own suite (pytest-django, eager and real pools)."""
    pytest.importorskip("pytest_django")
    env = shop_env(tmp_path)
    env["SHOP_TEST_DB"] = str(tmp_path / "test.sqlite3")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=EXAMPLE, env=env,
                          capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "3 passed" in done.stdout
