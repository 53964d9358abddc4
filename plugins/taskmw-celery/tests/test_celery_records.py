"""The Celery backend's record of tasks: ``status()``, ``result()``,
``cancel()``, ``tasks()`` and ``taskmw.progress()`` from another process
(``apps/cremote.py``, which builds its own ``TaskServer(backend="celery")``
and queued nothing), with a real ``redis-server`` and a real ``celery
worker`` with one pool process (so a task queued behind a slow one stays
queued). Every wait is bounded; every process started here is stopped and
checked gone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery_procs import APPS, Redis, celery_worker, pool_pids, require
from e2e.servers import read_records

import taskmw
from taskmw import Task, TaskFailed, TaskServer, UnknownTask, testing

require()

import cjobs  # noqa: E402  (apps/, put on sys.path by conftest)

pytestmark = pytest.mark.timeout(240)

WAIT = 30.0
DB = 3
"""This module's Redis database (its own queue and counter)."""


class Finishes(testing.Finishes):
    """Every finish delivered here, and how many each id got (one is the promise)."""

    def __init__(self) -> None:
        super().__init__()
        self.count: dict[int, int] = {}

    @taskmw.hookimpl
    def on_finish(self, event: taskmw.TaskFinishEvent) -> None:
        self.count[event.task_id] = self.count.get(event.task_id, 0) + 1
        super().on_finish(event)

    def wait(self, ids: list[int], timeout: float = WAIT) -> dict[int, taskmw.TaskFinishEvent]:
        return super().wait(ids, timeout)


@pytest.fixture(scope="module")
def url(redis_server: Redis) -> str:
    return redis_server.url_for(DB)


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the worker's plugins record each ``on_task`` (``ontask-<pid>.jsonl``)."""
    return tmp_path_factory.mktemp("celery-records-ran")


@pytest.fixture(scope="module")
def worker(url: str, ran: Path) -> Iterator[Any]:
    """One Celery worker with one pool process, for the module."""
    with celery_worker(url, ran, concurrency=1) as w:
        yield w


@pytest.fixture
def finishes() -> Finishes:
    return Finishes()


@pytest.fixture
def server(worker: Any, url: str, finishes: Finishes) -> Iterator[TaskServer]:
    with TaskServer(backend="celery", celery_app=cjobs.make_app(url), plugins=[finishes], entrypoints=False,
                    shutdown_timeout=WAIT) as s:  # fmt: skip
        yield s


def _env(url: str) -> dict[str, str]:
    return dict(os.environ, TASKMW_CELERY_URL=url,
                PYTHONPATH=os.pathsep.join([str(APPS), os.environ.get("PYTHONPATH", "")]))  # fmt: skip


def remote(url: str, *args: object) -> Any:
    """Run ``apps/cremote.py`` with ``args`` (another process, its own server); its JSON answer."""
    argv = [sys.executable, str(APPS / "cremote.py"), *map(str, args)]
    out = subprocess.run(argv, env=_env(url), capture_output=True, text=True, timeout=2 * WAIT)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _wait_for(predicate: Any, what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := predicate()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.02)
    return got


def _ran(folder: Path, task_id: int) -> int:
    """How many times ``on_task`` ran for ``task_id`` in the worker."""
    return sum(1 for r in read_records(folder, "ontask") if r["task_id"] == task_id)


