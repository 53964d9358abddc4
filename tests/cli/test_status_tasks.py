"""``taskmw status`` lists the pool's queued, running and finished tasks,
and ``taskmw status TASK_ID`` shows one (text, ``--json``, ``--watch``),
against a real ``taskmw start`` serving ``tests/e2e/apps/progress_wsgi.py``
(one task worker; a job reports progress 0.5 and waits for a flag file the
test creates, so each state is seen when the test chooses)."""

from __future__ import annotations

import importlib.util
import json
import time
import uuid
from pathlib import Path

from tests.cli.test_cli import status, stop_and_check, taskmw, taskmw_server, wait_for

E2E_APPS = Path(__file__).resolve().parents[1] / "e2e" / "apps"


def test_status_lists_tasks_and_shows_one(tmp_path: Path) -> None:
    tokens = [f"t{uuid.uuid4().hex[:8]}" for _ in range(3)]
    with taskmw_server(tmp_path, "progress_wsgi:app", "-w", "2", chdir=E2E_APPS, ready="/pool") as (server, pid_file):
        env = server.cli_env  # type: ignore[attr-defined]

        def one(*args: str):
            return taskmw("status", "--pid-file", str(pid_file), *args, env=env, timeout=30)

        with server.client() as client:

            def queue(token: str, fail: bool = False) -> int:
                r = client.post("/jobs", params={"token": token, **({"fail": "1"} if fail else {})})
                assert r.status_code == 200, r.text
                return r.json()["id"]

            def state(task_id: int) -> str:
                return client.get(f"/jobs/{task_id}").json()["task"]["state"]

            first = queue(tokens[0])
            wait_for(lambda: state(first) == "running", "the first job to run")
            second, third = queue(tokens[1]), queue(tokens[2], fail=True)

            tasks = status(pid_file, env)["pool"]["tasks"]
            assert [(t["task_id"], t["progress"], t["worker_id"]) for t in tasks["running"]] == [(first, 0.5, 0)]
            assert [t["task_id"] for t in tasks["queued"]] == [second, third]
            assert tasks["done"] == []

            text = one().stdout
            assert "Running tasks: 1" in text and "Queued tasks: 2" in text and "Recently finished: 0  (none)" in text
            assert "Scheduled" not in text  # nothing schedules tasks yet
            row = next(line for line in text.splitlines() if line.split()[:1] == [str(first)])
            assert "progress_jobs.wait_job" in row and "50%" in row and f"waiting for go-{tokens[0]}" in row
            assert sum(line.split()[:1] in ([str(second)], [str(third)]) for line in text.splitlines()) == 2

            shown = one(str(first))
            assert shown.returncode == 0, shown.stderr
            assert shown.stdout.startswith(f"task {first}  running\n")
            for part in ("name      progress_jobs.wait_job", "worker    0", "progress  50%",
                         f"message   waiting for go-{tokens[0]}", "finished  -", "running   "):  # fmt: skip
                assert part in shown.stdout, shown.stdout
            queued = json.loads(one("--json", str(second)).stdout)
            assert (queued["task_id"], queued["state"], queued["started_at"], queued["progress"]) == (
                second, "queued", None, None)  # fmt: skip

            watch = one("--watch", "--count", "2", "--interval", "0.2", str(first))
            assert watch.returncode == 0 and watch.stdout.count("\x1b[H\x1b[2J") == 2
            assert watch.stdout.count(f"task {first}  running") == 2
            lines = one("--watch", "--json", "--count", "2", "--interval", "0.2", str(first)).stdout.splitlines()
            assert [json.loads(line)["task_id"] for line in lines] == [first, first]

            for bad in ("999999", "0"):
                unknown = one(bad)
                assert unknown.returncode == 1 and unknown.stdout == ""
                assert unknown.stderr == f"taskmw status: unknown task {bad}: this pool never issued it\n"
            assert one("--json", "999999").returncode == 1
            assert one("nope").returncode == 2  # argparse: TASK_ID is a number

            for token in tokens:
                (tmp_path / f"go-{token}").touch()
            wait_for(lambda: state(third) == "done", "the last job to finish")

        failed = one(str(third)).stdout
        assert failed.startswith(f"task {third}  done (error)\n"), failed
        assert f"error     ValueError: failed as asked: {tokens[2]}" in failed and "Traceback" in failed
        ok = json.loads(one("--json", str(second)).stdout)
        assert (ok["state"], ok["status"], ok["error"], ok["progress"]) == ("done", "ok", None, 1.0)
        assert ok["queued_at"] <= ok["started_at"] <= ok["finished_at"]
        text = one().stdout
        assert "Recently finished: 3" in text and "ValueError: failed as asked" in text
        with server.client() as client:
            later = client.post("/jobs", params={"token": "never", "delay": 600}).json()["id"]
        wait_for(lambda: "Scheduled tasks: 1" in one().stdout, "the delayed job to be listed")
        text = one().stdout
        assert "DUE IN" in text
        row = next(line for line in text.splitlines() if line.split()[:1] == [str(later)])
        assert "progress_jobs.wait_job" in row and ("10m" in row or "9m" in row), row
        scheduled = status(pid_file, env)["pool"]["tasks"]["scheduled"]
        assert [(t["task_id"], t["state"]) for t in scheduled] == [(later, "scheduled")]
        assert json.loads(one("--json", str(later)).stdout)["scheduled_for"] > time.time() + 500
        shown = one(str(later)).stdout  # the one task's text says when it is due
        assert shown.startswith(f"task {later}  scheduled\n"), shown
        due = next(line for line in shown.splitlines() if line.startswith("  due "))
        assert "(in 10m" in due or "(in 9m" in due, shown
        logged = importlib.util.find_spec("taskmw_logging") is not None  # it logs the failed task's traceback
        stop_and_check(server, pid_file, tracebacks=1 if logged else 0)
