"""Delayed tasks (``delay=``, ``eta=``) held by the pool, and the option API
(``Task`` options, ``@taskmw.task(...)`` defaults, ``.options()``, ``.apply()``)."""

from __future__ import annotations

import datetime
import os
import signal
import time
from pathlib import Path

import pytest
from helpers import WAIT, FinishLog, add, die, fork_call, local_pool, reap, wait_until

import taskmw
from taskmw import Task, TaskFailed, TaskServer, delayed

LATE = 1.0
"""Seconds a delayed task may start after its due time in these tests (the
machine is shared; measured lateness is a few ms when idle)."""


def stamp(path: str) -> float:
    """Append the time it runs to ``path`` (one line a run); returns it."""
    now = time.time()
    with open(path, "a") as f:
        f.write(f"{now!r}\n")
    return now


def runs(path: Path) -> list[float]:
    return [float(line) for line in path.read_text().split()] if path.exists() else []


def fail_first(path: str) -> str:
    """Fails the first time (it leaves a mark), then returns ``"ok"``."""
    if not os.path.exists(path):
        Path(path).write_text("tried")
        raise RuntimeError("first run fails")
    return "ok"


@taskmw.task(retries=2, task_timeout=10, retry_backoff=0.05)
def flaky(path: str) -> str:
    return fail_first(path)