def test_status_from_another_process_goes_queued_running_done(server: TaskServer, url: str) -> None:
    blocker = server.task(cjobs.sleep_for, 3.0)  # the worker's one pool process is busy: the next waits
    task_id = server.task(cjobs.report_progress, 3, 0.6)
    assert server.status(task_id).state == "queued"  # at once, in the queuing process too
    watcher = subprocess.Popen([sys.executable, str(APPS / "cremote.py"), "watch", str(task_id)], env=_env(url),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        out, err = watcher.communicate(timeout=2 * WAIT)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    assert watcher.returncode == 0, err[-3000:]
    got = json.loads(out.strip().splitlines()[-1])
    seen = got["seen"]
    assert seen[0] == ["queued", None, None], seen
    assert ["running", 1 / 3, "step 1"] in seen and ["running", 2 / 3, "step 2"] in seen, seen
    assert seen[-1] == ["done", 1.0, "step 3"], seen
    assert [row[0] for row in seen] == sorted((row[0] for row in seen), key=["queued", "running", "done"].index)
    info = got["info"]
    assert (info["status"], info["name"], info["attempts"], info["error"]) == ("ok", "cjobs.report_progress", 1, None)
    assert info["worker_id"] in (0, 1) and info["queued_at"] <= info["started_at"] <= info["finished_at"]
    assert info["finished_at"] - info["started_at"] >= 1.5
    assert got["value"] == "reported"  # result() from a process that never queued it
    local = server.status(task_id)
    assert (local.state, local.status, local.progress, local.message) == ("done", "ok", 1.0, "step 3")
    assert server.result(blocker, timeout=WAIT) == 3.0


def test_result_and_errors_from_another_process(server: TaskServer, finishes: Finishes, url: str,
                                                tmp_path: Path) -> None:  # fmt: skip
    ok = server.task(cjobs.add, 2, 3)
    bad = server.task(cjobs.boom, "it broke")
    flaky = server.task(Task(cjobs.fail_first, str(tmp_path)), retries=1)
    lam = server.task(lambda: 41 + 1)  # by value (cloudpickle)
    lock = server.task(cjobs.return_lock)  # its value cannot be pickled: error, not ok
    got = finishes.wait([ok, bad, flaky, lam, lock])
    assert remote(url, "status", lock)["info"]["status"] == "error" and server.status(lock).status == "error"
    assert remote(url, "result", lock)["failed"] == "error"
    assert got[flaky].attempts == 2
    assert remote(url, "result", ok) == {"value": 5}
    assert remote(url, "result", lam) == {"value": 42}
    assert remote(url, "result", bad) == {"failed": "error", "error": ["ValueError", "it broke", True]}
    assert remote(url, "result", flaky) == {"value": 2}  # the retry's result, under the first run's id
    info = remote(url, "status", flaky)["info"]
    assert (info["state"], info["status"], info["attempts"]) == ("done", "ok", 2)
    info = remote(url, "status", bad)["info"]
    assert info["status"] == "error" and info["error"]["type"] == "ValueError" and "boom" in info["error"]["traceback"]
    with pytest.raises(TaskFailed) as failed:  # and in the queuing process
        server.result(bad, timeout=WAIT)
    assert failed.value.event.error.message == "it broke"
    assert server.result(ok, timeout=WAIT) == 5 and server.result(ok, timeout=WAIT) == 5  # kept, not consumed
    assert all(finishes.count[i] == 1 for i in (ok, bad, flaky, lam))
    listed = remote(url, "tasks", 10)
    done = [i["task_id"] for i in listed["done"]]
    assert done[:5] == [lock, lam, flaky, bad, ok], listed  # newest first (every process's)
    assert not server.cancel(ok) and not server.cancel(ok, terminate=True)  # it finished already


def test_cancel_a_queued_task_from_another_process(server: TaskServer, finishes: Finishes, url: str,
                                                   ran: Path) -> None:  # fmt: skip
    blocker = server.task(cjobs.sleep_for, 2.0)
    victim = server.task(cjobs.add, 1, 1)
    after = server.task(cjobs.add, 2, 2)
    _wait_for(lambda: server.status(blocker).state == "running", "the slow task started")
    got = remote(url, "cancel", victim)
    assert got["cancelled"] is True and got["info"]["state"] == "queued", got
    events = finishes.wait([blocker, victim, after])
    assert (events[victim].status, events[victim].return_value) == ("cancelled", None), events[victim]
    assert events[blocker].return_value == 2.0 and events[after].return_value == 4  # the worker goes on
    time.sleep(2.5)  # the listener's look-up runs every 2 s: a second finish would have come by now
    assert finishes.count[victim] == 1, "a cancelled task got more than one finish"
    assert _ran(ran, victim) == 0, "the cancelled task ran"
    info = remote(url, "status", victim)["info"]
    assert (info["state"], info["status"], info["started_at"]) == ("done", "cancelled", None), info
    assert remote(url, "result", victim)["failed"] == "cancelled"
    assert remote(url, "cancel", victim)["cancelled"] is False  # done already


def test_cancel_marks_the_record_even_when_revoke_misses(server: TaskServer, finishes: Finishes, url: str,
                                                         ran: Path) -> None:  # fmt: skip
    """The record's cancel mark alone stops a queued task: its revoke is
    undone here (as if the worker restarted and forgot its revoked ids)."""
    blocker = server.task(cjobs.sleep_for, 1.5)
    victim = server.task(cjobs.add, 5, 5)
    _wait_for(lambda: server.status(blocker).state == "running", "the slow task started")
    state, _celery_id = server.transport.records.cancel(victim, False)  # type: ignore[attr-defined]
    assert state == 2  # marked; no revoke sent
    event = finishes.wait([blocker, victim])[victim]
    assert event.status == "cancelled" and event.error.type == "Cancelled", event
    assert _ran(ran, victim) == 0 and finishes.count[victim] == 1
    assert server.status(victim).status == "cancelled"


def test_cancel_a_running_task_with_terminate(server: TaskServer, finishes: Finishes, url: str, worker: Any,
                                              ran: Path) -> None:  # fmt: skip
    task_id = server.task(cjobs.sleep_for, 60)
    _wait_for(lambda: server.status(task_id).state == "running", "the task started")
    before = pool_pids(worker)
    got = remote(url, "cancel", task_id)
    assert got["cancelled"] is False and got["info"]["state"] == "running"  # running, and no terminate
    got = remote(url, "cancel", task_id, "terminate")
    assert got["cancelled"] is True and got["info"]["status"] == "cancelled", got
    event = finishes.wait([task_id])[task_id]
    assert event.status == "cancelled", event
    _wait_for(lambda: len(pool_pids(worker)) == 1 and pool_pids(worker) != before, "the worker replaced its process")
    assert server.taskwait(cjobs.add, 1, 2, timeout=WAIT) == 3  # the worker goes on
    time.sleep(2.5)
    assert finishes.count[task_id] == 1 and _ran(ran, task_id) == 1, "the terminated task ran again"


def test_unknown_ids(server: TaskServer, url: str) -> None:
    last = server.task(cjobs.add, 0, 0)
    server.result(last, timeout=WAIT)
    for bad in (last + 1000, 0, -1):
        with pytest.raises(UnknownTask, match="never issued") as unknown:
            server.status(bad)
        assert unknown.value.task_id == bad
        with pytest.raises(UnknownTask, match="never issued"):
            server.result(bad, timeout=1)
        with pytest.raises(UnknownTask, match="never issued"):
            server.cancel(bad)
    assert "never issued" in remote(url, "status", last + 1000)["unknown"]
    with pytest.raises(UnknownTask):
        server.status("1")  # type: ignore[arg-type]


def test_records_expire_after_result_ttl_and_are_bounded(worker: Any, url: str, finishes: Finishes) -> None:
    app = cjobs.make_app(url)
    with TaskServer(backend="celery", celery_app=app, plugins=[finishes], entrypoints=False, result_ttl=1.0,
                    task_records=16) as server:  # fmt: skip
        task_id = server.task(cjobs.add, 20, 22)
        assert server.result(task_id, timeout=WAIT) == 42
        finishes.wait([task_id])
        celery_id = server.status(task_id) and app.backend.client.hget(f"taskmw:task:{task_id}", "celery").decode()
        result_key = app.backend.get_key_for_task(celery_id)
        assert 0 < app.backend.client.pttl(result_key) <= 1000  # delivered: kept for result_ttl, not deleted
        time.sleep(1.3)
        with pytest.raises(UnknownTask, match="expired"):
            server.status(task_id)
        with pytest.raises(UnknownTask, match="expired"):
            server.result(task_id, timeout=1)
        assert app.backend.client.exists(result_key) == 0 and app.backend.client.exists(f"taskmw:task:{task_id}") == 0
        ids = [server.task(cjobs.add, i, 0) for i in range(20)]
        finishes.wait(ids)
        assert server.status(ids[-1]).status == "ok"
        with pytest.raises(UnknownTask, match="evicted: the last task_records=16"):
            server.status(ids[0])
        gone = range(max(1, ids[0] - 16), ids[3] + 1)  # sending id n deleted the record of n - 16
        assert not any(app.backend.client.exists(f"taskmw:task:{i}") for i in gone)


def test_delayed_tasks_become_celery_eta_and_can_be_cancelled(server: TaskServer, finishes: Finishes,
                                                              ran: Path) -> None:  # fmt: skip
    later = server.task(Task(cjobs.add, 1, 2), delay=1.5)
    info = server.status(later)
    assert info.state == "scheduled" and info.scheduled_for == pytest.approx(time.time() + 1.5, abs=0.5)
    assert later in [i.task_id for i in server.tasks()["scheduled"]]
    cancelled = server.task(Task(cjobs.add, 3, 4), delay=2.0)
    assert server.cancel(cancelled)
    assert server.result(later, timeout=WAIT) == 3
    done = server.status(later)
    assert done.started_at >= done.scheduled_for - 0.05  # Celery's worker held it until its eta
    assert done.started_at <= done.scheduled_for + 5.0  # (Celery's own timer: not ms-precise)
    assert finishes.wait([cancelled])[cancelled].status == "cancelled"
    assert server.status(cancelled).status == "cancelled"
    time.sleep(max(0.0, server.status(cancelled).scheduled_for + 1.0 - time.time()))  # past its due time
    assert _ran(ran, cancelled) == 0 and finishes.count[cancelled] == 1
