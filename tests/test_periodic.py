"""Periodic tasks (taskmw.schedule) and memory recycling (max_worker_memory).

The scheduler's arithmetic runs here against an injected clock (far-off
dates, DST, a replaced supervisor's missed runs) on a real pool's shared
state; the rest runs real pools: runs recorded in a file the task appends
to, the supervisor SIGKILLed or reloaded mid-schedule, a slow run that
must not overlap, a worker that leaks past ``max_worker_memory``.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import WAIT, add, local_pool, wait_until

import taskmw
from taskmw import Periodic, Settings, TaskServer, _proc, records
from taskmw.pool import Pool
from taskmw.schedule import Scheduler, _registry, schedule_snapshot

# -- the tasks (module level: they travel by reference) ----------------------------------


def record_run(path: str, seconds: float = 0.0) -> None:
    """Append this run's start and end times (``time.time()``) to ``path``."""
    start = time.time()
    time.sleep(seconds)
    with open(path, "a") as f:
        f.write(f"{start} {time.time()}\n")


_leak: list[bytes] = []


def leak(megabytes: int) -> int:
    """Keep ``megabytes`` of resident memory in this worker (a leak)."""
    _leak.append(b"\x01" * (megabytes << 20))  # written, so resident (bytes(n) would not be)
    return os.getpid()


def runs(path: Path) -> list[tuple[float, float]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        start, _, end = line.partition(" ")
        if end:
            out.append((float(start), float(end)))
    return out


def due_times(path: Path, every: float) -> list[float]:
    """The due time each recorded run belongs to (a run starts within a
    period of its due time: the pool's workers are idle)."""
    return [start // every * every for start, _ in runs(path)]


@pytest.fixture
def supervisor_log(tmp_path: Path) -> Iterator[Path]:
    """The pool's processes log into this file (they inherit the handler)."""
    path = tmp_path / "taskmw.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(process)d %(levelname)s %(message)s"))
    logger = logging.getLogger("taskmw")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield path
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        handler.close()


# -- settings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"every": -1}, "got -1"),
        ({"every": 0}, "got 0"),
        ({"every": datetime.timedelta(seconds=-5)}, "-5"),
        ({"every": "60"}, "'60'"),
        ({"cron": "61 3 * * *"}, "'61 3 * * *'"),
        ({"cron": "every day"}, "'every day'"),
        ({"cron": "0 3 * * *", "tz": "Mars/Olympus"}, "'Mars/Olympus'"),
        ({"every": 5, "cron": "0 3 * * *"}, "one of every= or cron="),
        ({}, "one of every= or cron="),
        ({"every": 5, "tz": "Europe/Berlin"}, "tz='Europe/Berlin'"),
    ],
)
def test_bad_periodic_entries_raise_valueerror_naming_the_value(kwargs: dict, named: str) -> None:
    with pytest.raises(ValueError, match="record_run") as raised:
        Periodic(record_run, **kwargs)
    assert named in str(raised.value)


def test_periodic_decorator_checks_too() -> None:
    with pytest.raises(ValueError, match="'Nowhere/Town'"):
        taskmw.periodic(cron="0 3 * * *", tz="Nowhere/Town")
    before = taskmw.periodic_tasks()
    with pytest.raises(
        TypeError, match=r"module-level Python function, got <built-in function print>.*Periodic\(print"
    ):
        taskmw.periodic(every=5)(print)
    assert taskmw.periodic_tasks() == before  # nothing half-registered


@pytest.mark.parametrize(
    ("value", "named"), [("lots", "'lots'"), ("-5MB", "'-5MB'"), ("1.5XB", "'1.5XB'"), (True, "True"), (100, "100")]
)
def test_bad_max_worker_memory_raises_valueerror_naming_it(value: object, named: str) -> None:
    with pytest.raises(ValueError, match="max_worker_memory") as raised:
        Settings(max_worker_memory=value)  # type: ignore[arg-type]
    assert named in str(raised.value)