@taskmw.task
def slow(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


@taskmw.task(retries=0, timeout=0.3)  # timeout= is the time limit where nothing waits (task_timeout= too)
def limited(seconds: float) -> str:
    return slow(seconds)


def takes_timeout(x: int, timeout: float = 0.0) -> float:
    return x + timeout


def held_ids(server: TaskServer) -> list[int]:
    return delayed.held(local_pool(server).scheduled_dir)


# -- delay and eta ---------------------------------------------------------------------------


def test_delay_runs_at_its_due_time_and_is_scheduled_until_then(pool: TaskServer, tmp_path: Path) -> None:
    out = tmp_path / "ran"
    queued = time.time()
    task_id = pool.task(Task(stamp, str(out)), delay=1.0)
    info = pool.status(task_id)
    assert info.state == "scheduled" and info.scheduled_for == pytest.approx(queued + 1.0, abs=0.05)
    assert info.name.endswith("stamp")
    assert [i.task_id for i in pool.tasks()["scheduled"]] == [task_id]
    assert wait_until(lambda: runs(out), WAIT)  # not exists(): the file is there before its line
    (ran,) = runs(out)
    assert info.scheduled_for - 0.005 <= ran <= info.scheduled_for + LATE
    assert pool.result(task_id, timeout=WAIT) == ran
    done = pool.status(task_id)
    assert done.state == "done" and done.status == "ok" and done.scheduled_for == info.scheduled_for
    assert pool.tasks()["scheduled"] == []


def test_a_delayed_task_is_listed_scheduled_while_a_worker_hands_it_to_the_scheduler(
    pool: TaskServer, tmp_path: Path
) -> None:
    """Between a worker taking a delayed task out of the queue and its file
    reaching the scheduler, tasks() still lists it (it read neither the
    queue nor the scheduler's files then); each try hits that window often."""
    for _ in range(30):
        task_id = pool.task(Task(stamp, str(tmp_path / "ran")), delay=60.0)
        assert task_id in [i.task_id for i in pool.tasks()["scheduled"]]
        assert pool.cancel(task_id)


def test_eta_is_an_aware_datetime(pool: TaskServer, tmp_path: Path) -> None:
    out = tmp_path / "ran"
    eta = datetime.datetime.now(datetime.timezone(datetime.timedelta(hours=5))) + datetime.timedelta(seconds=0.6)
    task_id = pool.task(Task(stamp, str(out)), eta=eta)
    assert pool.status(task_id).scheduled_for == pytest.approx(eta.timestamp())
    assert pool.result(task_id, timeout=WAIT) >= eta.timestamp() - 0.005
    with pytest.raises(TypeError, match="aware datetime.*naive"):
        pool.task(Task(add, 1, 2), eta=datetime.datetime.now() + datetime.timedelta(seconds=5))
    with pytest.raises(TypeError, match="delay= or eta=, not both"):
        pool.task(Task(add, 1, 2), delay=1, eta=eta)
    with pytest.raises(ValueError, match="delay must be a number of seconds >= 0"):
        pool.task(Task(add, 1, 2), delay=-1)
    with pytest.raises(ValueError, match="delay must be a number of seconds >= 0"):
        pool.task(Task(add, 1, 2), delay=datetime.timedelta(seconds=-1))


def test_delay_takes_a_timedelta_as_every_does(pool: TaskServer) -> None:
    queued = time.time()
    task_id = pool.task(Task(add, 1, 2), delay=datetime.timedelta(minutes=10))
    assert pool.status(task_id).scheduled_for == pytest.approx(queued + 600, abs=0.5)
    assert pool.cancel(task_id)
    started = time.monotonic()
    assert pool.taskwait(Task(add, 2, 3), delay=datetime.timedelta(seconds=0.3), timeout=WAIT) == 5
    assert time.monotonic() - started >= 0.29


def test_taskwait_waits_for_a_delayed_task(pool: TaskServer) -> None:
    started = time.monotonic()
    assert pool.taskwait(Task(add, 2, 3), delay=0.3, timeout=WAIT) == 5
    assert time.monotonic() - started >= 0.29


def test_taskwait_multi_takes_the_options_for_each(pool: TaskServer) -> None:
    started = time.monotonic()
    events = pool.taskwait_multi([Task(add, 1, 1), Task(slow, 30)], timeout=WAIT, delay=0.3, task_timeout=2)
    assert [e.status for e in events if e is not None] == ["ok", "timeout"]
    assert time.monotonic() - started >= 0.29


def test_delayed_task_runs_after_the_queuing_process_exits(pool: TaskServer, tmp_path: Path) -> None:
    out, ids = tmp_path / "ran", tmp_path / "id"

    def queue_and_exit() -> None:  # like an HTTP worker that is stopped right after queuing
        task_id = pool.task(Task(stamp, str(out)), delay=0.8)
        ids.write_text(str(task_id))
        os._exit(0)  # no close(), no atexit

    assert reap(fork_call(queue_and_exit)) == 0
    task_id = int(ids.read_text())
    assert pool.status(task_id).state == "scheduled"
    assert wait_until(lambda: out.exists(), WAIT)
    assert wait_until(lambda: pool.status(task_id).state == "done", WAIT)
    assert pool.status(task_id).status == "ok" and len(runs(out)) == 1
    assert pool.status(task_id).finished_at >= pool.status(task_id).scheduled_for


# -- cancel, close, reload, a supervisor's death ------------------------------------------------


def test_cancel_a_scheduled_task(pool: TaskServer, finishes: FinishLog, tmp_path: Path) -> None:
    out = tmp_path / "ran"
    soon = pool.task(Task(stamp, str(out)), delay=1.0)  # cancelled at once: maybe still in the queue
    held = pool.task(Task(stamp, str(out)), delay=1.0)
    assert wait_until(lambda: held in held_ids(pool), WAIT)  # the scheduler holds it
    assert pool.cancel(soon) and pool.cancel(held)
    for task_id in (soon, held):
        info = pool.status(task_id)
        assert info.state == "done" and info.status == "cancelled"
    assert not pool.cancel(held)  # finished already
    assert wait_until(lambda: soon in finishes.deliveries and held in finishes.deliveries, WAIT)
    time.sleep(1.5)  # past their due time: they never run
    assert not out.exists()
    for task_id in (soon, held):
        assert [e.status for e in finishes.deliveries[task_id]] == ["cancelled"]
    assert held_ids(pool) == []


def test_cancel_of_a_scheduled_task_from_another_process(pool: TaskServer, finishes: FinishLog) -> None:
    task_id = pool.task(Task(add, 1, 1), delay=30)
    assert wait_until(lambda: task_id in held_ids(pool), WAIT)
    assert reap(fork_call(lambda: None if pool.cancel(task_id) else os._exit(3))) == 0
    assert wait_until(lambda: task_id in finishes.deliveries, WAIT)
    assert [e.status for e in finishes.deliveries[task_id]] == ["cancelled"]


def test_cancel_after_the_queuing_process_exited(pool: TaskServer, tmp_path: Path) -> None:
    out, ids = tmp_path / "ran", tmp_path / "id"

    def queue_and_exit() -> None:
        ids.write_text(str(pool.task(Task(stamp, str(out)), delay=1.0)))
        os._exit(0)

    assert reap(fork_call(queue_and_exit)) == 0
    task_id = int(ids.read_text())
    assert wait_until(lambda: task_id in held_ids(pool), WAIT)
    assert pool.cancel(task_id)
    assert wait_until(lambda: held_ids(pool) == [], WAIT)  # the supervisor finished it (its finish dropped)
    info = pool.status(task_id)
    assert (info.state, info.status) == ("done", "cancelled")
    time.sleep(max(0.0, info.scheduled_for + 0.5 - time.time()))
    assert not out.exists()


def test_close_cancels_the_scheduled_tasks(tmp_path: Path) -> None:
    log = FinishLog()
    server = TaskServer(1, plugins=[log], shutdown_timeout=5.0)
    later = server.task(Task(stamp, str(tmp_path / "later")), delay=60)
    now = server.task(Task(add, 1, 2))
    assert wait_until(lambda: later in held_ids(server), WAIT)
    unheld = server.task(Task(stamp, str(tmp_path / "later")), delay=60)  # maybe still in the queue
    server.close()
    assert [e.status for e in log.deliveries[later]] == ["cancelled"]
    assert [e.status for e in log.deliveries[unheld]] == ["cancelled"]
    assert [e.status for e in log.deliveries[now]] == ["ok"]
    assert "pool stopped" in log.deliveries[later][0].error.message


def test_reload_keeps_scheduled_tasks(pool: TaskServer, tmp_path: Path) -> None:
    out = tmp_path / "ran"
    task_id = pool.task(Task(stamp, str(out)), delay=1.0)
    assert wait_until(lambda: task_id in held_ids(pool), WAIT)
    pool.reload()
    assert pool.result(task_id, timeout=WAIT) and len(runs(out)) == 1


def test_scheduled_tasks_survive_a_supervisor_sigkill_and_run_once(
    pool: TaskServer, finishes: FinishLog, tmp_path: Path
) -> None:
    outs = [tmp_path / f"ran-{i}" for i in range(6)]
    ids = [pool.task(Task(stamp, str(out)), delay=1.0 + 0.1 * i) for i, out in enumerate(outs)]
    assert wait_until(lambda: set(ids) <= set(held_ids(pool)), WAIT)
    first = pool.supervisor_pid
    os.kill(first, signal.SIGKILL)
    assert wait_until(lambda: pool.supervisor_pid != first, WAIT)
    assert wait_until(lambda: all(out.exists() for out in outs), WAIT)
    assert wait_until(lambda: all(task_id in finishes.deliveries for task_id in ids), WAIT)
    time.sleep(0.5)  # a second run, or a second finish, would come by now
    assert [len(runs(out)) for out in outs] == [1] * 6
    assert [[e.status for e in finishes.deliveries[t]] for t in ids] == [["ok"]] * 6


def test_supervisor_sigkilled_while_due_tasks_are_released_runs_each_once(
    pool: TaskServer, finishes: FinishLog, tmp_path: Path
) -> None:
    """Kill the supervisor again and again while delayed tasks come due: a
    new supervisor pushes again what the dead one may have pushed; each
    still runs once."""
    outs = [tmp_path / f"ran-{i}" for i in range(20)]
    ids = [pool.task(Task(stamp, str(out)), delay=0.5 + 0.05 * i) for i, out in enumerate(outs)]
    for _ in range(3):
        time.sleep(0.3)
        pid = pool.supervisor_pid
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda pid=pid: pool.supervisor_pid != pid and not pool.closed, WAIT)
    assert wait_until(lambda: all(task_id in finishes.deliveries for task_id in ids), WAIT)
    time.sleep(0.5)
    for task_id, out in zip(ids, outs, strict=True):
        statuses = [e.status for e in finishes.deliveries[task_id]]
        assert len(statuses) == 1, (task_id, statuses)
        assert len(runs(out)) == (1 if statuses == ["ok"] else 0), (task_id, statuses)


