"""The Celery backend (``plugins/taskmw-celery``) with real processes: a real
``redis-server`` and real ``celery worker`` processes (see ``conftest.py``),
and a gunicorn serving an app written for the local pool.

Every wait is bounded; every process started here is stopped and checked gone.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery_procs import Redis, celery_worker, pool_pids, require
from e2e.servers import gunicorn_argv, read_records, running_server

import taskmw
from taskmw import QueueFull, ServiceTask, Task, TaskFailed, TaskServer, testing

require()  # skips this module (fails it in CI) without redis-server, celery, redis or taskmw-celery

import cjobs  # noqa: E402  (apps/, put on sys.path by conftest)

pytestmark = pytest.mark.timeout(180)

WAIT = 30.0
"""Seconds any single wait may take (a busy 2-core machine)."""


class Finishes(testing.Finishes):
    """``taskmw.testing``'s recorder, also counting the finishes of each id
    (exactly one is the promise) and naming the threads they came on."""

    def __init__(self) -> None:
        super().__init__()
        self.count: collections.Counter[int] = collections.Counter()
        self.threads: set[str] = set()

    @taskmw.hookimpl
    def on_finish(self, event: taskmw.TaskFinishEvent) -> None:
        self.count[event.task_id] += 1
        self.threads.add(threading.current_thread().name)
        super().on_finish(event)

    def wait(self, ids: list[int], timeout: float = WAIT) -> dict[int, taskmw.TaskFinishEvent]:
        return super().wait(ids, timeout)


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("celery-records")


@pytest.fixture(scope="module")
def worker(redis_server: Redis, records: Path) -> Iterator[Any]:
    """One Celery worker (acks_late) for the module."""
    with celery_worker(redis_server.url, records) as w:
        yield w


@pytest.fixture
def finishes() -> Finishes:
    return Finishes()


@contextlib.contextmanager
def celery_ids() -> Iterator[dict[int, str]]:
    """The Celery task id of every taskmw task this process sends meanwhile,
    by taskmw id, as Celery's ``before_task_publish`` signal shows them."""
    from celery import signals
    from taskmw_celery import TASK_NAME

    ids: dict[int, str] = {}

    def sent(sender: str | None = None, headers: dict[str, Any] | None = None, body: Any = None, **_: Any) -> None:
        if sender == TASK_NAME and headers is not None:
            ids[body[0][0]] = headers["id"]  # body: (args, kwargs, embed); args[0] is the taskmw id

    signals.before_task_publish.connect(sent, weak=False)
    try:
        yield ids
    finally:
        signals.before_task_publish.disconnect(sent)


def _listener_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("taskmw-celery-finishes")]


@pytest.fixture
def server(worker: Any, redis_server: Redis, finishes: Finishes) -> Iterator[TaskServer]:
    """``TaskServer(backend="celery")`` in this process; closed and checked to leave no thread."""
    s = TaskServer(backend="celery", celery_app=cjobs.make_app(redis_server.url), plugins=[finishes],
                   shutdown_timeout=WAIT)  # fmt: skip
    try:
        yield s
    finally:
        s.close()
        assert not _listener_threads(), "the finish listener outlived close()"


def _wait_for(predicate: Any, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.05)


def _kill_first_attempt(folder: Path, worker: Any) -> None:
    """SIGKILL the pool process of ``worker`` running ``cjobs.hang_first_time(folder)``."""
    _wait_for(lambda: list(folder.glob("attempt-1-*")), "the first attempt started")
    pid = int(next(folder.glob("attempt-1-*")).name.rsplit("-", 1)[1])
    assert pid in pool_pids(worker), "the task did not run in a pool process of the worker"
    os.kill(pid, signal.SIGKILL)


# -- the same calls, run on Celery -----------------------------------------------------


