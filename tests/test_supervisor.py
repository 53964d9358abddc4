"""The supervisor (:mod:`taskmw.supervisor`): stopping and draining on
``close()``, replacing workers that die, enforcing time limits, and being
replaced itself when it dies. Tests marked ``no_process_left`` count this
process's descendants before and after: none may be left.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import (
    WAIT,
    Finishes,
    FinishLog,
    add,
    alive,
    die,
    in_child,
    local_pool,
    pids_gone,
    pool_processes,
    sleep_then,
    wait_for_file,
    wait_until,
    whoami,
    worker_pids,
    zombies_of,
)

from taskmw import PoolClosed, Task, TaskServer, _proc, supervisor
from taskmw.supervisor import IGNORED_SIGNALS

_PR_SET_CHILD_SUBREAPER = 36

# -- tasks ---------------------------------------------------------------------


def pid_then_sleep(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


async def async_sleep(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "slept"


def sleep_then_touch(seconds: float, path: str) -> str:
    time.sleep(seconds)
    Path(path).touch()
    return path


def touch_then_wait(started: str, gate: str) -> str:
    Path(started).touch()
    return wait_for_file(gate)


def child_body(fn: Callable[[], None]) -> Callable[[], None]:
    """``fn`` for :func:`in_child`, printing its traceback (the child's
    exit code alone says nothing)."""

    def body() -> None:
        try:
            fn()
        except BaseException:
            traceback.print_exc()
            raise

    return body


# -- stop and drain ------------------------------------------------------------------


def test_close_drains_queued_tasks(finishes: FinishLog) -> None:
    server = TaskServer(2, plugins=[finishes])
    pids = pool_processes(server)
    ids = [server.task(sleep_then, 0.001, i) for i in range(200)]
    server.close()
    assert pids_gone(pids)
    assert [finishes.deliveries[i][0].return_value for i in ids] == list(range(200))
    with pytest.raises(PoolClosed):
        server.task(add, 1, 1)


def test_close_right_after_start_still_runs_the_task() -> None:
    """A SIGTERM that reaches the supervisor before its loop runs must wait,
    pending, and not kill it: the queued task still runs (a regression: this
    lost the task in a few percent of tries)."""
    for _ in range(100):
        finishes = FinishLog()
        server = TaskServer(1, plugins=[finishes])
        pids = pool_processes(server)
        task_id = server.task(add, 2, 3)
        server.close()
        assert pids_gone(pids)
        assert [e.return_value for e in finishes.deliveries[task_id]] == [5]


def test_close_cancels_what_cannot_run_in_time(finishes: FinishLog) -> None:
    server = TaskServer(1, plugins=[finishes], shutdown_timeout=0.3)
    pids = pool_processes(server)
    ids = [server.task(sleep_then, 0.1) for _ in range(30)]
    server.close()
    assert pids_gone(pids)
    statuses = [finishes.deliveries[i][0].status for i in ids]
    assert all(len(finishes.deliveries[i]) == 1 for i in ids)
    assert statuses[0] == "ok" and statuses[-1] == "cancelled"
    assert set(statuses) <= {"ok", "lost", "cancelled"}


# -- workers dying ----------------------------------------------------------------------


def test_a_killed_worker_is_replaced_and_its_task_finishes_lost(tmp_path: Path, finishes: FinishLog) -> None:
    server = TaskServer(1, plugins=[finishes])
    try:
        victim, _ = server.taskwait(whoami, timeout=WAIT)
        task_id = server.task(wait_for_file, str(tmp_path / "never"))
        assert wait_until(lambda: server.stats()["workers"][0]["task_id"] == task_id)  # the worker took it
        os.kill(victim, signal.SIGKILL)
        ev = finishes.wait([task_id])[task_id]
        assert ev.status == "lost" and ev.error is not None and "SIGKILL" in ev.error.message
        pid, _ = server.taskwait(whoami, timeout=WAIT)
        assert pid != victim
    finally:
        server.close()


@pytest.mark.usefixtures("no_process_left")
@pytest.mark.parametrize("how", ["sigkill", "exit", "segfault"])
def test_a_worker_dying_mid_task_is_replaced_and_its_task_finishes_lost(how: str) -> None:
    finishes = FinishLog()
    with TaskServer(2, plugins=[finishes]) as server:
        before = set(worker_pids(server))
        dead = server.task(die, how)
        event = finishes.wait([dead])[dead]
        assert event.status == "lost"
        assert event.error is not None and event.error.type == "WorkerLost"
        assert len(set(worker_pids(server)) - before) == 1  # one replaced, the other untouched
        assert server.taskwait(add, 2, 2, timeout=WAIT) == 4  # the pool keeps serving
        assert server.stats()["workers"][finishes.deliveries[dead][0].worker_id]["restarts"] == 1
    assert len(finishes.deliveries[dead]) == 1


# -- time limits ---------------------------------------------------------------


@pytest.mark.usefixtures("no_process_left")
def test_a_sync_task_over_its_limit_finishes_timeout_and_its_worker_is_replaced() -> None:
    finishes = Finishes()
    with TaskServer(2, plugins=[finishes]) as server:
        slow = server.task(Task(pid_then_sleep, 30), task_timeout=0.5)
        quick = [server.task(add, i, i) for i in range(20)]
        fine = server.task(Task(add, 1, 1), task_timeout=10)
        got = finishes.wait([slow, fine, *quick])
        assert got[slow].status == "timeout"
        assert got[slow].error is not None and "time limit of 0.5s" in got[slow].error.message
        assert got[fine].return_value == 2 and [got[i].return_value for i in quick] == [2 * i for i in range(20)]
        assert server.stats()["totals"]["timeout"] == 1
        assert wait_until(lambda: all(w["state"] == "idle" for w in server.stats()["workers"]))


@pytest.mark.usefixtures("no_process_left")
def test_the_pool_default_time_limit_and_async_tasks() -> None:
    finishes = Finishes()
    with TaskServer(1, plugins=[finishes], task_timeout=0.3) as server:
        pid = server.taskwait(pid_then_sleep, 0, timeout=WAIT)
        ids = [server.task(async_sleep, 10), server.task(async_sleep, 0.01)]
        got = finishes.wait(ids)  # (a sync timeout kills the worker: its async tasks in flight would be lost)
        ids.append(server.task(pid_then_sleep, 10))
        got = finishes.wait(ids)
        assert [got[i].status for i in ids] == ["timeout", "ok", "timeout"]
        assert "cancelled" in got[ids[0]].error.message  # type: ignore[union-attr]
        assert server.taskwait(pid_then_sleep, 0, timeout=WAIT) != pid  # the sync timeout replaced the worker
        assert server.stats()["totals"]["timeout"] == 2


class _StallOnTimeLimit(logging.Handler):
    """In the supervisor only: when it logs that a task passed its time limit,
    hold it there until ``moved_on`` exists (the worker took its next task)
    or the worker named in the message is dead (bounded)."""

    def __init__(self, moved_on: Path) -> None:
        super().__init__()
        self.moved_on = moved_on
        self.test_pid = os.getpid()

    def emit(self, record: logging.LogRecord) -> None:
        if os.getpid() != self.test_pid and "time limit" in record.getMessage():
            pid = record.args[1]  # type: ignore[index]
            wait_until(lambda: self.moved_on.exists() or not alive(pid), 5.0, interval=0.005)


@pytest.mark.usefixtures("no_process_left")
def test_a_worker_that_moved_on_is_not_killed_for_its_last_task(tmp_path: Path) -> None:
    """The supervisor decides to kill a worker over a task, and that worker
    finishes the task and takes the next one before the kill (here: the
    supervisor's log handler is slow). The kill must be for the task it
    decided on, or not at all: the next task never finishes ``lost``."""
    started, gate = tmp_path / "b-started", tmp_path / "gate"
    stall = _StallOnTimeLimit(started)
    logger = logging.getLogger("taskmw.supervisor")
    logger.addHandler(stall)
    finishes = Finishes()
    try:
        with TaskServer(1, plugins=[finishes]) as server:
            a = server.task(Task(sleep_then_touch, 0.6, str(tmp_path / "a-done")), task_timeout=0.3)
            b = server.task(touch_then_wait, str(started), str(gate))
            assert wait_until(started.exists)
            gate.touch()
            got = finishes.wait([a, b])
            assert got[b].status == "ok", got[b].error
            assert got[a].status == "timeout"
    finally:
        logger.removeHandler(stall)


# -- the supervisor dying -------------------------------------------------------------


@pytest.mark.usefixtures("no_process_left")
def test_a_dead_supervisor_is_replaced_and_task_says_so_meanwhile() -> None:
    with TaskServer(2) as server:
        assert server.taskwait(add, 1, 1, timeout=WAIT) == 2
        old = server.supervisor_pid
        os.kill(old, signal.SIGKILL)
        errors: list[str] = []

        def served_by_a_new_supervisor() -> bool:
            try:
                assert server.taskwait(add, 2, 3, timeout=WAIT) == 5
                return server.supervisor_pid != old
            except PoolClosed as exc:
                errors.append(str(exc))
                return False

        wait_until(served_by_a_new_supervisor, WAIT, interval=0.005)
        assert server.supervisor_pid != old and alive(server.supervisor_pid)
        assert all("supervisor died and is being restarted" in e for e in errors)
        assert [server.taskwait(add, i, 1, timeout=WAIT) for i in range(10)] == list(range(1, 11))
        pids = pool_processes(server)
    assert pids_gone(pids)


def _busy_worker(server: TaskServer, task_id: int) -> int:
    """The pid of the worker running ``task_id``, once one does."""
    running = [0]

    def found() -> bool:
        for w in server.stats()["workers"]:
            if w["task_id"] == task_id and w["state"] == "busy":
                running[0] = w["pid"]
        return bool(running[0])

    assert wait_until(found)
    return running[0]


def _kill_supervisor(server: TaskServer) -> int:
    """SIGKILL the supervisor and wait until a new one serves; returns the old pid."""
    old = server.supervisor_pid
    assert old is not None
    os.kill(old, signal.SIGKILL)

    def served() -> bool:
        try:
            return server.supervisor_pid != old and server.taskwait(add, 0, 0, timeout=WAIT) == 0
        except PoolClosed:
            return False

    assert wait_until(served, interval=0.005)
    return old


@pytest.mark.usefixtures("no_process_left")
def test_an_orphans_task_keeps_its_time_limit() -> None:
    """A task with ``timeout=1`` running when the supervisor dies still
    finishes ``timeout`` at its limit (its worker, orphaned, is killed), not
    ``ok`` once it is done."""
    finishes = Finishes()
    with TaskServer(2, plugins=[finishes]) as server:
        queued = time.monotonic()
        slow = server.task(Task(pid_then_sleep, 8), task_timeout=1)
        orphan = _busy_worker(server, slow)
        _kill_supervisor(server)
        event = finishes.wait([slow], 5)[slow]
        assert event.status == "timeout" and time.monotonic() - queued < 5
        assert pids_gone({orphan})


@pytest.mark.usefixtures("no_process_left")
def test_an_orphan_that_dies_finishes_its_task_lost(tmp_path: Path) -> None:
    finishes = FinishLog()
    with TaskServer(2, plugins=[finishes]) as server:
        held = server.task(wait_for_file, str(tmp_path / "never"))
        orphan = _busy_worker(server, held)
        _kill_supervisor(server)
        os.kill(orphan, signal.SIGKILL)
        event = finishes.wait([held], 5)[held]
        assert event.status == "lost" and event.error is not None and event.error.type == "WorkerLost"
        assert server.taskwait(add, 1, 2, timeout=WAIT) == 3
        assert wait_until(lambda: all(w["state"] == "idle" for w in server.stats()["workers"]))
    assert len(finishes.deliveries[held]) == 1


@pytest.mark.usefixtures("no_process_left")
def test_close_right_after_a_supervisor_death_waits_for_its_orphans(tmp_path: Path) -> None:
    """``close()`` while the pool has no supervisor: the orphaned worker's
    task runs to its end (within ``shutdown_timeout``), the queued tasks
    still run, and no process is left when ``close()`` returns."""
    finishes = FinishLog()
    gate = tmp_path / "gate"
    server = TaskServer(2, plugins=[finishes])
    pids = pool_processes(server)
    running = server.task(wait_for_file, str(gate))
    orphan = _busy_worker(server, running)
    queued = [server.task(add, i, 1) for i in range(20)]
    os.kill(server.supervisor_pid, signal.SIGKILL)  # type: ignore[arg-type]
    closer = threading.Thread(target=server.close)
    closer.start()
    assert not wait_until(lambda: not closer.is_alive(), 1.0)  # it waits for the orphan's task
    assert alive(orphan)
    gate.touch()
    closer.join(WAIT)
    assert not closer.is_alive()
    assert not any(alive(p) for p in pids | {orphan})
    got = finishes.wait([running, *queued], 0)
    assert got[running].status == "ok" and [got[i].return_value for i in queued] == [i + 1 for i in range(20)]


@pytest.mark.usefixtures("no_process_left")
def test_close_right_after_a_supervisor_death_stops_an_orphan_past_shutdown_timeout(tmp_path: Path) -> None:
    finishes = FinishLog()
    server = TaskServer(1, plugins=[finishes], shutdown_timeout=0.5)
    stuck = server.task(wait_for_file, str(tmp_path / "never"))
    orphan = _busy_worker(server, stuck)
    os.kill(server.supervisor_pid, signal.SIGKILL)  # type: ignore[arg-type]
    started = time.monotonic()
    server.close()
    assert time.monotonic() - started < 10 and not alive(orphan)
    event = finishes.wait([stuck], 0)[stuck]
    assert event.status == "lost"


# -- containers: a builder that is PID 1 or a subreaper -------------------------------


def orphans_of_a_reaping_builder(gate: str, rounds: int = 5) -> None:
    """In a builder that orphans are re-parented to (PID 1 of a container, a
    child subreaper): the supervisor dies ``rounds`` times, each time while
    a worker holds a task, and that orphan is then killed. Each held task
    finishes ``lost``, no zombie is left, and 100 tasks still run."""
    finishes = FinishLog()
    with TaskServer(2, plugins=[finishes]) as server:
        held = []
        for _ in range(rounds):
            task_id = server.task(wait_for_file, gate)
            orphan = _busy_worker(server, task_id)
            _kill_supervisor(server)
            os.kill(orphan, signal.SIGKILL)
            held.append(task_id)
        got = finishes.wait(held, WAIT / 2)
        assert [got[i].status for i in held] == ["lost"] * rounds
        ids = [server.task(add, i, 1) for i in range(100)]
        got = finishes.wait(ids, WAIT / 2)
        assert [got[i].return_value for i in ids] == [i + 1 for i in range(100)]
        assert wait_until(lambda: not zombies_of(os.getpid()), 5), zombies_of(os.getpid())
    assert not zombies_of(os.getpid())
    assert all(len(finishes.deliveries[i]) == 1 for i in held + ids)


@pytest.mark.usefixtures("no_process_left")
def test_a_subreaper_builder_reaps_orphans_and_frees_their_slots(tmp_path: Path) -> None:
    def builder() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        orphans_of_a_reaping_builder(str(tmp_path / "never"))

    assert in_child(child_body(builder), WAIT * 2) == 0


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    done = subprocess.run(["unshare", "-fp", "--mount-proc", "true"], capture_output=True, timeout=WAIT)
    return done.returncode == 0


@pytest.mark.usefixtures("no_process_left")
@pytest.mark.skipif(not _unshare_works(), reason="needs unshare -fp --mount-proc (root, or user namespaces)")
def test_a_pid_1_builder_reaps_orphans_and_frees_their_slots(tmp_path: Path) -> None:
    """The app runs as PID 1 of its container (``docker run ... gunicorn``):
    every orphan is its child."""
    script = (
        "import os, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "assert os.getpid() == 1\n"
        "import test_supervisor\n"
        f"test_supervisor.orphans_of_a_reaping_builder({str(tmp_path / 'never')!r})\n"
    )
    done = subprocess.run(
        ["unshare", "-fp", "--mount-proc", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=WAIT * 2,
    )
    assert done.returncode == 0, done.stderr[-3000:]


# -- signals to the process group --------------------------------------------


@pytest.mark.usefixtures("no_process_left")
@pytest.mark.parametrize(
    "sigs",
    [(signal.SIGHUP,), (signal.SIGUSR1,), (signal.SIGQUIT,), IGNORED_SIGNALS],
    ids=["HUP", "USR1", "QUIT", "every-ignored"],
)
def test_a_signal_to_the_process_group_costs_no_task(sigs: tuple[signal.Signals, ...]) -> None:
    """``kill -HUP -PGID`` (a terminal hang-up), USR1, QUIT, and every other
    signal the pool ignores: an app server handles them in its master; they
    reach the pool's processes too. The running tasks still finish, once
    each, and the pool keeps serving with the same processes."""

    def builder() -> None:
        os.setpgid(0, 0)  # a group of its own: the builder (handling sigs, as gunicorn does) and its pool
        for sig in sigs:
            signal.signal(sig, lambda *_: None)
        finishes = FinishLog()
        with TaskServer(2, plugins=[finishes]) as server:
            before = pool_processes(server) | set(worker_pids(server))
            ids = [server.task(sleep_then, 0.5, i) for i in range(2)] + [server.task(add, i, 1) for i in range(20)]
            assert wait_until(lambda: all(w["state"] == "busy" for w in server.stats()["workers"]))
            for sig in sigs:
                os.killpg(0, sig)
            got = finishes.wait(ids, WAIT / 2)  # (in_child's bound is WAIT)
            assert [got[i].status for i in ids] == ["ok"] * len(ids), [got[i].error for i in ids]
            assert server.taskwait(add, 2, 2, timeout=WAIT) == 4
            assert pool_processes(server) | set(worker_pids(server)) == before
        assert all(len(finishes.deliveries[i]) == 1 for i in ids)

    assert in_child(child_body(builder)) == 0


# -- fork() failing ------------------------------------------------------------------


def _tasks_of_uid(uid: int) -> int:
    """How many tasks (threads) run with real uid ``uid``: what RLIMIT_NPROC counts."""
    n = 0
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if int(fields["Uid"].split()[0]) == uid:
            n += int(fields["Threads"])
    return n


def _unused_uid() -> int:
    used = set()
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            used.add(os.stat(f"/proc/{entry}").st_uid)
        except OSError:
            pass
    return next(uid for uid in range(47000, 48000) if uid not in used)


@pytest.mark.usefixtures("no_process_left")
@pytest.mark.skipif(os.geteuid() != 0, reason="switches to a uid of its own (root ignores RLIMIT_NPROC)")
@pytest.mark.parametrize("who", ["supervisor-forks-workers", "builder-forks-supervisor"])
def test_fork_failing_is_retried_with_backoff_one_line_each(who: str, tmp_path: Path) -> None:
    """RLIMIT_NPROC reached (a uid of its own, not root: root ignores the
    limit), then the supervisor is killed. The builder's next fork (or, at a
    limit one higher, the new supervisor's fork of a worker) fails: it is
    tried again after a capped exponential backoff, each attempt one log
    line (no traceback, no hot loop); once the limit is lifted the pool
    serves again."""
    log_path = tmp_path / "log"
    uid = _unused_uid()

    def builder() -> None:
        log_file = open(log_path, "a", buffering=1)  # opened as root: the child writes and reads it as uid
        reader = open(log_path)

        def log_text() -> str:
            reader.seek(0)
            return reader.read()

        handler = logging.StreamHandler(log_file)
        handler.setFormatter(logging.Formatter("%(created).3f %(process)d %(name)s %(message)s"))
        logging.getLogger("taskmw").addHandler(handler)
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        # No installed plugins: under this uid some of their imports (the interpreter lives in
        # root's home) may fail, and the log this test counts would have their tracebacks.
        with TaskServer(2, entrypoints=False) as server:
            assert server.taskwait(add, 1, 1, timeout=WAIT) == 2  # its channel reader thread runs
            worker_pids(server)
            soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
            limit = _tasks_of_uid(uid) - (1 if who == "builder-forks-supervisor" else 0)
            resource.setrlimit(resource.RLIMIT_NPROC, (limit, hard))  # inherited by the next supervisor
            os.kill(server.supervisor_pid, signal.SIGKILL)

            def attempts() -> list[float]:
                lines = log_text().splitlines()
                return [float(line.split()[0]) for line in lines if "could not fork" in line or "died" in line]

            assert wait_until(lambda: len(attempts()) >= 6, WAIT / 2), log_text()
            times = attempts()
            assert times[5] - times[0] > 1.0, log_text()  # 0.1 + 0.2 + 0.4 + 0.8 s of backoff at least
            assert "Traceback" not in log_text()
            resource.setrlimit(resource.RLIMIT_NPROC, (soft, hard))
            if _proc.alive(server.supervisor_pid):
                resource.prlimit(server.supervisor_pid, resource.RLIMIT_NPROC, (soft, hard))
            assert wait_until(lambda: server.stats()["supervisor_pid"] and _proc.alive(server.supervisor_pid))
            assert server.taskwait(add, 2, 3, timeout=WAIT) == 5
        assert len(attempts()) < 15

    assert in_child(child_body(builder)) == 0, log_path.read_text()


@pytest.mark.usefixtures("no_process_left")
def test_a_crash_looping_supervisor_is_restarted_with_backoff(tmp_path: Path) -> None:
    """A supervisor that dies right after each start (here: its code raises)
    is restarted after a capped exponential backoff, not in a hot loop."""
    log_path = tmp_path / "log"

    def builder() -> None:
        handler = logging.FileHandler(log_path)
        handler.setFormatter(logging.Formatter("%(created).3f %(process)d %(name)s %(message)s"))
        logging.getLogger("taskmw.local").addHandler(handler)
        with TaskServer(1) as server:
            worker_pids(server)
            run = supervisor._Supervisor.run
            supervisor._Supervisor.run = lambda self: 1 // 0  # type: ignore[assignment,method-assign]

            def deaths() -> list[float]:
                return [float(line.split()[0]) for line in log_path.read_text().splitlines() if "died" in line]

            os.kill(server.supervisor_pid, signal.SIGKILL)
            assert wait_until(lambda: len(deaths()) >= 5, WAIT / 2), log_path.read_text()
            supervisor._Supervisor.run = run  # type: ignore[method-assign]
            times = deaths()
            assert times[4] - times[0] > 0.5, log_path.read_text()  # 0.1 + 0.2 + 0.4 s of backoff at least
            assert wait_until(lambda: not local_pool(server).state)  # restarted, after the last backoff
            assert server.taskwait(add, 2, 3, timeout=WAIT) == 5
        assert len(deaths()) < 10

    assert in_child(child_body(builder)) == 0, log_path.read_text()