def test_a_delayed_task_that_kills_its_worker_finishes_lost_once(pool: TaskServer, finishes: FinishLog) -> None:
    task_id = pool.task(Task(die, "sigkill"), delay=0.3)
    after = pool.task(Task(add, 1, 1), delay=0.6)
    assert wait_until(lambda: task_id in finishes.deliveries and after in finishes.deliveries, WAIT)
    time.sleep(0.3)
    assert [e.status for e in finishes.deliveries[task_id]] == ["lost"]
    assert [e.status for e in finishes.deliveries[after]] == ["ok"]
    assert pool.status(task_id).status == "lost"


def test_a_delayed_task_with_retries(pool: TaskServer, tmp_path: Path) -> None:
    task_id = pool.task(Task(fail_first, str(tmp_path / "mark")), delay=0.2, retries=1)
    assert pool.result(task_id, timeout=WAIT) == "ok"
    assert pool.status(task_id).attempts == 2


# -- the option API ----------------------------------------------------------------------------


def test_option_names_never_reach_a_plain_callable_that_lacks_them(pool: TaskServer) -> None:
    with pytest.raises(TypeError, match=r"got timeout= for add.*Task\(add, \*args, \*\*kwargs\), task_timeout="):
        pool.task(add, 1, 2, timeout=10)
    with pytest.raises(
        TypeError,
        match=r"^taskwait\(\) got delay= for add.*server.taskwait\(Task\(add, \*args, \*\*kwargs\), delay=\.\.\.\)",
    ):
        pool.taskwait(add, 1, 2, delay=5, timeout=WAIT)
    assert pool.taskwait(takes_timeout, 1, timeout=WAIT) == 1  # taskwait's timeout= is the wait
    assert pool.result(pool.task(takes_timeout, 1, timeout=2.5), timeout=WAIT) == 3.5  # its own parameter
    with pytest.raises(TypeError, match=r"both timeout= and task_timeout="):
        pool.task(Task(add, 1, 2), timeout=10, task_timeout=10)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['countdown'\]"):
        pool.task(Task(add, 1, 2), countdown=10)


