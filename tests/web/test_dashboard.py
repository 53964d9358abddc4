"""The dashboard's apps (``taskmw.web.wsgi_app``, ``asgi_app``,
``mount_wsgi``) over a real pool of this process, through httpx's WSGI and
ASGI transports: what each page shows while a task runs, read-only by
default (403/405), cancel only when enabled and from the same origin, the
access check, the filters, escaping, and no reference to another host.
The same apps under real servers and a real browser: ``test_servers.py``."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import WAIT, pids_gone, pool_processes, wait_until

import taskmw
import taskmw.web
from taskmw import TaskServer

pytestmark = pytest.mark.timeout(120)

ORIGIN = "http://testserver"


def wait_for_flag(path: str, message: str) -> str:
    """A job: reports progress 0.5 with ``message``, then waits for the file ``path``."""
    taskmw.progress(0.5, message)
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    return "went"


def fails() -> None:
    raise ValueError("failed <as> asked")


def quick(n: int) -> int:
    return n * 2


@pytest.fixture
def pool() -> Iterator[TaskServer]:
    server = TaskServer(1, entrypoints=False, shutdown_timeout=10.0)
    pids = pool_processes(server)
    try:
        yield server
    finally:
        server.close()
        assert pids_gone(pids | pool_processes(server)), "pool processes left behind"


@pytest.fixture
def busy(pool: TaskServer, tmp_path: Path) -> Iterator[dict[str, int]]:
    """The pool with: one ``ok`` and one ``error`` task done, one running
    (progress 0.5, a message with markup), one queued behind it, one delayed by 10 minutes."""
    done_ok, failed = pool.task(quick, 21), pool.task(fails)
    scheduled = pool.task(taskmw.Task(quick, 2), delay=600)
    assert wait_until(lambda: pool.status(failed).state == "done", WAIT)
    flag = str(tmp_path / "go")
    running = pool.task(wait_for_flag, flag, "<script>alert(1)</script> half way")
    assert wait_until(lambda: pool.status(running).progress == 0.5, WAIT)
    queued = pool.task(quick, 1)
    try:
        yield {"ok": done_ok, "error": failed, "running": running, "queued": queued, "scheduled": scheduled}
    finally:
        Path(flag).touch()


def wsgi_client(app: object) -> httpx.Client:
    return httpx.Client(transport=httpx.WSGITransport(app=app), base_url=ORIGIN)  # type: ignore[arg-type]


def test_the_page_shows_workers_running_queued_and_finished_tasks(pool: TaskServer, busy: dict[str, int]) -> None:
    with wsgi_client(taskmw.web.wsgi_app(pool)) as client:
        r = client.get("/")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in r.headers["content-security-policy"]
        page = r.text
        worker = pool.stats()["workers"][0]
        assert f"<td>{worker['pid']}</td>" in page and '<span class="st st-busy">busy</span>' in page
        running = re.search(r'<div id="s-running">(.*?)</div></section>', page, re.S)
        assert running is not None and f'/tasks/{busy["running"]}">' in running.group(1)
        assert '<progress max="1" value="0.5000"></progress> <b>50%</b>' in running.group(1)
        assert "&lt;script&gt;alert(1)&lt;/script&gt; half way" in page and "<script>alert" not in page
        queued = re.search(r'<div id="s-queued">(.*?)</div></section>', page, re.S)
        assert queued is not None and f'/tasks/{busy["queued"]}">' in queued.group(1)
        recent = re.search(r'<div id="s-recent">(.*?)</div></section>', page, re.S)
        assert recent is not None
        assert '<span class="st st-error">error</span>' in recent.group(1)
        assert "failed &lt;as&gt; asked" in recent.group(1)
        assert '<span class="st st-ok">ok</span>' in recent.group(1)
        scheduled = re.search(r'<div id="s-scheduled">(.*?)</div></section>', page, re.S)
        assert scheduled is not None and f'/tasks/{busy["scheduled"]}">' in scheduled.group(1)
        assert re.search(r"<td><span title=[^>]*>in (9|10) min</span></td>", scheduled.group(1)), scheduled.group(1)
        assert "cancel" not in re.sub(r"<[^>]*>", "", page).lower().replace("cancelled", "")  # read-only: no buttons
        assert '<form class="inline"' not in page and "read-only" in page

        live = client.get("/live", params={"since": 0}).json()
        assert set(live["sections"]) == {"summary", "workers", "running", "queued", "scheduled", "recent"}
        assert live["samples"] and set(live["samples"][-1][1]) == set(taskmw.STATUSES)
        assert live["samples"][-1][1]["error"] == 1 and live["samples"][-1][2] == 1  # totals, queue depth
        later = client.get("/live", params={"since": live["samples"][-1][0]}).json()
        assert all(p[0] > live["samples"][-1][0] for p in later["samples"])  # only newer points

        state = client.get("/api/state").json()
        assert [t["task_id"] for t in state["tasks"]["running"]] == [busy["running"]]
        assert state["stats"]["queue_depth"] == 1 and state["allow_cancel"] is False


def test_a_task_page_shows_its_timings_error_and_traceback(pool: TaskServer, busy: dict[str, int]) -> None:
    with wsgi_client(taskmw.web.wsgi_app(pool)) as client:
        page = client.get(f"/tasks/{busy['error']}").text
        assert f"<h1>Task {busy['error']} <small><code>{__name__}.fails</code>" in page
        assert "<code>ValueError</code>: failed &lt;as&gt; asked" in page
        assert '<pre class="traceback">Traceback (most recent call last):' in page and "raise ValueError" in page
        for label in ("queued at", "started at", "finished at", "waited in the queue", "ran", "arguments"):
            assert f"<th>{label}</th>" in page
        assert "not recorded (the pool records arguments with record_arguments=True)" in page
        assert "data-live" not in page  # done: nothing to follow
        running = client.get(f"/tasks/{busy['running']}").text
        assert f'data-live="/tasks/{busy["running"]}/live"' in running and "running for" in running
        live = client.get(f"/tasks/{busy['running']}/live").json()
        assert live["done"] is False and "50%" in live["sections"]["task"]

        missing = client.get("/tasks/999999")
        assert missing.status_code == 404 and "never issued" in missing.text
        assert client.get("/tasks/999999/live").status_code == 404
        assert client.get("/nowhere").status_code == 404


def test_read_only_by_default_cancel_is_refused(pool: TaskServer, busy: dict[str, int]) -> None:
    with wsgi_client(taskmw.web.wsgi_app(pool)) as client:
        url = f"/tasks/{busy['queued']}/cancel"
        refused = client.post(url, headers={"Origin": ORIGIN})
        assert refused.status_code == 403 and "read-only" in refused.text
        assert client.get(url).status_code == 405 and client.get(url).headers["allow"] == "POST"
        assert client.post("/", headers={"Origin": ORIGIN}).status_code == 405
        assert client.post("/live").status_code == 405
        assert pool.status(busy["queued"]).state == "queued"  # untouched


def test_cancel_works_when_enabled_from_the_same_origin_only(pool: TaskServer, busy: dict[str, int]) -> None:
    with wsgi_client(taskmw.web.wsgi_app(pool, allow_cancel=True)) as client:
        page = client.get("/").text
        assert f'action="/tasks/{busy["queued"]}/cancel"' in page and ">Cancel</button>" in page
        assert f'action="/tasks/{busy["running"]}/cancel"><input type="hidden" name="terminate" value="1">' in page
        url = f"/tasks/{busy['queued']}/cancel"
        for headers in (
            {},  # no Origin, no Referer
            {"Origin": "http://evil.example"},
            {"Referer": "http://evil.example/_taskmw/"},
            {"Origin": ORIGIN, "Sec-Fetch-Site": "cross-site"},
            {"Origin": "null"},
        ):
            r = client.post(url, headers=headers)
            assert r.status_code == 403 and "refused" in r.text, (headers, r.text)
        assert pool.status(busy["queued"]).state == "queued"

        r = client.post(url, headers={"Origin": ORIGIN, "Sec-Fetch-Site": "same-origin"})
        assert r.status_code == 303 and r.headers["location"] == f"/tasks/{busy['queued']}?cancelled=1"
        assert pool.status(busy["queued"]).status == "cancelled"
        assert "Cancelled." in client.get(r.headers["location"]).text
        again = client.post(url, headers={"Referer": f"{ORIGIN}/", "Accept": "application/json"})
        assert again.json() == {"task_id": busy["queued"], "cancelled": False}

        stop = client.post(
            f"/tasks/{busy['running']}/cancel", data={"terminate": "1"}, headers={"Origin": ORIGIN}
        )  # kills its worker; a new one takes its place
        assert stop.status_code == 303
        assert wait_until(lambda: pool.status(busy["running"]).status == "cancelled", WAIT)
        assert client.post("/tasks/999999/cancel", headers={"Origin": ORIGIN}).status_code == 404


def test_the_access_check_sees_every_request(pool: TaskServer) -> None:
    seen: list[str] = []

    def check(environ: dict) -> bool:
        seen.append(environ["PATH_INFO"])
        return environ.get("HTTP_X_USER") == "admin"

    with wsgi_client(taskmw.web.wsgi_app(pool, check=check)) as client:
        for path in ("/", "/live", "/api/state", "/static/dashboard.js", "/tasks/1"):
            denied = client.get(path)
            assert denied.status_code == 403 and "forbidden" in denied.text
        assert client.get("/", headers={"X-User": "admin"}).status_code == 200
        assert seen == ["/", "/live", "/api/state", "/static/dashboard.js", "/tasks/1", "/"]

    def broken(environ: dict) -> bool:
        raise RuntimeError("the auth service is down")

    with wsgi_client(taskmw.web.wsgi_app(pool, check=broken)) as client:
        assert client.get("/").status_code == 403  # fails closed


def test_filters(pool: TaskServer) -> None:
    ids = [pool.task(quick, 1), pool.task(fails), pool.task(quick, 2)]
    assert wait_until(lambda: all(pool.status(i).state == "done" for i in ids), WAIT)
    with wsgi_client(taskmw.web.wsgi_app(pool)) as client:

        def shown(**params: str) -> list[int]:
            page = client.get("/", params=params).text
            recent = re.search(r'<div id="s-recent">(.*?)</div></section>', page, re.S)
            assert recent is not None
            return [int(i) for i in re.findall(r'href="/tasks/(\d+)"', recent.group(1))]

        assert shown() == ids[::-1]
        assert shown(status="error") == [ids[1]]
        assert shown(name="QUICK") == [ids[2], ids[0]]
        assert shown(name="nothing-like-it") == []
        assert shown(status="bogus") == ids[::-1]  # an unknown status filters nothing
        page = client.get("/", params={"status": "error"}).text
        assert 'data-live="/live?status=error"' in page and '<option value="error" selected>' in page


def test_no_reference_to_another_host(pool: TaskServer, busy: dict[str, int]) -> None:
    """Every URL in the page, the task page, the script and the style sheet is
    relative to the dashboard: nothing is fetched from elsewhere (no CDN)."""
    with wsgi_client(taskmw.web.mount_wsgi(lambda e, s: [], server=pool)) as client:
        texts = [
            client.get(path).text
            for path in ("/_taskmw/", f"/_taskmw/tasks/{busy['error']}", "/_taskmw/static/dashboard.js",
                         "/_taskmw/static/dashboard.css")
        ]  # fmt: skip
    for text in texts:
        assert not re.search(r"https?:", text, re.I), re.search(r".{40}https?:.{40}", text)
        assert not re.search(r"""(?:src|href|action|url\()\s*=?\s*["']?//""", text), "a protocol-relative URL"
        assert "@import" not in text
    refs = re.findall(r'(?:src|href|action)="([^"]*)"', texts[0] + texts[1])
    assert refs and all(r.startswith("/_taskmw/") for r in refs), refs


def test_asgi_app_under_a_mount_takes_its_base_from_root_path(pool: TaskServer, busy: dict[str, int]) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    scopes: list[dict] = []

    def check(scope: dict) -> bool:
        scopes.append(scope)
        return dict(scope["headers"]).get(b"x-user") == b"admin"

    app = Starlette(routes=[Mount("/_taskmw", app=taskmw.web.asgi_app(pool, check=check, allow_cancel=True))])

    async def run() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=ORIGIN, headers={"X-User": "admin"}) as client:
            assert (await client.get("/_taskmw")).headers["location"].endswith("/_taskmw/")
            page = (await client.get("/_taskmw/")).text
            assert 'href="/_taskmw/static/dashboard.css"' in page and 'data-live="/_taskmw/live"' in page
            assert f'href="/_taskmw/tasks/{busy["running"]}"' in page and "50%" in page
            live = (await client.get("/_taskmw/live")).json()
            assert "<b>50%</b>" in live["sections"]["running"]
            assert (await client.get(f"/_taskmw/tasks/{busy['error']}")).status_code == 200
            assert (await client.get("/_taskmw/", headers={"X-User": "mallory"})).status_code == 403
            url = f"/_taskmw/tasks/{busy['queued']}/cancel"
            assert (await client.post(url)).status_code == 403  # no Origin
            r = await client.post(url, headers={"Origin": ORIGIN})
            assert r.status_code == 303 and r.headers["location"] == f"/_taskmw/tasks/{busy['queued']}?cancelled=1"

    import asyncio

    asyncio.run(run())
    assert pool.status(busy["queued"]).status == "cancelled"
    assert scopes and scopes[0]["type"] == "http" and scopes[0]["root_path"] == "/_taskmw"