def test_tasks_run_on_the_celery_worker_and_finish_here(server: TaskServer, finishes: Finishes, worker: Any,
                                                        records: Path) -> None:  # fmt: skip
    from taskmw_celery import CeleryTransport

    assert isinstance(server.transport, CeleryTransport) and server.backend == "celery"
    assert taskmw.current_server() is server
    ids = [server.task(cjobs.add, i, 1) for i in range(40)]
    who = server.task(cjobs.whoami)
    assert all(type(i) is int for i in ids) and ids == sorted(set(ids)) and who > ids[-1]
    got = finishes.wait([*ids, who])
    assert [got[i].status for i in ids] == ["ok"] * len(ids)
    assert [got[i].return_value for i in ids] == [i + 1 for i in range(40)]
    pid, ppid = got[who].return_value
    assert ppid == worker.pid and pid in pool_pids(worker), "the task did not run in a pool process of the worker"
    assert got[who].worker_id in (0, 1, 2) and got[who].duration >= 0 and got[who].name == "cjobs.whoami"
    assert all(finishes.count[i] == 1 for i in ids), "a task got more than one finish"
    assert all(name.startswith("taskmw-celery-finishes") for name in finishes.threads)
    seen = {r["task_id"]: r for r in read_records(records, "ontask")}
    assert all(seen[i]["pid"] != os.getpid() for i in [*ids, who]), "on_task did not run in the Celery worker"
    starts = [r for r in read_records(records, "life") if r["event"] == "start"]
    assert {r["pid"] for r in starts} >= {seen[who]["pid"]} and {r["server"] for r in starts} == {"celery"}


def test_finishes_go_to_the_process_that_queued(server: TaskServer, finishes: Finishes, tmp_path: Path) -> None:
    mine = [server.task(cjobs.add, i, 0) for i in range(5)]
    finishes.wait(mine)
    pid = os.fork()
    if pid == 0:  # a process forked from a dispatching one (gunicorn --preload): its own subscription
        code = 1
        try:
            before = set(finishes.events)
            ids = [server.task(cjobs.add, i, 100) for i in range(5)]
            got = finishes.wait(ids)
            result = {"ids": ids, "values": [got[i].return_value for i in ids],
                      "foreign": sorted(set(finishes.events) - before - set(ids))}  # fmt: skip
            (tmp_path / "child.json").write_text(json.dumps(result))
            server.close()
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + WAIT
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked dispatcher did not finish in time")
        time.sleep(0.02)
    assert os.waitstatus_to_exitcode(done[1]) == 0
    child = json.loads((tmp_path / "child.json").read_text())
    assert child["values"] == [i + 100 for i in range(5)] and child["foreign"] == []
    assert min(child["ids"]) > max(mine)  # one counter for every process
    later = [server.task(cjobs.add, 1, 1)]
    finishes.wait(later)  # the child's finishes, long done, never came here
    assert not set(child["ids"]) & set(finishes.events)


def test_an_error_comes_back_error_with_its_traceback(server: TaskServer, finishes: Finishes) -> None:
    task_id = server.task(cjobs.boom, "it broke")
    event = finishes.wait([task_id])[task_id]
    assert event.status == "error" and event.return_value is None
    assert event.error is not None and (event.error.type, event.error.message) == ("ValueError", "it broke")
    assert "cjobs.py" in event.error.traceback and "raise ValueError(message)" in event.error.traceback
    with pytest.raises(TaskFailed) as failed:
        server.taskwait(cjobs.boom, "again", timeout=WAIT)
    assert failed.value.event.error.message == "again"