def test_task_timeout_option(pool: TaskServer) -> None:
    for option in ("task_timeout", "timeout"):  # where task() does not wait, timeout= is the limit too
        task_id = pool.task(Task(slow, 30), **{option: 0.3})
        with pytest.raises(TaskFailed) as failed:
            pool.result(task_id, timeout=WAIT)
        assert failed.value.event.status == "timeout"
    with pytest.raises(TaskFailed) as waited:
        pool.taskwait(Task(slow, 30), task_timeout=0.3, timeout=WAIT)
    assert waited.value.event.status == "timeout"


def test_decorator_defaults_options_and_apply(pool: TaskServer, tmp_path: Path) -> None:
    assert pool.result(flaky.delay(str(tmp_path / "a")), timeout=WAIT) == "ok"  # retries=2 from the decorator
    assert pool.status(flaky.delay(str(tmp_path / "a"))).attempts == 1
    first = pool.task(flaky, str(tmp_path / "b"))  # the defaults apply to server.task(fn, ...) too
    assert pool.result(first, timeout=WAIT) == "ok" and pool.status(first).attempts == 2
    no_retry = flaky.options(retries=0).delay(str(tmp_path / "c"))
    with pytest.raises(TaskFailed):
        pool.result(no_retry, timeout=WAIT)
    for timed in (slow.options(task_timeout=0.3).delay(30), slow.options(timeout=0.3, retries=0).delay(30)):
        with pytest.raises(TaskFailed) as failed:
            pool.result(timed, timeout=WAIT)
        assert failed.value.event.status == "timeout"
    with pytest.raises(TaskFailed) as failed:
        pool.result(limited.delay(30), timeout=WAIT)  # @taskmw.task(retries=0, timeout=0.3): the spelling
    assert failed.value.event.status == "timeout"
    later = slow.apply((0,), delay=0.3)
    assert pool.status(later).state == "scheduled"
    assert pool.result(later, timeout=WAIT) == "slept"
    assert slow(0) == "slept"  # still a plain function
    with pytest.raises(TypeError, match=r"args must be a tuple or list, got 'ab': write apply\(\('ab',\)\)"):
        slow.apply("ab")  # would be slow("a", "b")
    with pytest.raises(TypeError, match="kwargs must be a dict, got"):
        slow.options(retries=0).apply((0,), [("seconds", 0)])  # type: ignore[arg-type]


def test_decorator_refuses_what_is_not_an_option() -> None:
    with pytest.raises(TypeError, match=r"both timeout= and task_timeout="):
        taskmw.task(timeout=10, task_timeout=10)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['bogus'\]"):
        taskmw.task(bogus=1)
    with pytest.raises(TypeError, match="both timeout= and task_timeout="):
        slow.options(task_timeout=1).options(timeout=1, task_timeout=2)


def test_delay_of_a_decorated_function_refuses_options_it_would_pass_on(pool: TaskServer, tmp_path: Path) -> None:
    """``fn.delay(x, delay=5)`` would pass ``delay`` to ``fn`` (every argument
    of ``delay()`` goes to it), which fails in the worker: as ``server.task(fn,
    x, delay=5)`` does, it says at once what to write, with or without defaults."""
    for fn in (flaky, slow):  # with @taskmw.task(...) defaults, and without
        name = fn.__qualname__
        for option in ("delay", "timeout", "retries"):
            expected = (
                rf"{name}.delay\(\) got {option}=, .*: {name}.options\({option}=...\).delay\(\*args, \*\*kwargs\)"
            )
            with pytest.raises(TypeError, match=expected):
                fn.delay("x", **{option: 5})
            with pytest.raises(TypeError, match=expected):
                fn.options(retries=0).delay("x", **{option: 5})
    assert pool.result(flaky.options(delay=0.1).delay(str(tmp_path / "a")), timeout=WAIT) == "ok"  # the way


def test_eager_runs_a_delayed_task_at_once(tmp_path: Path) -> None:
    with TaskServer(1, backend="eager") as server:
        task_id = server.task(Task(stamp, str(tmp_path / "ran")), delay=60)
        info = server.status(task_id)
        assert info.state == "done" and info.status == "ok"
        assert info.scheduled_for == pytest.approx(time.time() + 60, abs=5)
        assert slow.apply((0,), delay=60) and len(runs(tmp_path / "ran")) == 1
