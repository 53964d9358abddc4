"""Periodic tasks: :class:`Periodic` entries, the :func:`periodic` decorator,
and the scheduler that runs them (:class:`Scheduler`, in the pool's supervisor).

A pool runs its schedule in its **supervisor**, the one process of the pool
there is whatever the number of HTTP workers, so each due time runs once per
pool. Each run is an ordinary task: the supervisor queues it (it gets an id,
``status()``, ``cancel()``, a record), a task worker runs it, and its finish
comes back to a completion channel the supervisor claims for the schedule.
The supervisor logs a run that did not finish ``ok``; no ``on_finish`` hook
runs for a periodic run (hooks run in the process that queued a task, and
the supervisor runs no user code).

Which entries a pool runs: ``TaskServer(schedule=[...])`` (or
``TaskMiddleware(app, schedule=[...])``) exactly; without ``schedule=``
(``None``), the functions decorated with ``@taskmw.periodic`` that were
imported when the pool was built (:func:`periodic_tasks`). A function
decorated after its pool was built is not run by it (a warning says so).

Due times are wall-clock: ``every=`` seconds are the multiples of ``every``
since the Unix epoch (``every=60``: each whole minute), ``cron=`` the times
of the expression in ``tz`` (default UTC). The supervisor keeps, per entry,
the last due time it handled in the pool's shared memory (:class:`ScheduleState`):
a supervisor that replaces a dead one, and a ``reload``, go on from there
and never run a due time twice. Due times passed while no supervisor ran
(the watchdog replacing a dead one) are run once at once, or skipped, as
``missed_runs`` says. The history lives as long as the pool, unless
``schedule_file`` keeps it: then a pool started anew goes on from it (and
``missed_runs`` applies to the due times passed while it was stopped); else
it begins with the next due time after its start.
"""

from __future__ import annotations

import datetime
import json
import logging
import mmap
import os
import time
import zoneinfo
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from taskmw import _codec, records
from taskmw._shm import shared_map
from taskmw._table import TASK
from taskmw.errors import UnknownTask
from taskmw.ring import RecordTooLarge, RingFull

if TYPE_CHECKING:
    from taskmw.pool import Pool

log = logging.getLogger(__name__)

MissedRuns = Literal["once", "skip"]
MISSED_RUNS: tuple[str, ...] = ("once", "skip")

_registry: dict[str, Periodic] = {}
"""``@periodic`` entries by name, in the order they were decorated."""
_built: list[int] = []
"""The pids of the processes that built a local pool (a later ``@periodic`` there is in no pool's schedule)."""