def test_the_same_pipeline_runs_in_the_worker(server: TaskServer, finishes: Finishes) -> None:
    offset = 5
    assert server.taskwait(lambda x: x + offset, 1, timeout=WAIT) == 6  # a closure: cloudpickle
    assert server.taskwait(Task(cjobs.add, 2, b=3), timeout=WAIT) == 5
    assert server.taskwait(ServiceTask("mailer", "bob", subject="hi"), timeout=WAIT) == "mail to bob: hi"
    assert server.taskwait(cjobs.Signup("ann"), timeout=WAIT) == "welcome ann"
    assert server.taskwait(cjobs.VipSignup("vi"), timeout=WAIT) == "welcome vi"  # MRO: the last listener's value
    receipt = cjobs.deferred_receipt(7)  # queued on current_server(): this server
    assert finishes.wait([receipt])[receipt].return_value.startswith("receipt 7 from pid ")
    assert server.taskwait(cjobs.async_add, 2, 2, timeout=WAIT) == 4
    assert server.taskwait(cjobs.queue_inner, 4, timeout=WAIT) == 50  # a task queuing a task, in the worker
    with pytest.raises(TaskFailed, match="nothing handled the task"):
        server.taskwait(object(), timeout=WAIT)
    with pytest.raises(TaskFailed, match="return value cannot be pickled"):
        server.taskwait(cjobs.return_lock, timeout=WAIT)
    with pytest.raises(TypeError, match="task argument 0"):
        server.task(cjobs.add, threading.Lock(), 1)


def test_taskwait_multi_and_task_async(server: TaskServer, finishes: Finishes) -> None:
    events = server.taskwait_multi([Task(cjobs.add, 1, 1), Task(cjobs.boom, "x"), Task(cjobs.add, 2, 2)],
                                   timeout=WAIT)  # fmt: skip
    assert [e.status if e else None for e in events] == ["ok", "error", "ok"]
    assert [events[0].return_value, events[2].return_value] == [2, 4]  # type: ignore[union-attr]

    loop_threads: list[str] = []

    async def main() -> list[int]:
        loop_threads.append(threading.current_thread().name)
        return list(await asyncio.gather(*(server.task_async(cjobs.add, i, i) for i in range(5))))

    assert asyncio.run(asyncio.wait_for(main(), WAIT)) == [0, 2, 4, 6, 8]


def test_under_asgi_finishes_come_on_the_event_loop(worker: Any, redis_server: Redis) -> None:
    finishes = Finishes()
    server = TaskServer(backend="celery", celery_app=cjobs.make_app(redis_server.url), plugins=[finishes],
                        shutdown_timeout=WAIT)  # fmt: skip

    async def main() -> tuple[list[int], int, str]:
        ids = [server.task(cjobs.add, i, 0) for i in range(5)]  # the first call claims: this loop delivers
        value = await server.task_async(cjobs.add, 20, 1)
        with pytest.raises(RuntimeError, match="task_async"):
            server.taskwait(cjobs.add, 1, 1, timeout=1)
        while not all(i in finishes.events for i in ids):
            await asyncio.sleep(0.01)
        return ids, value, threading.current_thread().name

    try:
        ids, value, loop_thread = asyncio.run(asyncio.wait_for(main(), WAIT))
        assert value == 21 and [finishes.events[i].return_value for i in ids] == list(range(5))
        assert loop_thread in finishes.threads
        assert server.taskwait(cjobs.add, 2, 3, timeout=WAIT) == 5  # the loop is gone: a thread delivers
    finally:
        server.close()
    assert not _listener_threads()


def test_time_limits_and_retries_work_as_locally(server: TaskServer, finishes: Finishes, tmp_path: Path) -> None:
    slow = server.task(Task(cjobs.sleep_for, 60), task_timeout=2)  # Celery's hard time limit kills its process
    flaky = server.task(Task(cjobs.fail_first, str(tmp_path)), retries=2)
    got = finishes.wait([slow, flaky])
    assert got[slow].status == "timeout" and got[slow].error.type.endswith("TimeLimitExceeded"), got[slow]
    assert (got[flaky].status, got[flaky].return_value, got[flaky].attempts) == ("ok", 2, 2), got[flaky]
    assert finishes.count[flaky] == 1