def test_max_worker_memory_takes_sizes() -> None:
    assert Settings(max_worker_memory="500MB").max_worker_memory == 500 << 20
    assert Settings(max_worker_memory="1.5GiB").max_worker_memory == 3 << 29
    assert Settings(max_worker_memory=64 << 20).max_worker_memory == 64 << 20
    assert Settings().max_worker_memory is None


def test_the_new_settings_under_taskmw_start() -> None:
    from taskmw import config

    got = config.resolve({}, {"TASKMW_MAX_WORKER_MEMORY": "1.5GiB", "TASKMW_MISSED_RUNS": "skip"}).pool_settings()
    assert got["max_worker_memory"] == 3 << 29 and got["missed_runs"] == "skip"
    assert config.resolve({}, {"TASKMW_MAX_WORKER_MEMORY": "none"}).values["max_worker_memory"] is None
    with pytest.raises(ValueError, match="TASKMW_MISSED_RUNS='twice'"):
        config.resolve({}, {"TASKMW_MISSED_RUNS": "twice"})
    with pytest.raises(ValueError, match="TASKMW_MAX_WORKER_MEMORY='lots'"):
        config.resolve({}, {"TASKMW_MAX_WORKER_MEMORY": "lots"})
    entry = Periodic(record_run, cron="0 3 * * *", tz="Europe/Berlin", args=("x",), name="nightly")
    wired = config.resolve({}, {}, {"schedule": [entry.wire()]}).pool_settings()["schedule"]
    assert [(e.name, e.cron, e.tz, e.payload) for e in wired] == [
        ("nightly", "0 3 * * *", "Europe/Berlin", entry.payload)
    ]


def test_bad_schedule_settings() -> None:
    with pytest.raises(ValueError, match="missed_runs must be 'once' or 'skip', got 'twice'"):
        Settings(missed_runs="twice")
    with pytest.raises(ValueError, match="taskmw.Periodic, got"):
        Settings(schedule=(record_run,))  # type: ignore[arg-type]
    one = Periodic(record_run, every=5)
    for not_a_list in ("record_run", one, 5):  # not its first letter, nor "not iterable"
        with pytest.raises(ValueError, match=r"schedule must be a list of taskmw.Periodic, got "):
            Settings(schedule=not_a_list)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="two entries named 'test_periodic.record_run'"):
        Settings(schedule=(one, Periodic(record_run, every=7)))