def test_without_a_server_it_shows_the_requests_pool(pool: TaskServer) -> None:
    """``server=None``: ``environ["taskmw.server"]`` (TaskMiddleware sets it)."""
    app = taskmw.web.wsgi_app()

    def with_pool(environ: dict, start_response: object) -> object:
        environ["taskmw.server"] = pool
        return app(environ, start_response)  # type: ignore[arg-type]

    with wsgi_client(with_pool) as client:
        assert client.get("/api/state").json()["stats"]["supervisor_pid"] == pool.supervisor_pid


def test_the_masters_server_and_its_options(pool: TaskServer, busy: dict[str, int]) -> None:
    """What ``taskmw start --dashboard 8001 --dashboard-cancel`` builds: the
    options, and a threading server on a real socket whose buttons work."""
    from taskmw import config
    from taskmw._address import join_address, parse_address
    from taskmw.cli import build_parser
    from taskmw.web.serve import DashboardServer

    args = build_parser().parse_args(["start", "x:app", "--dashboard", "8001", "--dashboard-cancel"])
    resolved = config.resolve(vars(args), {})
    assert (resolved.dashboard, resolved.dashboard_cancel) == ("127.0.0.1:8001", True)
    assert config.resolve({}, {"TASKMW_DASHBOARD": "[::1]:9"}).dashboard == "[::1]:9"
    assert config.resolve({}, {}).dashboard is None and config.resolve({}, {}).dashboard_cancel is False
    assert parse_address("0.0.0.0:80") == ("0.0.0.0", 80)
    assert parse_address(join_address("::1", 8001)) == ("::1", 8001) and join_address("::1", 8001) == "[::1]:8001"
    for bad in ("nope", "127.0.0.1:0", "host:99999"):
        with pytest.raises(ValueError):
            parse_address(bad)

    served = DashboardServer(pool, "127.0.0.1", 0, allow_cancel=True)
    served.start()
    try:
        with httpx.Client(base_url=served.url, timeout=10, trust_env=False) as client:
            assert "cancel enabled" in client.get("/").text
            origin = served.url.rstrip("/")
            r = client.post(f"/tasks/{busy['queued']}/cancel", headers={"Origin": origin})
            assert r.status_code == 303 and pool.status(busy["queued"]).status == "cancelled"
    finally:
        served.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(served.url, timeout=2, trust_env=False)


def test_a_task_page_shows_its_arguments_when_the_pool_records_them() -> None:
    with TaskServer(1, record_arguments=True) as server:
        task_id = server.task(fails)
        with pytest.raises(taskmw.TaskFailed):
            server.result(task_id, timeout=30)
        with wsgi_client(taskmw.web.wsgi_app(server)) as client:
            page = client.get(f"/tasks/{task_id}").text
        assert "<th>arguments</th><td><code>fails()</code>" in page.replace("\n", "")