def test_a_killed_pool_process_runs_the_task_again_with_acks_late(
    server: TaskServer, finishes: Finishes, worker: Any, tmp_path: Path
) -> None:
    task_id = server.task(cjobs.hang_first_time, str(tmp_path))
    _kill_first_attempt(tmp_path, worker)
    event = finishes.wait([task_id])[task_id]
    assert (event.status, event.return_value) == ("ok", 2), event
    assert len(list(tmp_path.glob("attempt-*"))) == 2
    _wait_for(lambda: len(pool_pids(worker)) == 2, "the worker replaced its pool process")
    assert finishes.count[task_id] == 1


def test_a_killed_pool_process_finishes_lost_without_acks_late(redis_server: Redis, tmp_path: Path) -> None:
    url = redis_server.url_for(1)  # its own queue: the module's worker (acks_late) serves db 0
    finishes = Finishes()
    with celery_worker(url, tmp_path, acks_late=False) as early:
        with TaskServer(backend="celery", celery_app=cjobs.make_app(url), plugins=[finishes]) as server:
            attempts = tmp_path / "attempts"
            attempts.mkdir()
            task_id = server.task(cjobs.hang_first_time, str(attempts))
            _kill_first_attempt(attempts, early)
            event = finishes.wait([task_id])[task_id]
            assert event.status == "lost" and event.error is not None and event.error.type == "WorkerLost", event
            assert server.taskwait(cjobs.add, 1, 2, timeout=WAIT) == 3  # the worker goes on
        assert len(list(attempts.glob("attempt-*"))) == 1
    life = read_records(tmp_path, "life")
    stopped = {r["pid"] for r in life if r["event"] == "stop"}
    assert stopped and stopped <= {r["pid"] for r in life if r["event"] == "start"}, life


def test_what_celery_stores_becomes_the_right_finish(redis_server: Redis, finishes: Finishes) -> None:
    """Results written straight into the result backend (no worker serves db 2):
    one stored without being published (found by the look-up), Celery's own
    failures, a revoke, and a second result for the same task (dropped)."""
    from billiard.exceptions import WorkerLostError
    from celery import states
    from celery.exceptions import TimeLimitExceeded

    from taskmw import records

    app = cjobs.make_app(redis_server.url_for(2))
    with celery_ids() as sent, TaskServer(backend="celery", celery_app=app, plugins=[finishes],
                                          shutdown_timeout=1) as server:  # fmt: skip
        ok, lost, slow, revoked = (server.task(cjobs.add, 1, 1) for _ in range(4))
        backend = app.backend

        def celery_id(task_id: int) -> str:
            return sent[task_id]

        record = records.FinishRecord(ok, ok, records.OK, 2, None, 0.5, 1).encode()
        meta = {"status": states.SUCCESS, "result": record, "traceback": None, "children": [], "task_id": celery_id(ok)}
        backend.client.set(backend.get_key_for_task(celery_id(ok)), backend.encode(meta))  # not published
        backend.mark_as_failure(celery_id(lost), WorkerLostError("Worker exited prematurely: signal 9 (SIGKILL)."))
        backend.mark_as_failure(celery_id(slow), TimeLimitExceeded(8.0))
        backend.mark_as_revoked(celery_id(revoked))
        got = finishes.wait([ok, lost, slow, revoked])
        assert (got[ok].status, got[ok].return_value, got[ok].worker_id) == ("ok", 2, 1)
        assert got[lost].status == "lost" and got[lost].error.type == "WorkerLost" and got[lost].worker_id == -1
        assert got[slow].status == "timeout" and got[revoked].status == "cancelled"
        backend.store_result(celery_id(ok), record, states.SUCCESS)  # it ran twice
        later = server.task(cjobs.add, 2, 2)
        late_record = records.FinishRecord(later, later, records.OK, 4, None, 0.1, 0).encode()
        backend.store_result(celery_id(later), late_record, states.SUCCESS)
        assert finishes.wait([later])[later].return_value == 4
        assert finishes.count[ok] == 1
        key = backend.get_key_for_task(celery_id(later))
        ttl_ms = server.settings.result_ttl * 1000
        _wait_for(lambda: 0 < backend.client.pttl(key) <= ttl_ms, "a delivered result is kept for result_ttl")
        statuses = {t: (i.state, i.status, i.error.type.rpartition(".")[2] if i.error else None)
                    for t in (ok, lost, slow, revoked) if (i := server.status(t))}  # fmt: skip
        assert statuses == {
            ok: ("done", "ok", None),
            lost: ("done", "lost", "WorkerLost"),
            slow: ("done", "timeout", "TimeLimitExceeded"),
            revoked: ("done", "cancelled", "Revoked"),
        }
        assert backend.client.hget(f"taskmw:task:{lost}", "status") == str(records.LOST).encode()  # written here


