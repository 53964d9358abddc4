"""Periodic tasks on the Celery backend: taskmw's schedule becomes Celery
beat's (``taskmw_celery.beat``). A real ``celery beat`` and a real worker run
``apps/cbeat.py``'s ``@taskmw.periodic(every=1)`` function, each run an
ordinary taskmw task seen from this process."""

from __future__ import annotations

import datetime
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from celery_procs import APPS, Redis, celery_worker, require
from e2e.servers import Server, base_env

import taskmw
from taskmw import Periodic, TaskServer

require()

import cjobs  # noqa: E402
import taskmw_celery  # noqa: E402
from taskmw_celery.beat import PERIODIC_NAME  # noqa: E402

pytestmark = pytest.mark.timeout(180)
WAIT = 30.0


def nightly() -> None:  # pragma: no cover - only scheduled here
    pass


def test_install_puts_the_schedule_in_beat_schedule() -> None:
    from celery.schedules import crontab

    app = cjobs.make_app("redis://127.0.0.1:1/0")
    app.conf.timezone = "Europe/Berlin"
    app.conf.beat_schedule = {"their-own": {"task": "x", "schedule": 5.0}}
    taskmw_celery.install(app, schedule=[
        Periodic(nightly, cron="0 3 * * *", tz="Europe/Berlin", name="nightly"),
        Periodic(nightly, every=datetime.timedelta(minutes=5), name="often"),
    ])  # fmt: skip
    beat = app.conf.beat_schedule
    assert set(beat) == {"their-own", "taskmw:nightly", "taskmw:often"}
    assert beat["taskmw:often"]["task"] == PERIODIC_NAME
    assert beat["taskmw:often"]["schedule"].run_every == datetime.timedelta(minutes=5)
    night = beat["taskmw:nightly"]["schedule"]
    assert isinstance(night, crontab) and night.hour == {3} and night.minute == {0}
    assert PERIODIC_NAME in app.tasks


def test_what_beat_cannot_say_is_refused_naming_it() -> None:
    app = cjobs.make_app("redis://127.0.0.1:1/0")  # timezone UTC
    with pytest.raises(ValueError, match="tz='Europe/Berlin', but Celery beat reads crontab in the app's timezone"):
        taskmw_celery.install(app, schedule=[Periodic(nightly, cron="0 3 * * *", tz="Europe/Berlin")])
    with pytest.raises(ValueError, match=r"cron='\*/5 \* \* \* \* \*' has seconds"):
        taskmw_celery.install(cjobs.make_app("redis://127.0.0.1:1/0"),
                              schedule=[Periodic(nightly, cron="*/5 * * * * *")])  # fmt: skip


def _runs(folder: Path) -> list[float]:
    path = folder / "beat-runs.txt"
    return [float(line.split()[0]) for line in path.read_text().splitlines()] if path.exists() else []


def test_celery_beat_runs_the_periodic_tasks_as_taskmw_tasks(redis_server: Redis, tmp_path: Path) -> None:
    url = redis_server.url_for(5)
    with celery_worker(url, tmp_path, app="cbeat:capp") as worker:
        env = base_env(tmp_path) | {"TASKMW_CELERY_URL": url}
        env["PYTHONPATH"] = os.pathsep.join([str(APPS), env["PYTHONPATH"]])
        if os.geteuid() == 0:
            env["C_FORCE_ROOT"] = "1"
        argv = [sys.executable, "-m", "celery", "-A", "cbeat:capp", "beat", "--loglevel", "info",
                "--schedule", str(tmp_path / "beat-schedule")]  # fmt: skip
        (tmp_path / "beat").mkdir()
        beat = Server(argv, tmp_path / "beat", env, 0)
        try:
            deadline = time.monotonic() + WAIT
            while len(_runs(tmp_path)) < 3:
                assert time.monotonic() < deadline, f"beat ran {len(_runs(tmp_path))} runs; log:\n{beat.log_tail()}"
                assert beat.proc.poll() is None, beat.log_tail()
                time.sleep(0.1)
        finally:
            report = beat.stop(signal.SIGTERM)
        assert not report.problems(), report.problems()
        with TaskServer(backend="celery", celery_app=cjobs.make_app(url), schedule=[]) as server:
            done = [t for t in server.tasks(50)["done"] if t.name.endswith("beat_tick")]
            assert len(done) >= 3 and all(t.status == "ok" for t in done), done
            assert server.status(done[0].task_id).state == "done"
        assert worker.proc.poll() is None
    runs = _runs(tmp_path)
    assert len(runs) <= runs[-1] - runs[0] + 2, f"more runs than beat's period allows: {runs}"
    assert taskmw.periodic_tasks() == []  # the app's decorated function lives in the worker and beat only
