"""The dashboard under real servers, loaded by a real headless Chromium
while tasks run: mounted in a Flask app under ``gunicorn --preload -w 2``
(cancel enabled), mounted in a Starlette app under uvicorn (read-only,
behind an access check), and served by ``taskmw start --dashboard`` from
the master (read-only; the chart; the README's screenshot).

``--dump-dom`` gives the DOM after the page's script ran (its first
``/live`` answer swapped in, the charts drawn). Without Chromium the browser
checks are skipped, except in CI (``CI=true``: ``.ci/run`` installs
``chromium-headless-shell``). ``TASKMW_SCREENSHOT=docs/dashboard.png``
makes the last test write the README's screenshot there (else it goes to
the test's temporary folder)."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.cli.test_cli import ROOT, status, stop_and_check, taskmw_server, wait_for
from tests.cli.test_demo import browser
from tests.e2e.servers import Server, base_env, free_port, gunicorn_argv, running_server, uvicorn_argv

pytestmark = pytest.mark.timeout(240)

APPS = Path(__file__).resolve().parent / "apps"


def env_for(workdir: Path) -> dict[str, str]:
    env = base_env(workdir)
    env["PYTHONPATH"] = os.pathsep.join([str(APPS), env["PYTHONPATH"]])
    env["TASKMW_DISABLE_PLUGINS"] = "*"  # what the pages show must not depend on what else is installed
    return env


def chromium() -> list[str] | None:
    command = browser()
    if command is None and os.environ.get("CI") == "true":
        pytest.fail("CI needs a headless Chromium (.ci/run installs chromium-headless-shell)")
    return command


def dom(url: str) -> str:
    """The DOM of ``url`` after its script ran (a real headless Chromium)."""
    command = chromium()
    if command is None:
        pytest.skip("no headless Chromium installed (apt-get install chromium-headless-shell)")
    done = subprocess.run(
        [*command, "--virtual-time-budget=3000", "--dump-dom", url], capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def section(page: str, name: str) -> str:
    match = re.search(rf'<div id="s-{name}"[^>]*>(.*?)</div>\s*</section>', page, re.S)
    assert match is not None, f"no section {name} in {page[:3000]}"
    return match.group(1)


def queue(client: httpx.Client, kind: str, token: str = "") -> int:
    r = client.post("/jobs", params={"kind": kind, "token": token})
    assert r.status_code == 200, r.text
    return int(r.json()["id"])


def state(client: httpx.Client, prefix: str = "/_taskmw") -> dict:
    r = client.get(f"{prefix}/api/state")
    assert r.status_code == 200, r.text
    return r.json()


def ids(tasks: list[dict]) -> list[int]:
    return [t["task_id"] for t in tasks]


@contextlib.contextmanager
def started(argv, workdir: Path) -> Iterator[Server]:
    with running_server(argv, workdir, ready_path="/pool", env=env_for(workdir)) as server:
        yield server
        report = server.stop()
        assert not report.problems(), report.problems()


def test_mounted_in_flask_under_gunicorn_preload(tmp_path: Path) -> None:
    argv = lambda port: gunicorn_argv("dash_wsgi:app", port, workers=2, preload=True)  # noqa: E731
    with started(argv, tmp_path) as server, server.client() as client:
        done_ok = [queue(client, "quick") for _ in range(3)]
        failed = queue(client, "fail")
        runs, waits = queue(client, "wait", "a"), queue(client, "wait", "b")  # one task worker: b waits behind a
        wait_for(lambda: ids(state(client)["tasks"]["running"]) == [runs], "the first job to run")
        wait_for(lambda: state(client)["tasks"]["running"][0]["progress"] == 0.5, "its progress")

        page = dom(f"{server.base_url}/_taskmw/")
        assert "<title>taskmw dashboard</title>" in page and "cancel enabled" in page
        assert re.search(r'<span id="updated" class="updated live">live · ', page), "the script did not update"
        workers = section(page, "workers")
        assert workers.count("<tr>") == 2 and '<span class="st st-busy">busy</span>' in workers  # head + 1 worker
        assert f'href="/_taskmw/tasks/{runs}"' in workers
        running = section(page, "running")
        assert f'href="/_taskmw/tasks/{runs}"' in running and "<b>50%</b>" in running and "waiting for go-a" in running
        assert '<progress max="1" value="0.5000"></progress>' in running and ">Stop</button>" in running
        queued = section(page, "queued")
        assert f'href="/_taskmw/tasks/{waits}"' in queued and ">Cancel</button>" in queued
        recent = section(page, "recent")
        for task_id in (*done_ok, failed):
            assert f'href="/_taskmw/tasks/{task_id}"' in recent
        assert recent.count('<span class="st st-ok">ok</span>') == 3
        assert "<code>ValueError</code>: failed as asked" in recent
        assert '<line class="grid"' in page  # the charts were drawn

        task_page = dom(f"{server.base_url}/_taskmw/tasks/{failed}")
        assert '<pre class="traceback">Traceback (most recent call last):' in task_page
        assert "dash_jobs.fail" in task_page and "not recorded" in task_page

        url = f"/_taskmw/tasks/{waits}/cancel"
        assert client.post(url).status_code == 403  # no Origin: not from the dashboard's page
        assert client.post(url, headers={"Origin": "http://elsewhere.example"}).status_code == 403
        assert client.get(url).status_code == 405
        r = client.post(url, headers={"Origin": server.base_url})
        assert r.status_code == 303 and r.headers["location"] == f"/_taskmw/tasks/{waits}?cancelled=1"
        gone = wait_for(lambda: (t := client.get(f"/_taskmw/tasks/{waits}/live").json())["done"] and t, "cancelled")
        assert '<span class="st st-cancelled">cancelled</span>' in gone["sections"]["task"]

        (tmp_path / "go-a").touch()
        wait_for(lambda: runs in ids(state(client)["tasks"]["done"]), "the first job to finish")
        wait_for(lambda: (t := state(client)["stats"]["totals"])["ok"] == 4 and t["error"] == 1, "the totals")


def test_mounted_in_starlette_under_uvicorn_read_only_behind_a_check(tmp_path: Path) -> None:
    with started(lambda port: uvicorn_argv("dash_asgi:app", port), tmp_path) as server, server.client() as client:
        failed = queue(client, "fail")
        runs, waits = queue(client, "wait", "a"), queue(client, "wait", "b")
        wait_for(lambda: ids(state(client)["tasks"]["running"]) == [runs], "the first job to run")

        page = dom(f"{server.base_url}/_taskmw/")
        assert "read-only" in page and "<form" in page  # the filters' form only:
        assert "/cancel" not in page and "<button" in page and ">Cancel</button>" not in page
        running = section(page, "running")
        assert f'href="/_taskmw/tasks/{runs}"' in running and "<b>50%</b>" in running
        assert f'href="/_taskmw/tasks/{waits}"' in section(page, "queued")
        assert f'href="/_taskmw/tasks/{failed}"' in section(page, "recent") and "failed as asked" in page

        url = f"/_taskmw/tasks/{waits}/cancel"
        refused = client.post(url, headers={"Origin": server.base_url})
        assert refused.status_code == 403 and "read-only" in refused.text
        assert client.get(url).status_code == 405
        assert state(client)["tasks"]["queued"][0]["task_id"] == waits

        (tmp_path / "deny").touch()  # the app's check denies from now on, for every request
        assert client.get("/_taskmw/").status_code == 403 and client.get("/_taskmw/api/state").status_code == 403
        assert client.get("/pool").status_code == 200  # the app itself is not the dashboard's business
        assert "forbidden" in dom(f"{server.base_url}/_taskmw/")
        (tmp_path / "deny").unlink()
        assert client.get("/_taskmw/").status_code == 200
        (tmp_path / "go-a").touch()
        (tmp_path / "go-b").touch()
        wait_for(lambda: len(state(client)["tasks"]["done"]) == 3, "the jobs to finish")


def test_taskmw_start_dashboard(tmp_path: Path) -> None:
    """The master serves the dashboard (read-only) while the demo's jobs run:
    the chart counts the finishes by status; the README's screenshot."""
    port = free_port()
    with taskmw_server(
        tmp_path, "examples.demo:app", "-w", "2", "-t", "2", "--dashboard", f"127.0.0.1:{port}",
        chdir=ROOT, ready="/jobs", TASKMW_DISABLE_PLUGINS="*",
    ) as (server, pid_file):  # fmt: skip
        dash = f"http://127.0.0.1:{port}"
        assert status(pid_file, server.cli_env)["dashboard"] == f"{dash}/"  # type: ignore[attr-defined]
        with server.client() as app, httpx.Client(base_url=dash, timeout=10, trust_env=False) as client:
            finished = []
            for n in range(7):  # finishes spread over a few 10-second buckets of the chart
                finished.append(app.post("/jobs", data={"seconds": "0.3", "fail": "1" if n == 3 else ""}).json()["id"])
                time.sleep(1.2)
            wait_for(lambda: all(i in ids(state(client, "")["tasks"]["done"]) for i in finished), "the short jobs")
            long = [app.post("/jobs", data={"seconds": "8"}).json()["id"] for _ in range(3)]
            wait_for(lambda: sorted(ids(state(client, "")["tasks"]["running"])) == long[:2], "two long jobs to run")
            wait_for(lambda: all(t["progress"] for t in state(client, "")["tasks"]["running"]), "their progress")
            time.sleep(2.5)  # a sample of the totals after the last finish

            page = dom(f"{dash}/")
            assert "read-only" in page and ">Cancel</button>" not in page
            assert section(page, "workers").count('<span class="st st-busy">busy</span>') == 2
            running = section(page, "running")
            assert all(f'href="/tasks/{i}"' in running for i in long[:2]) and "examples.demo.slow_job" in running
            assert re.search(r"<b>\d+%</b> step \d+ of 32", running)
            assert f'href="/tasks/{long[2]}"' in section(page, "queued")
            bars = re.findall(r'<rect class="bar st-(\w+)" data-status="\w+" data-count="(\d+)"', page)
            counts: dict[str, int] = {}
            for status_name, count in bars:
                counts[status_name] = counts.get(status_name, 0) + int(count)
            assert counts == {"ok": 6, "error": 1}, bars
            assert "7 finished in the last 5 minutes" in page
            assert re.search(r'<b id="rate">[0-9.]+</b>', page)

            refused = client.post(f"/tasks/{long[2]}/cancel", headers={"Origin": dash})
            assert refused.status_code == 403 and "read-only" in refused.text

            shot = Path(os.environ.get("TASKMW_SCREENSHOT") or tmp_path / "dashboard.png")
            command = chromium()
            assert command is not None
            made = subprocess.run(
                [*command, "--hide-scrollbars", "--window-size=1280,900", "--virtual-time-budget=3000",
                 f"--screenshot={shot}", f"{dash}/"],
                capture_output=True, text=True, timeout=90,
            )  # fmt: skip
            assert made.returncode == 0 and shot.stat().st_size > 20_000, made.stderr[-2000:]
            wait_for(lambda: len(state(client, "")["tasks"]["done"]) == 10, "the long jobs to finish", timeout=40)
        stop_and_check(server, pid_file)  # no plugin: the failed job's traceback is not logged