def test_finishes_survive_a_redis_restart(tmp_path: Path, finishes: Finishes) -> None:
    """The listener reconnects (and looks pending results up) after its Redis
    went away: a result stored after the restart still arrives, once."""
    from celery import states

    from taskmw import records

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    first = Redis(tmp_path / "a")
    again: Redis | None = None
    try:
        app = cjobs.make_app(first.url)
        with celery_ids() as sent, TaskServer(backend="celery", celery_app=app, plugins=[finishes],
                                              shutdown_timeout=1) as server:  # fmt: skip
            task_id = server.task(cjobs.add, 1, 1)  # no worker: its result is written below
            first.stop()
            again = Redis(tmp_path / "b", port=first.port)
            record = records.FinishRecord(task_id, task_id, records.OK, 2, None, 0.1, 0).encode()
            _wait_for(lambda: _stored(app, sent[task_id], record, states.SUCCESS), "Redis is back")
            assert finishes.wait([task_id])[task_id].return_value == 2
            assert finishes.count[task_id] == 1
    finally:
        for r in (first, again):
            if r is not None and r.proc.poll() is None:
                r.stop()


def _stored(app: Any, celery_id: str, record: bytes, state: str) -> bool:
    try:
        app.backend.store_result(celery_id, record, state)
    except Exception:
        return False
    return True


# -- a gunicorn app written for the local pool -------------------------------------------


