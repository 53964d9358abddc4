"""Periodic tasks on Celery: taskmw's schedule becomes Celery beat's.

With the Celery backend there is no local pool, so no supervisor to run a
schedule: the web processes are many (on many machines, maybe), and none of
them is *the* one. Celery's answer to "exactly one scheduler" is
``celery beat``, one process per deployment, and that is what taskmw uses:
:func:`taskmw_celery.install` adds each entry of the schedule to
``celery_app.conf.beat_schedule``, as the Celery task :data:`PERIODIC_NAME`
with the entry's pickled call. When beat sends it, a Celery worker queues
the call as an ordinary taskmw task (an id, ``status()``, ``cancel()``,
``result()`` from any process; its finish reaches the worker side's
``on_finish`` hooks, as for any task queued by a task), and a worker runs it.

What differs from the local pool (README's Celery section): due times are
Celery beat's (``every=`` counts from beat's start, not from the epoch; a
``cron=`` entry is a ``crontab`` in the app's ``timezone``: an entry with
another ``tz``, or a 6-field cron with seconds, is refused); ``overlap=False``
is not enforced (beat sends on time whatever still runs); missed runs are
beat's (its schedule file remembers the last run: one overdue run at start).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

from taskmw import Task, _codec
from taskmw.schedule import Periodic

PERIODIC_NAME = "taskmw.periodic"
"""The Celery task beat sends for a taskmw periodic entry."""
BEAT_PREFIX = "taskmw:"
"""Beat schedule keys of taskmw's entries: this + the entry's name."""


def beat_entry(entry: Periodic, celery_app: Any) -> dict[str, Any]:
    """``entry`` as a ``beat_schedule`` value of ``celery_app``.

    Raises:
        ValueError: a cron entry Celery's ``crontab`` cannot say (6 fields,
            or a ``tz`` other than the app's ``timezone``), naming it.
    """
    from celery.schedules import crontab, schedule

    if entry.every is not None:
        when: Any = schedule(datetime.timedelta(seconds=entry.every), app=celery_app)
    else:
        assert entry.cron is not None
        fields = entry.cron.split()
        if len(fields) != 5:
            raise ValueError(f"periodic task {entry.name}: cron={entry.cron!r} has seconds, which Celery beat's "
                             "crontab does not take (five fields)")  # fmt: skip
        zone = celery_app.conf.timezone or "UTC"
        if (entry.tz or "UTC") != zone:
            raise ValueError(
                f"periodic task {entry.name}: tz={entry.tz!r}, but Celery beat reads crontab in the app's timezone "
                f"({zone!r}): set celery_app.conf.timezone={entry.tz!r}, or drop tz"
            )
        minute, hour, day_of_month, month_of_year, day_of_week = fields
        when = crontab(minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month_of_year,
                       day_of_week=day_of_week, app=celery_app)  # fmt: skip
    return {"task": PERIODIC_NAME, "schedule": when, "args": (entry.payload,), "options": {"serializer": "pickle"}}


def add_to_beat(celery_app: Any, entries: Sequence[Periodic]) -> None:
    """Put ``entries`` in ``celery_app.conf.beat_schedule`` (replacing
    taskmw's earlier ones, keeping the app's own)."""
    own = {k: v for k, v in (celery_app.conf.beat_schedule or {}).items() if not k.startswith(BEAT_PREFIX)}
    ours = {BEAT_PREFIX + entry.name: beat_entry(entry, celery_app) for entry in entries}
    celery_app.conf.beat_schedule = own | ours


def queue_run(server: Any, payload: bytes) -> int:
    """In a Celery worker, when beat sends an entry: queue its call as an
    ordinary taskmw task on ``server`` (the worker side's); returns its id."""
    fn, args, kwargs = _codec.decode(payload)
    return int(server.task(Task(fn, *args, **(kwargs or {}))))