class Periodic:
    """One entry of a pool's schedule: run ``fn(*args, **kwargs)`` every
    ``every`` seconds, or at the times of the cron expression ``cron``.

    Args:
        fn: a module-level function (it travels by reference, like any task).
        every: seconds (a number > 0, or a :class:`datetime.timedelta`);
            due times are its multiples since the Unix epoch.
        cron: a cron expression (5 fields, or 6 with seconds last), read by
            croniter: ``"0 3 * * *"`` is 03:00 every day.
        tz: the IANA time zone of ``cron`` (``"Europe/Berlin"``; default UTC).
        args, kwargs: the arguments of each run.
        overlap: start a run even while the previous one is still going
            (default: that run is skipped, and logged).
        name: the entry's name in ``taskmw status`` and the logs (default:
            ``module.qualname`` of ``fn``); unique within a schedule.

    Raises:
        ValueError: neither or both of ``every`` and ``cron``, ``every`` not
            > 0, a bad cron expression, an unknown time zone (the message
            names the value).
        TypeError: ``fn`` is not callable, or something cannot be pickled.
    """

    __slots__ = ("fn", "every", "cron", "tz", "args", "kwargs", "overlap", "name", "_payload", "_zone")

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        every: float | datetime.timedelta | None = None,
        cron: str | None = None,
        tz: str | None = None,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        overlap: bool = False,
        name: str | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"Periodic needs a callable, got {fn!r}")
        self.fn = fn
        self.name = name if name is not None else f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}"
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a periodic task's name must be a non-empty str, got {name!r}")
        self.every, self._zone = _when(self.name, every, cron, tz, overlap)
        self.cron = cron
        self.tz = tz
        self.overlap = overlap
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self._payload: bytes | None = None

    @property
    def payload(self) -> bytes:
        """The pickled call each run queues: made at its first use (when a
        pool takes the entry), not at decoration, when the module's name for
        ``fn`` is not bound yet and ``fn`` could only travel by value.

        Raises:
            TypeError: something cannot be pickled (the message names it).
        """
        if self._payload is None:
            self._payload = _codec.encode_call(self.fn, self.args, self.kwargs)
        return self._payload

    def next_after(self, now: float) -> float:
        """The first due time strictly after ``now`` (both ``time.time()`` values)."""
        if self.every is not None:
            return (now // self.every + 1) * self.every
        due: float = _croniter().croniter(self.cron, datetime.datetime.fromtimestamp(now, self._zone)).get_next(float)
        return due if due > now else self.next_after(due)

    def last_at_or_before(self, now: float) -> float | None:
        """The latest due time at or before ``now`` (``None``: none since the epoch)."""
        if self.every is not None:
            return (now // self.every) * self.every
        prev: float = _croniter().croniter(self.cron, datetime.datetime.fromtimestamp(now, self._zone)).get_prev(float)
        exact = self.next_after(prev)  # ``now`` itself, when it is a due time
        return exact if exact <= now else prev

    @property
    def when(self) -> str:
        """``every 60s`` or ``cron 0 3 * * * (Europe/Berlin)``, as ``taskmw status`` shows it."""
        if self.every is not None:
            return f"every {self.every:g}s"
        return f"cron {self.cron}" + (f" ({self.tz})" if self.tz else "")

    def __repr__(self) -> str:
        return f"Periodic({self.name}, {self.when}{', overlap' if self.overlap else ''})"

    def wire(self) -> dict[str, Any]:
        """The entry as JSON-able data (its call pickled), for :meth:`from_wire`:
        how ``taskmw start``'s master gets the schedule of an app it does not import."""
        return {"name": self.name, "every": self.every, "cron": self.cron, "tz": self.tz,
                "overlap": self.overlap, "payload": self.payload.hex()}  # fmt: skip

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Periodic:
        """An entry from :meth:`wire` (its ``fn`` is not imported: each run
        unpickles the call in a task worker, as any task)."""
        entry = cls(_not_imported, every=data["every"], cron=data["cron"], tz=data["tz"], overlap=data["overlap"],
                    name=data["name"])  # fmt: skip
        entry._payload = bytes.fromhex(data["payload"])
        return entry


def _not_imported() -> None:  # pragma: no cover - stands for a function only task workers import
    raise RuntimeError("a periodic entry read from its wire form runs through its payload")


def _when(
    name: str, every: float | datetime.timedelta | None, cron: str | None, tz: str | None, overlap: bool
) -> tuple[float | None, datetime.tzinfo]:
    """Check an entry's timing; returns its ``every`` in seconds and its time zone.

    Raises:
        ValueError: naming the entry and the bad value.
    """
    if (every is None) == (cron is None):
        raise ValueError(f"periodic task {name}: give one of every= or cron=, got every={every!r}, cron={cron!r}")
    if cron is not None:
        _check_cron(name, cron)
    elif tz is not None:
        raise ValueError(f"periodic task {name}: tz={tz!r} is for cron= entries (every= is in seconds)")
    if not isinstance(overlap, bool):
        raise ValueError(f"periodic task {name}: overlap must be True or False, got {overlap!r}")
    return (_seconds(name, every) if every is not None else None), _zone(name, tz)


def _seconds(name: str, every: object) -> float:
    if isinstance(every, datetime.timedelta):
        every = every.total_seconds()
    if not isinstance(every, (int, float)) or isinstance(every, bool) or not 0 < every < 1e9:
        raise ValueError(f"periodic task {name}: every must be a number of seconds > 0 or a timedelta, got {every!r}")
    return float(every)


def _zone(name: str, tz: object) -> datetime.tzinfo:
    if tz is None:
        return datetime.UTC
    if not isinstance(tz, str):
        raise ValueError(f"periodic task {name}: tz must be an IANA time zone name (str), got {tz!r}")
    try:
        return zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"periodic task {name}: unknown time zone tz={tz!r} (an IANA name: 'Europe/Berlin')") from None


def _croniter() -> Any:
    """The croniter module, imported when a cron entry is first used (not with taskmw)."""
    import croniter  # type: ignore[import-untyped]

    return croniter


def _check_cron(name: str, cron: object) -> None:
    if not isinstance(cron, str) or not _croniter().croniter.is_valid(cron):
        raise ValueError(f"periodic task {name}: bad cron expression cron={cron!r} (five fields: '0 3 * * *')")


def periodic(
    *,
    every: float | datetime.timedelta | None = None,
    cron: str | None = None,
    tz: str | None = None,
    overlap: bool = False,
    name: str | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Run the decorated module-level function periodically, in the pool
    built after it was imported (when that pool is not given its own
    ``schedule=``): ``@taskmw.periodic(every=60)`` or
    ``@taskmw.periodic(cron="0 3 * * *", tz="Europe/Berlin")``. The function
    is unchanged; its entry (a :class:`Periodic`) is ``fn.periodic``.

    Raises:
        ValueError: as :class:`Periodic`.
        TypeError: what it decorates is not a Python function (a builtin).
    """

    _when(name or "(decorated)", every, cron, tz, overlap)  # a bad value raises here, where it is written

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        entry = Periodic(fn, every=every, cron=cron, tz=tz, overlap=overlap, name=name)
        if os.getpid() in _built and entry.name not in _registry:
            log.warning(
                "periodic task %s was decorated after a pool of this process took its schedule: that pool does not "
                "run it (import it before building the pool, or give schedule=)",
                entry.name,
            )
        try:
            fn.periodic = entry  # type: ignore[attr-defined]
        except (AttributeError, TypeError):  # a builtin, a method: nothing to decorate
            raise TypeError(
                f"@taskmw.periodic decorates a module-level Python function, got {fn!r}: "
                f"give it as schedule=[taskmw.Periodic({getattr(fn, '__name__', 'fn')}, ...)] instead"
            ) from None
        _registry[entry.name] = entry  # decorated again (a module imported twice): the last one
        return fn

    return register


def periodic_tasks() -> list[Periodic]:
    """The entries of the functions decorated with :func:`periodic` so far,
    in order (what a pool built now without ``schedule=`` runs)."""
    return list(_registry.values())


def pool_built() -> None:
    """A local pool was built in this process: a function decorated here
    from now on is not in its schedule (see :func:`periodic`)."""
    _built.append(os.getpid())


def schedule_of(given: Sequence[Periodic] | None) -> tuple[Periodic, ...]:
    """A pool's schedule: ``given`` (checked), or the decorated entries."""
    if given is None:
        return tuple(_registry.values())
    if isinstance(given, (str, bytes, Periodic)) or not isinstance(given, Iterable):
        raise ValueError(f"schedule must be a list of taskmw.Periodic, got {given!r}")
    entries = tuple(given)
    names: set[str] = set()
    for entry in entries:
        if not isinstance(entry, Periodic):
            raise ValueError(f"schedule entries must be taskmw.Periodic, got {entry!r}")
        if entry.name in names:
            raise ValueError(f"schedule has two entries named {entry.name!r}: give one of them name=")
        names.add(entry.name)
        entry.payload  # noqa: B018 - pickled now, where the pool is built: an unpicklable argument raises here
    return entries


# -- the shared state --------------------------------------------------------------

# Words (int64) of an entry's row in the schedule page. Written by the supervisor only.
_LAST_DUE = 0  # ns since the epoch of the last due time handled (run or skipped); 0: none yet
_LAST_ID = 1  # the task id of the last run (0: none)
_NEXT_DUE = 2  # ns since the epoch of the next due time
_RUNS = 3  # runs queued
_SKIPPED = 4  # due times skipped (overlap, a full queue, missed_runs="skip")
_LAST_SKIP = 5  # ns since the epoch of the last due time skipped
_LAST_RUN = 6  # ns since the epoch of the due time of the last run queued
_ROW = 8
_LATE = 1.0
"""Seconds past its due time after which a run a replaced supervisor did not queue counts as missed."""
_RETRY = 60.0
"""Seconds before an entry whose scheduling raised is tried again."""


class ScheduleState:
    """Per entry of a schedule: last and next due time, last run, counts;
    in shared memory made with the pool, so a replacing supervisor reads
    what the dead one wrote, and any process of the pool can show it."""

    def __init__(self, entries: int, fd: int | None = None) -> None:
        self.entries = entries
        self.fd, self._map = shared_map("schedule", max(mmap.PAGESIZE, entries * _ROW * 8), fd)
        """Its memfd (``fd``: one received from the process that made it, see :mod:`taskmw._share`)."""
        self.words = memoryview(self._map).cast("q")

    def __len__(self) -> int:
        return self.entries


def _ns(t: float) -> int:
    return int(round(t * 1e9))


class Scheduler:
    """The schedule's side of the supervisor's loop: :meth:`tick` queues the
    runs that are due; :meth:`wait` says how long the loop may sleep.

    Args:
        pool: the pool (its settings hold the schedule; its schedule state the history).
        clock: the wall clock (``time.time``; a test may give another).
    """

    def __init__(self, pool: Pool, clock: Callable[[], float] = time.time) -> None:
        self.pool = pool
        self.entries: tuple[Periodic, ...] = pool.settings.schedule
        self.words = pool.schedule.words
        self.clock = clock
        self.channel = -1  # the schedule's completion channel, once claimed
        self._save_failed = False  # logged once
        if self.entries:
            self._claim()
            self._start(pool.settings.missed_runs)

    def _claim(self) -> bool:
        """Claim the schedule's completion channel for the runs' finishes,
        dropping what a dead supervisor left unread; False while another
        live process holds it (a dying supervisor: tried again each tick)."""
        index = self.pool.schedule_channel
        assert index is not None, "a pool with a schedule has its channel"
        if not self.pool.try_claim(index):
            log.warning("the schedule's completion channel is still held by another process: waiting for it")
            return False
        while self.pool.channels[index].try_pop_many(256).records:
            pass
        self.channel = index
        return True

    def _start(self, missed: str) -> None:
        """Set each entry's next due time: the one a dead supervisor planned
        (a supervisor that replaces it), else the one after the last due
        time in ``schedule_file`` (a pool started anew), else the first after
        now. A planned due time more than :data:`_LATE` seconds past was
        missed: ``missed="once"`` runs it now, ``"skip"`` skips it."""
        now, w = self.clock(), self.words
        kept = self._load()
        for i, entry in enumerate(self.entries):
            r = i * _ROW
            planned = w[r + _NEXT_DUE] / 1e9
            where = "while the pool's supervisor was replaced"
            if not planned and entry.name in kept:
                w[r + _LAST_DUE] = _ns(kept[entry.name])
                planned, where = entry.next_after(kept[entry.name]), "while the pool was stopped"
            if not planned:
                w[r + _NEXT_DUE] = _ns(entry.next_after(now))
            elif now - planned <= _LATE:
                w[r + _NEXT_DUE] = _ns(planned)
            elif missed == "once":
                log.warning("periodic task %s: a run was due %s: running it now (missed_runs='once')",
                            entry.name, where)  # fmt: skip
                w[r + _NEXT_DUE] = _ns(entry.last_at_or_before(now) or planned)
            else:
                log.warning("periodic task %s: the run(s) due %s are skipped (missed_runs='skip')", entry.name, where)
                due = entry.last_at_or_before(now) or planned
                w[r + _LAST_DUE] = _ns(due)
                self._skipped(r, due)
                w[r + _NEXT_DUE] = _ns(entry.next_after(now))
        self._save()

    def _load(self) -> dict[str, float]:
        """The last due time of each entry, by name, from ``schedule_file`` (empty without one)."""
        path = self.pool.settings.schedule_file
        if path is None:
            return {}
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            return {str(name): float(t) for name, t in data["last_due"].items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("schedule_file %s cannot be read (%s): the schedule starts from now", path, exc)
            return {}

    def _save(self) -> None:
        """Write each entry's last due time to ``schedule_file`` (atomically: a
        new file renamed over the old one), if there is one."""
        path = self.pool.settings.schedule_file
        if path is None:
            return
        w = self.words
        last = {e.name: w[i * _ROW + _LAST_DUE] / 1e9 for i, e in enumerate(self.entries) if w[i * _ROW + _LAST_DUE]}
        try:
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"last_due": last}, f)
            os.replace(tmp, path)
        except OSError as exc:
            if not self._save_failed:
                log.error("schedule_file %s cannot be written (%s): a pool started anew will not know the "
                          "last runs", path, exc)  # fmt: skip
            self._save_failed = True

    def wait(self, longest: float) -> float:
        """Seconds until the next due time, at most ``longest``."""
        if not self.entries:
            return longest
        soonest = min(self.words[i * _ROW + _NEXT_DUE] for i in range(len(self.entries))) / 1e9
        return max(0.0, min(longest, soonest - self.clock()))

    def tick(self) -> None:
        """Queue every run that is due (once per due time), and read the
        runs' finishes."""
        if not self.entries or (self.channel < 0 and not self._claim()):
            return
        self._read_finishes()
        now, w = self.clock(), self.words
        handled = False
        for i, entry in enumerate(self.entries):
            r = i * _ROW
            if w[r + _NEXT_DUE] / 1e9 > now:
                continue
            handled = True
            try:
                self._due(entry, r, now)
            except Exception:  # noqa: BLE001 - one entry's failure must not stop the supervisor or the others
                log.exception("periodic task %s: scheduling failed; trying again in %gs", entry.name, _RETRY)
                w[r + _NEXT_DUE] = _ns(now + _RETRY)
        if handled:
            self._save()

    def _due(self, entry: Periodic, r: int, now: float) -> None:
        """Entry ``entry`` (its row at ``r``) is due: queue its run, or skip it."""
        w = self.words
        due = w[r + _NEXT_DUE] / 1e9
        due = max(due, entry.last_at_or_before(now) or due)  # late by more than a period: the latest only
        w[r + _NEXT_DUE] = _ns(entry.next_after(max(now, due)))
        if w[r + _LAST_DUE] >= _ns(due):
            return  # handled already (by a supervisor before this one)
        if not entry.overlap and self._going(w[r + _LAST_ID]):
            w[r + _LAST_DUE] = _ns(due)
            self._skipped(r, due)
            log.warning("periodic task %s: the run due at %s is skipped: run %d is still going (overlap=False)",
                        entry.name, _show(due), w[r + _LAST_ID])  # fmt: skip
            return
        w[r + _LAST_DUE] = _ns(due)  # before queuing: a supervisor killed in between loses the run, never doubles it
        self._queue(entry, r, due)

    def _queue(self, entry: Periodic, r: int, due: float) -> None:
        pool, w = self.pool, self.words
        header = records.with_channel(records.submit_header(records.Kind.CALL), self.channel)
        try:
            seq = pool.submit.push(entry.payload, aux=header, timeout=0)
        except (RingFull, RecordTooLarge) as exc:
            self._skipped(r, due)
            log.error("periodic task %s: the run due at %s is skipped: %s", entry.name, _show(due), exc)
            return
        pool.tasks.queued(seq, _name_field(entry.name))
        w[r + _LAST_ID] = seq
        w[r + _LAST_RUN] = _ns(due)
        w[r + _RUNS] += 1
        log.debug("periodic task %s: queued run %d (due at %s)", entry.name, seq, _show(due))

    def _skipped(self, r: int, due: float) -> None:
        self.words[r + _SKIPPED] += 1
        self.words[r + _LAST_SKIP] = _ns(due)

    def _going(self, task_id: int) -> bool:
        """True while run ``task_id`` is queued or running."""
        if not task_id:
            return False
        stats = self.pool.submit.stats()
        try:
            info = self.pool.tasks.info(task_id, stats.next_seq, stats.next_seq - stats.records)
        except UnknownTask:
            return False
        return info.state != "done"

    def _read_finishes(self) -> None:
        """Drain the schedule's completion channel: log the runs that did not finish ``ok``."""
        ring = self.pool.channels[self.channel]
        while True:
            batch = ring.try_pop_many(256)
            if not batch.records:
                return
            for record, header in zip(batch.records, batch.auxs, strict=True):
                try:
                    if records.is_spilled(header):
                        record = records.unspill(record)
                    finish = records.FinishRecord.decode(record)
                except Exception:  # noqa: BLE001 - an unreadable finish: its status is in the record anyway
                    log.debug("a periodic run's finish could not be read", exc_info=True)
                    continue
                if finish.status != records.OK:
                    error = f": {finish.error.type}: {finish.error.message}" if finish.error else ""
                    name = finish.name or self.pool.tasks.name_of(finish.task_id) or "?"  # settled: no name
                    log.warning("periodic task %s (run %d) finished %s%s", name, finish.task_id,
                                records.STATUSES[finish.status], error)  # fmt: skip


def _name_field(name: str) -> bytes:
    from taskmw.tasktable import name_field

    return name_field(name)


def _show(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def schedule_snapshot(pool: Pool) -> list[dict[str, Any]]:
    """Each entry of ``pool``'s schedule: ``{"name", "when", "every", "cron",
    "tz", "overlap", "next_run", "last_run", "last_task_id", "last_status",
    "runs", "skipped", "last_skipped"}`` (times are ``time.time()`` values or
    ``None``; ``last_status``: the last run's state or finish status:
    ``queued``, ``running``, ``ok``, ``error``, …, ``None`` before the first).
    Works in every process of the pool."""
    out = []
    w = pool.schedule.words
    stats = pool.submit.stats()
    table = pool.table
    running = {table.words[table.row(i) + TASK] for i in range(pool.settings.task_workers)}
    for i, entry in enumerate(pool.settings.schedule):
        r = i * _ROW
        task_id = w[r + _LAST_ID]
        status: str | None = None
        if task_id:
            try:
                info = pool.tasks.info(task_id, stats.next_seq, stats.next_seq - stats.records)
                status = info.status if info.state == "done" else info.state
                if status == "queued" and task_id in running:  # a sync task runs in the worker table only
                    status = "running"
            except UnknownTask:
                status = "evicted"
        out.append({
            "name": entry.name,
            "when": entry.when,
            "every": entry.every,
            "cron": entry.cron,
            "tz": entry.tz,
            "overlap": entry.overlap,
            "next_run": w[r + _NEXT_DUE] / 1e9 or None,
            "last_run": w[r + _LAST_RUN] / 1e9 or None,
            "last_task_id": task_id or None,
            "last_status": status,
            "runs": w[r + _RUNS],
            "skipped": w[r + _SKIPPED],
            "last_skipped": w[r + _LAST_SKIP] / 1e9 or None,
        })  # fmt: skip
    return out