def test_a_decorated_function_travels_by_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decorated where it is defined (its module's name for it not bound
    yet), the function is still pickled by reference once a pool takes it:
    a run uses the module's code and globals of the worker, not copies."""
    (tmp_path / "decorated_here.py").write_text(
        "import taskmw\n\n@taskmw.periodic(every=3600, name='decorated-here')\ndef job():\n    return 1\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import decorated_here  # type: ignore[import-not-found]

    try:
        (entry,) = [e for e in taskmw.periodic_tasks() if e.name == "decorated-here"]
        assert b"_make_function" not in entry.payload  # cloudpickle's by-value form
        assert b"decorated_here" in entry.payload and entry.fn is decorated_here.job
    finally:
        _registry.pop("decorated-here", None)


def test_unpicklable_arguments_fail_when_the_pool_is_built() -> None:
    entry = Periodic(record_run, every=5, args=(lambda: None, __import__("threading").Lock()))
    with pytest.raises(TypeError, match="lock"):
        Settings(schedule=(entry,))


# -- due times, through croniter, with a clock of the test's ------------------------------


def _utc(*args: int) -> float:
    return datetime.datetime(*args, tzinfo=datetime.UTC).timestamp()


def test_cron_due_times_far_off_and_across_dst() -> None:
    nightly = Periodic(record_run, cron="0 3 * * *", tz="Europe/Berlin")
    # Berlin is UTC+1 in winter, UTC+2 from 2031-03-30 02:00 (the last Sunday of March).
    assert nightly.next_after(_utc(2031, 1, 15, 12, 0)) == _utc(2031, 1, 16, 2, 0)
    assert nightly.next_after(_utc(2031, 3, 29, 12, 0)) == _utc(2031, 3, 30, 1, 0)
    assert nightly.next_after(_utc(2031, 3, 30, 1, 0)) == _utc(2031, 3, 31, 1, 0)  # strictly after
    assert nightly.last_at_or_before(_utc(2031, 3, 30, 1, 0)) == _utc(2031, 3, 30, 1, 0)
    assert nightly.last_at_or_before(_utc(2031, 3, 30, 0, 59)) == _utc(2031, 3, 29, 2, 0)
    utc = Periodic(record_run, cron="*/15 * * * *", name="quarterly")
    assert utc.next_after(_utc(2099, 12, 31, 23, 50)) == _utc(2100, 1, 1, 0, 0)
    every = Periodic(record_run, every=datetime.timedelta(minutes=1), name="minutely")
    assert every.next_after(_utc(2040, 6, 1, 10, 0, 30)) == _utc(2040, 6, 1, 10, 1)
    assert every.next_after(_utc(2040, 6, 1, 10, 1)) == _utc(2040, 6, 1, 10, 2)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def bare_pool(request: pytest.FixtureRequest) -> Iterator[Pool]:
    """A pool's shared state with a schedule, and no process forked: the
    test plays the supervisor."""
    missed = getattr(request, "param", "once")
    schedule = (
        Periodic(record_run, cron="0 3 * * *", tz="Europe/Berlin", name="nightly"),
        Periodic(record_run, every=60, name="minutely"),
    )
    pool = Pool(Settings(task_workers=1, schedule=schedule, missed_runs=missed, task_records=1024))
    try:
        yield pool
    finally:
        pool.remove_files()


def _queued(pool: Pool) -> list[str]:
    """The names of the runs queued since the last call (popped and
    finished ``ok``, as a worker would)."""
    batch = pool.submit.try_pop_many(256)
    seqs = range(batch.first_seq, batch.first_seq + len(batch.records))
    for seq in seqs:
        pool.tasks.finished(seq, records.OK, 1, None)
    return [pool.tasks.name_of(seq) for seq in seqs]


def test_a_run_still_going_makes_the_next_due_time_skip(bare_pool: Pool) -> None:
    clock = Clock(_utc(2031, 1, 1, 10, 0, 30))
    scheduler = Scheduler(bare_pool, clock)
    clock.now += 30
    scheduler.tick()
    assert bare_pool.submit.try_pop_many(256).records  # taken, never finished: it runs on
    clock.now += 60
    scheduler.tick()
    assert _queued(bare_pool) == []
    (_, minutely) = schedule_snapshot(bare_pool)
    assert minutely["skipped"] == 1 and minutely["runs"] == 1 and minutely["last_status"] == "queued"


def test_the_scheduler_queues_each_due_time_once(bare_pool: Pool) -> None:
    clock = Clock(_utc(2031, 3, 29, 23, 58, 30))
    scheduler = Scheduler(bare_pool, clock)
    assert scheduler.wait(10.0) == 10.0
    clock.now = _utc(2031, 3, 29, 23, 59, 0)
    assert scheduler.wait(100.0) == 0.0
    scheduler.tick()
    assert _queued(bare_pool) == ["minutely"]
    scheduler.tick()  # the same due time again: nothing
    assert _queued(bare_pool) == []
    clock.now = _utc(2031, 3, 30, 1, 0, 0) + 0.5  # the night of the DST change: 03:00 CEST, and a minute
    scheduler.tick()
    assert sorted(_queued(bare_pool)) == ["minutely", "nightly"]  # late by hours: the latest due time only
    assert scheduler.wait(100.0) == pytest.approx(59.5)


def test_a_replaced_supervisor_does_not_run_a_due_time_twice(bare_pool: Pool) -> None:
    clock = Clock(_utc(2031, 1, 1, 10, 0, 0))
    Scheduler(bare_pool, clock)
    clock.now += 60
    Scheduler(bare_pool, clock).tick()
    assert _queued(bare_pool) == ["minutely"]
    # it dies at once; its successor starts within the same due time
    clock.now += 0.2
    successor = Scheduler(bare_pool, clock)
    successor.tick()
    assert _queued(bare_pool) == []
    clock.now += 60
    successor.tick()
    assert _queued(bare_pool) == ["minutely"]


def _ran_at_0159(pool: Pool) -> Clock:
    """A first supervisor starts at 01:58:30 UTC and queues the 01:59 run; returns its clock."""
    clock = Clock(_utc(2031, 1, 1, 1, 58, 30))
    first = Scheduler(pool, clock)
    clock.now += 30
    first.tick()
    assert _queued(pool) == ["minutely"]
    return clock


def test_missed_runs_once_runs_each_entry_once_at_start(bare_pool: Pool) -> None:
    clock = _ran_at_0159(bare_pool)
    clock.now = _utc(2031, 1, 1, 2, 10, 0)  # it died; the next started past 03:00 in Berlin (02:00 UTC) and 10 minutes
    replacement = Scheduler(bare_pool, clock)
    replacement.tick()
    assert sorted(_queued(bare_pool)) == ["minutely", "nightly"]
    replacement.tick()
    assert _queued(bare_pool) == []


@pytest.mark.parametrize("bare_pool", ["skip"], indirect=True)
def test_missed_runs_skip_waits_for_the_next_due_time(bare_pool: Pool) -> None:
    clock = _ran_at_0159(bare_pool)
    clock.now = _utc(2031, 1, 1, 2, 10, 30)
    replacement = Scheduler(bare_pool, clock)
    replacement.tick()
    assert _queued(bare_pool) == []
    clock.now = _utc(2031, 1, 1, 2, 11, 0)
    replacement.tick()
    assert _queued(bare_pool) == ["minutely"]
    skipped = {e["name"]: e["skipped"] for e in schedule_snapshot(bare_pool)}
    assert skipped == {"nightly": 1, "minutely": 1}


def test_a_new_pool_starts_from_the_next_due_time(bare_pool: Pool) -> None:
    scheduler = Scheduler(bare_pool, Clock(_utc(2031, 1, 1, 2, 59, 59)))
    scheduler.tick()
    assert _queued(bare_pool) == []  # nothing known of before the pool: nothing missed


@pytest.fixture
def restarted(tmp_path: Path) -> Iterator[Callable[..., Pool]]:
    """Makes pools (shared state only, nothing forked) with one minutely
    entry and the same ``schedule_file``: each one a pool started anew."""
    made: list[Pool] = []

    def make(missed: str = "once") -> Pool:
        entry = Periodic(record_run, every=60, name="minutely")
        settings = Settings(task_workers=1, schedule=(entry,), schedule_file=str(tmp_path / "schedule.json"),
                            missed_runs=missed, task_records=1024)  # fmt: skip
        made.append(Pool(settings))
        return made[-1]

    try:
        yield make
    finally:
        for pool in made:
            pool.remove_files()


def test_schedule_file_carries_the_history_across_restarts(
    restarted: Callable[..., Pool], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock(_utc(2031, 1, 1, 10, 0, 30))
    first = restarted()
    scheduler = Scheduler(first, clock)
    clock.now += 30
    scheduler.tick()
    assert _queued(first) == ["minutely"]
    assert json.loads((tmp_path / "schedule.json").read_text()) == {"last_due": {"minutely": _utc(2031, 1, 1, 10, 1)}}
    clock.now += 20  # stopped, and started again within the same minute: not again
    again = restarted()
    scheduler = Scheduler(again, clock)
    scheduler.tick()
    assert _queued(again) == []
    clock.now = _utc(2031, 1, 1, 10, 2)
    scheduler.tick()
    assert _queued(again) == ["minutely"]
    clock.now = _utc(2031, 1, 1, 10, 5, 30)  # stopped from 10:02:10 to 10:05:30: missed, run once
    with caplog.at_level(logging.WARNING, "taskmw.schedule"):
        late = restarted()
        scheduler = Scheduler(late, clock)
    assert "a run was due while the pool was stopped: running it now" in caplog.text
    scheduler.tick()
    assert _queued(late) == ["minutely"]
    scheduler.tick()
    assert _queued(late) == []
    clock.now = _utc(2031, 1, 1, 10, 9, 30)
    skipping = restarted("skip")
    scheduler = Scheduler(skipping, clock)
    scheduler.tick()
    assert _queued(skipping) == []
    assert schedule_snapshot(skipping)[0]["skipped"] == 1
    clock.now = _utc(2031, 1, 1, 10, 10)
    scheduler.tick()
    assert _queued(skipping) == ["minutely"]


def test_an_unreadable_schedule_file_starts_from_now(
    restarted: Callable[..., Pool], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "schedule.json").write_text("{not json")
    clock = Clock(_utc(2031, 1, 1, 10, 0, 30))
    with caplog.at_level(logging.WARNING, "taskmw.schedule"):
        scheduler = Scheduler(restarted(), clock)
    assert "cannot be read" in caplog.text and "schedule.json" in caplog.text
    assert scheduler.wait(100.0) == pytest.approx(30.0)


# -- real pools ---------------------------------------------------------------------------


def test_runs_are_ordinary_tasks_listed_in_stats(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    entry = Periodic(record_run, every=0.5, args=(str(out),), name="half")
    kept = tmp_path / "schedule.json"
    with TaskServer(task_workers=2, entrypoints=False, schedule=[entry], schedule_file=str(kept)) as server:
        assert wait_until(lambda: len(runs(out)) >= 2)
        listed = server.stats()["schedule"]
        assert [e["name"] for e in listed] == ["half"]
        (e,) = listed
        assert e["when"] == "every 0.5s" and e["runs"] >= 2 and e["next_run"] > e["last_run"]
        assert wait_until(lambda: server.stats()["schedule"][0]["last_status"] == "ok")
        info = server.status(server.stats()["schedule"][0]["last_task_id"])
        assert info.name == "half" and info.status == "ok" and info.worker_id in (0, 1)
        last = server.stats()["schedule"][0]["last_run"]
    assert json.loads(kept.read_text())["last_due"]["half"] >= last  # written by the supervisor


def test_a_slow_run_makes_the_next_ones_skip_not_overlap(tmp_path: Path, supervisor_log: Path) -> None:
    out = tmp_path / "runs"
    entry = Periodic(record_run, every=0.5, args=(str(out), 1.6), name="slow")
    with TaskServer(task_workers=2, entrypoints=False, schedule=[entry]) as server:
        assert wait_until(lambda: len(runs(out)) >= 3, timeout=WAIT * 2)
        skipped = server.stats()["schedule"][0]["skipped"]
    done = sorted(runs(out))
    for (_, end), (start, _) in zip(done, done[1:], strict=False):
        assert start >= end - 0.01, f"runs overlap: {done}"
    assert skipped >= 3
    assert "periodic task slow: the run due at" in supervisor_log.read_text()
    assert "is skipped: run" in supervisor_log.read_text()


def test_overlap_true_lets_runs_overlap(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    entry = Periodic(record_run, every=0.5, args=(str(out), 1.2), overlap=True, name="overlapping")
    with TaskServer(task_workers=3, entrypoints=False, schedule=[entry]) as server:
        assert wait_until(lambda: len(runs(out)) >= 3, timeout=WAIT * 2)
        assert server.stats()["schedule"][0]["skipped"] == 0
    done = sorted(runs(out))
    assert any(start < end for (_, end), (start, _) in zip(done, done[1:], strict=False)), done


def test_reload_and_a_killed_supervisor_do_not_double_a_run(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    every = 1.0
    entry = Periodic(record_run, every=every, args=(str(out),), name="each")
    with TaskServer(task_workers=2, entrypoints=False, schedule=[entry]) as server:
        pool = local_pool(server)
        assert wait_until(lambda: len(runs(out)) >= 1)
        for _ in range(2):
            server.reload()
            count = len(runs(out))
            assert wait_until(lambda c=count: len(runs(out)) > c)
        for _ in range(2):  # right after a run was queued: the dead supervisor's successor must not queue it again
            before = server.stats()["schedule"][0]["runs"]
            assert wait_until(lambda b=before: server.stats()["schedule"][0]["runs"] > b, interval=0.001)
            old = pool.supervisor_pid
            os.kill(old, signal.SIGKILL)
            assert wait_until(lambda o=old: pool.supervisor_pid != o and server.transport.alive())
            count = len(runs(out))
            assert wait_until(lambda c=count: len(runs(out)) >= c + 2)
    dues = due_times(out, every)
    assert len(dues) == len(set(dues)), f"a due time ran twice: {dues}"


@pytest.mark.parametrize("missed", ["once", "skip"])
def test_runs_missed_while_the_supervisor_was_down(tmp_path: Path, supervisor_log: Path, missed: str) -> None:
    """The supervisor hangs (SIGSTOP) past a due time, then dies (SIGKILL); the
    watchdog's new one runs the missed entry once at once, or skips it."""
    out = tmp_path / "runs"
    entry = Periodic(record_run, every=1.0, args=(str(out),), name="each")
    with TaskServer(task_workers=2, entrypoints=False, schedule=[entry], missed_runs=missed) as server:
        pool = local_pool(server)
        before = server.stats()["schedule"][0]["runs"]
        assert wait_until(lambda: server.stats()["schedule"][0]["runs"] > before, interval=0.005)
        old = pool.supervisor_pid
        os.kill(old, signal.SIGSTOP)
        stopped = time.time()
        runs_then = server.stats()["schedule"][0]["runs"]
        assert wait_until(lambda: time.time() > stopped + 2.5)
        assert server.stats()["schedule"][0]["runs"] == runs_then  # nothing ran it meanwhile
        os.kill(old, signal.SIGKILL)
        assert wait_until(lambda: pool.supervisor_pid != old and server.transport.alive())
        assert wait_until(lambda: server.stats()["schedule"][0]["runs"] >= runs_then + 2)
        skipped = server.stats()["schedule"][0]["skipped"]
    text = supervisor_log.read_text()
    if missed == "once":
        assert "running it now (missed_runs='once')" in text
        assert skipped == 0
    else:
        assert "skipped (missed_runs='skip')" in text
        assert skipped == 1
    dues = due_times(out, 1.0)
    assert len(dues) - len(set(dues)) <= (1 if missed == "once" else 0), f"a due time ran twice: {dues}"


def test_decorated_functions_are_the_default_schedule(caplog: pytest.LogCaptureFixture) -> None:
    before = taskmw.periodic_tasks()
    decorate = taskmw.periodic(every=3600, name="test-decorated")
    decorate(record_run)
    try:
        assert record_run.periodic.name == "test-decorated"  # type: ignore[attr-defined]
        assert "test-decorated" in [e.name for e in taskmw.periodic_tasks()]
        with TaskServer(task_workers=1, entrypoints=False) as server:
            assert "test-decorated" in [e["name"] for e in server.stats()["schedule"]]
        with TaskServer(task_workers=1, entrypoints=False, schedule=[]) as server:
            assert server.stats()["schedule"] == []
            with caplog.at_level(logging.WARNING, "taskmw.schedule"):
                taskmw.periodic(every=60, name="test-too-late")(add)
            assert "periodic task test-too-late was decorated after a pool of this process" in caplog.text
    finally:
        _registry.pop("test-too-late", None)
        vars(add).pop("periodic", None)
        _registry.pop("test-decorated", None)
        vars(record_run).pop("periodic", None)
    assert taskmw.periodic_tasks() == before


# -- memory recycling -----------------------------------------------------------------------


def memory_limit() -> str:
    """A ``max_worker_memory`` 80 MiB above this process's resident memory
    now (a worker forked from it starts about there: its inherited pages count)."""
    return f"{(_proc.rss_bytes(os.getpid()) or 0) // (1 << 20) + 80}MB"


def test_a_worker_over_max_worker_memory_is_replaced_after_its_task(supervisor_log: Path) -> None:
    limit = memory_limit()
    with TaskServer(task_workers=1, entrypoints=False, max_worker_memory=limit) as server:
        first = server.taskwait(leak, 10, timeout=WAIT)  # under the limit: it stays
        assert server.taskwait(leak, 0, timeout=WAIT) == first
        leaker = server.task(leak, 160)
        queued = [server.task(add, i, 1) for i in range(20)]  # waiting behind it, never lost
        assert server.result(leaker, timeout=WAIT) == first  # its task finished ok, in that worker
        assert [server.result(t, timeout=WAIT) for t in queued] == [i + 1 for i in range(20)]
        assert wait_until(lambda: server.stats()["workers"][0]["recycled"] == 1)
        (worker,) = server.stats()["workers"]
        assert worker["restart_reason"] == "memory"
        assert worker["restarts"] == 0  # it did not die: it left
        assert server.taskwait(leak, 0, timeout=WAIT) != first
    assert f"is over max_worker_memory={float(limit[:-2]):.1f} MiB: recycling" in supervisor_log.read_text()


def test_a_limit_below_a_fresh_workers_memory_does_not_recycle_after_every_task(supervisor_log: Path) -> None:
    with TaskServer(task_workers=1, entrypoints=False, max_worker_memory="1MB") as server:
        first = server.taskwait(leak, 0, timeout=WAIT)
        assert [server.taskwait(leak, 0, timeout=WAIT) for _ in range(5)] == [first] * 5  # the same worker
        assert server.stats()["workers"][0]["recycled"] == 0
    assert supervisor_log.read_text().count("at start is already over max_worker_memory=1.0 MiB") == 1


async def sleep_async(seconds: float) -> str:
    import asyncio

    await asyncio.sleep(seconds)
    return "slept"


def test_a_worker_over_its_memory_finishes_its_async_tasks_first() -> None:
    with TaskServer(task_workers=1, entrypoints=False, max_worker_memory=memory_limit()) as server:
        first = server.taskwait(leak, 0, timeout=WAIT)
        sleeper = server.task(sleep_async, 1.0)
        leaker = server.task(leak, 160)
        assert server.result(leaker, timeout=WAIT) == first
        assert server.result(sleeper, timeout=WAIT) == "slept"  # not lost with its worker
        assert server.status(sleeper).status == "ok"
        assert wait_until(lambda: server.stats()["workers"][0]["recycled"] == 1)
        assert server.taskwait(leak, 0, timeout=WAIT) != first


def test_the_worker_table_says_why_a_worker_was_replaced(tmp_path: Path) -> None:
    from taskmw.cli.render import render_status

    with TaskServer(task_workers=1, entrypoints=False, max_tasks_per_worker=2) as server:
        for i in range(2):
            server.taskwait(add, i, 1, timeout=WAIT)
        assert wait_until(lambda: server.stats()["workers"][0]["recycled"] == 1)
        stats = server.stats()
    assert stats["workers"][0]["restart_reason"] == "max_tasks"
    text = render_status({"pool": stats, "now": time.time(), "started": time.time(), "app": None, "master_pid": 1})
    assert "RECYCLED" in text and "1 (max_tasks)" in text


def test_a_run_the_supervisor_settles_is_logged_by_its_name(tmp_path: Path, supervisor_log: Path) -> None:
    """A run killed at the pool's time limit gets its finish from the
    supervisor, which carries no name: the log names the entry still."""
    entry = Periodic(record_run, every=0.5, args=(str(tmp_path / "runs"), 30), name="stuck")
    with TaskServer(task_workers=1, entrypoints=False, schedule=[entry], task_timeout=0.3):
        assert wait_until(lambda: "finished timeout" in supervisor_log.read_text(), timeout=WAIT)
    line = next(line for line in supervisor_log.read_text().splitlines() if "finished timeout" in line)
    assert "periodic task stuck (run " in line, line
