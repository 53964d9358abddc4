"""The demo (``examples/demo.py``) under a real ``taskmw start -w 2 -t 1``:
a job's id at once, ``/jobs/<id>`` through ``queued``, ``running`` with
progress and ``done`` with its result, answered by both HTTP workers; the
index's three lists; cancel; HTML for a browser's ``Accept`` header (and,
when one is installed, for a real headless Chromium), JSON for curl's."""

from __future__ import annotations

import concurrent.futures
import shutil
import subprocess
import time
from pathlib import Path

import httpx

from tests.cli.test_cli import ROOT, stop_and_check, taskmw_server, wait_for

CHROME_ACCEPT = (
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,"
    "application/signed-exchange;v=b3;q=0.7"
)
CURL_ACCEPT = "*/*"


def browser() -> list[str] | None:
    """A headless Chromium's command line, if one is installed."""
    for name, extra in (
        ("chromium-headless-shell", []),
        ("chromium", ["--headless"]),
        ("google-chrome", ["--headless"]),
    ):
        path = shutil.which(name)
        if path:
            return [path, *extra, "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
    return None


def test_demo_follows_a_job_from_any_worker(tmp_path: Path) -> None:
    with taskmw_server(tmp_path, "examples.demo:app", "-w", "2", "-t", "1", chdir=ROOT, ready="/jobs") as (
        server,
        pid_file,
    ):
        pids: set[int] = set()
        with server.client() as client:

            def job(task_id: int, accept: str = CURL_ACCEPT) -> httpx.Response:
                r = client.get(f"/jobs/{task_id}", headers={"Accept": accept})
                assert r.status_code == 200, r.text
                return r

            def data(task_id: int) -> dict:
                body = job(task_id).json()
                pids.add(body["http_pid"])
                return body

            ahead = client.post("/jobs", data={"seconds": "3"}).json()["id"]  # curl's Accept: JSON
            r = client.post("/jobs", data={"seconds": "1"}, headers={"Accept": CURL_ACCEPT})
            assert r.headers["content-type"] == "application/json" and r.json()["url"] == f"/jobs/{r.json()['id']}"
            task_id = r.json()["id"]

            queued = data(task_id)  # the one task worker runs the 3-second job
            assert (queued["state"], queued["progress"], queued["name"]) == ("queued", None, "examples.demo.slow_job")
            page = job(task_id, CHROME_ACCEPT)
            assert page.headers["content-type"].startswith("text/html")
            assert f"<h1>Job {task_id}: <span class=queued>queued</span></h1>" in page.text
            assert "<meta http-equiv=refresh content=1>" in page.text  # it refreshes until the job is done
            index = client.get("/jobs").json()
            assert [j["task_id"] for j in index["queued"]] == [task_id]
            assert [j["task_id"] for j in index["running"]] == [ahead]
            html_index = client.get("/", headers={"Accept": CHROME_ACCEPT})
            assert html_index.headers["content-type"].startswith("text/html") and "Queued jobs (1)" in html_index.text

            running = wait_for(lambda: (b := data(task_id))["state"] == "running" and b, "the job to run")
            assert running["progress"] is not None and running["message"].endswith("of 4"), running
            done = wait_for(lambda: (b := data(task_id))["state"] == "done" and b, "the job to finish")
            assert (done["status"], done["progress"], done["message"]) == ("ok", 1.0, "done")
            assert done["result"].startswith("slept 1.0s in task worker pid") and done["duration"] >= 1.0
            page = job(task_id, CHROME_ACCEPT).text
            assert "<span class=ok>done (ok)</span>" in page and "refresh" not in page and "slept 1.0s" in page

            def burst(_: int) -> int:  # new connections, eight at once: both HTTP workers take some
                with server.client() as c:
                    return c.get(f"/jobs/{task_id}").json()["http_pid"]

            deadline = time.monotonic() + 15
            with concurrent.futures.ThreadPoolExecutor(8) as ex:
                while len(pids) < 2 and time.monotonic() < deadline:
                    pids.update(ex.map(burst, range(16)))
            assert len(pids) == 2, f"only HTTP worker(s) {pids} answered"

            # a browser's form post goes to the job's page
            r = client.post("/jobs", data={"seconds": "2"}, headers={"Accept": CHROME_ACCEPT})
            assert r.status_code == 303 and r.headers["location"].startswith("/jobs/")
            blocker = int(r.headers["location"].rsplit("/", 1)[1])
            wait_for(lambda: data(blocker)["state"] == "running", "the 2-second job to run")
            doomed = client.post("/jobs", data={"seconds": "1"}).json()["id"]
            assert client.post(f"/jobs/{doomed}/cancel").json()["cancelled"] is True
            gone = wait_for(lambda: (b := data(doomed))["state"] == "done" and b, "the cancelled job to finish")
            assert gone["status"] == "cancelled" and gone["started_at"] is None
            assert client.post(f"/jobs/{doomed}/cancel").json()["cancelled"] is False

            missing = client.get("/jobs/999999")
            assert missing.status_code == 404 and "never issued" in missing.json()["error"]
            assert (
                client.get("/jobs/999999", headers={"Accept": CHROME_ACCEPT})
                .headers["content-type"]
                .startswith("text/html")
            )

            command = browser()
            if command is not None:  # a real browser, with its own Accept header
                url = f"{server.base_url}/jobs/{task_id}"
                dom = subprocess.run([*command, "--dump-dom", url], capture_output=True, text=True, timeout=90)
                assert dom.returncode == 0, dom.stderr[-2000:]
                assert f"<title>taskmw job {task_id}</title>" in dom.stdout, dom.stdout[:2000]
                assert '<span class="ok">done (ok)</span>' in dom.stdout and "slept 1.0s" in dom.stdout
                assert '"task_id"' not in dom.stdout  # not JSON shown in a <pre>
            else:
                print("no headless Chromium installed: checked with Chrome's Accept header only")
        stop_and_check(server, pid_file)