def test_gunicorn_app_unchanged_on_celery(worker: Any, redis_server: Redis, records: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip

    monkeypatch.setenv("TASKMW_BACKEND", "celery")
    monkeypatch.setenv("TASKMW_CELERY_APP", "cclient:capp")
    monkeypatch.setenv("TASKMW_CELERY_URL", redis_server.url)
    monkeypatch.setenv("PYTHONPATH", str(cjobs.__file__).rsplit("/", 1)[0])
    queued: dict[int, tuple[int, str]] = {}
    with running_server(lambda port: gunicorn_argv("cweb:app", port, 2, preload=True), tmp_path) as web:
        def queue(i: int) -> dict[str, Any]:
            with web.client() as c:
                return c.get("/queue", params={"a": i, "b": 1}).json()  # type: ignore[no-any-return]

        with concurrent.futures.ThreadPoolExecutor(4) as pool:  # both HTTP workers queue
            for body in pool.map(queue, range(40)):
                assert body["server"] == "celery"
                queued[body["id"]] = (body["pid"], "ok")
        with web.client() as c:
            for m in ("first", "second"):
                body = c.get("/fail", params={"m": m}).json()
                queued[body["id"]] = (body["pid"], "error")
            assert c.get("/wait", params={"a": 2, "b": 40}).json()["value"] == 42
        _wait_for(lambda: set(queued) <= {r["task_id"] for r in read_records(tmp_path, "finish")},
                  "every finish reached gunicorn")  # fmt: skip
        web.snapshot()
    report = web.stop_report
    assert report is not None and not report.problems(), report.problems() if report else None
    got = {r["task_id"]: r for r in read_records(tmp_path, "finish")}
    assert len({pid for pid, _ in queued.values()}) >= 1
    for task_id, (pid, status) in queued.items():
        assert got[task_id]["pid"] == pid, f"task {task_id}'s finish went to another process"
        assert got[task_id]["status"] == status
        if status == "error":
            assert got[task_id]["error"]["type"] == "ValueError" and "boom" in got[task_id]["error"]["traceback"]
    ran = {r["task_id"]: r for r in read_records(records, "ontask")}
    assert all(ran[i]["pid"] in {p for p, _s in worker.known} for i in queued), "a task ran outside the worker"
    assert len(read_records(tmp_path, "finish")) == len(queued) + 1  # + the /wait task; one finish each


# -- settings ----------------------------------------------------------------------------


def test_install_applies_the_settings_that_keep_the_promise() -> None:
    import taskmw_celery

    app = cjobs.make_app("redis://127.0.0.1:1/0")
    run = taskmw_celery.install(app, time_limit=30)
    assert "pickle" in app.conf.accept_content and "json" in app.conf.accept_content
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.broker_transport_options["visibility_timeout"] > 30
    assert (run.name, run.acks_late, run.reject_on_worker_lost, run.time_limit) == ("taskmw.run", True, True, 30)
    assert run.serializer == "pickle" and run.store_errors_even_if_ignored
    with pytest.raises(ValueError, match="already called"):
        taskmw_celery.install(app)
    other = cjobs.make_app("redis://127.0.0.1:1/0")
    other.conf.broker_transport_options = {"visibility_timeout": 10}
    with pytest.raises(ValueError, match="visibility_timeout"):
        taskmw_celery.install(other, time_limit=30)
    early = taskmw_celery.install(cjobs.make_app("redis://127.0.0.1:1/0"), acks_late=False)
    assert (early.acks_late, early.reject_on_worker_lost) == (False, False)


def test_bad_settings_name_the_problem(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from celery import Celery

    monkeypatch.delenv("TASKMW_CELERY_APP", raising=False)
    with pytest.raises(ValueError, match="TASKMW_CELERY_APP"):
        TaskServer(backend="celery")
    with pytest.raises(ValueError, match="Redis result backend"):
        TaskServer(backend="celery", celery_app=Celery("x", broker="redis://127.0.0.1:1/0", set_as_current=False))
    with pytest.raises(TypeError, match="unknown settings: colour"):
        TaskServer(backend="celery", celery_app=cjobs.make_app("redis://127.0.0.1:1/0"), colour="red")
    with caplog.at_level(logging.WARNING, "taskmw_celery"):
        app = cjobs.make_app("redis://127.0.0.1:1/0")
        TaskServer(backend="celery", celery_app=app, listeners=cjobs.LISTENERS).close()
    assert "give them to taskmw_celery.install" in caplog.text
    with pytest.raises(ValueError, match="queue_timeout"):
        TaskServer(backend="celery", celery_app=cjobs.make_app("redis://127.0.0.1:1/0"), queue_timeout=-1)
    app = cjobs.make_app("redis://127.0.0.1:1/0")
    with TaskServer(backend="celery", celery_app=app, queue_bytes=1 << 20, shutdown_timeout=1) as unreachable:
        with pytest.raises(QueueFull, match="could not be reached"):
            unreachable.task(cjobs.add, 1, 2)


def test_the_middleware_takes_the_backend_setting(redis_server: Redis, worker: Any) -> None:
    from taskmw import TaskMiddleware

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [json.dumps(environ["taskmw.server"].taskwait(cjobs.add, 1, 1, timeout=WAIT)).encode()]

    wrapped = TaskMiddleware(app, backend="celery", celery_app=cjobs.make_app(redis_server.url))
    try:
        assert wrapped.server.backend == "celery"
        assert wrapped({"PATH_INFO": "/"}, lambda *a: None) == [b"2"]
    finally:
        wrapped.close()
