"""The pool's settings: one type with every setting's default and check,
used by every backend (local pool, eager, Celery) and by ``taskmw start``'s
configuration table (:mod:`taskmw.config`).

A :class:`Settings` is checked when it is made, so a bad value raises
``ValueError`` naming the setting where the caller gave it, before any
process is forked.
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskmw.schedule import MissedRuns, Periodic

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(IB|I|B)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(name: str, value: object) -> int:
    """Bytes from an int or a string with an optional K, M, G or T suffix
    (powers of 1024 whether written ``M``, ``MB`` or ``MiB``: ``"500MB"``,
    ``"1.5GiB"``).

    Raises:
        ValueError: naming ``name`` and the value.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"{name} must be bytes (an int, or a size such as '500MB', '1.5GiB'), got {value!r}")
    return int(float(match[1]) * _UNITS[match[2].upper()])


_SHARE_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


def check_int(name: str, value: object, lo: int, hi: int) -> None:
    """Raise ``ValueError`` unless ``value`` is an int in ``lo..hi``."""
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an int in {lo}..{hi}, got {value!r}")


def check_seconds(name: str, value: object, *, positive: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is a number of seconds (>= 0, or > 0)."""
    lo = "> 0" if positive else ">= 0"
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not 0 <= value < 1e9
        or (positive and value == 0)
    ):
        raise ValueError(f"{name} must be a number of seconds {lo}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every setting of a pool, with its default and its check (the
    arguments of :class:`taskmw.TaskServer` of the same names);
    ``docs/configuration.md`` lists them with their ``taskmw start`` flags
    and environment variables.

    Attributes:
        task_workers: worker processes (N tasks run at once; 1 gives strict
            FIFO order).
        queue_bytes: size of the task queue (shared memory, allocated as used).
        queue_timeout: seconds ``task()`` waits for room in a full queue
            before raising :class:`~taskmw.QueueFull`.
        task_concurrency: ``async def`` tasks one worker runs at once.
        shutdown_timeout: seconds :meth:`close` lets queued tasks run before
            the rest finish ``cancelled``.
        max_dispatchers: processes that may queue tasks at once (each
            claims a completion channel; a dead one's is reused).
        channel_bytes: size of each process's completion channel.
        task_records: tasks the pool's record keeps (the last this many
            ids; :meth:`status`, :meth:`result`).
        result_bytes: memory for kept results, for the whole pool (oldest
            evicted first; a result larger than a quarter of one worker's
            share is not kept).
        result_ttl: seconds a finished task's record and result are kept.
        finish_delay: (local pool) seconds, at most 1, the finish of a
            task nobody waits for may wait before the process that queued
            it is woken to deliver it (``on_finish`` hooks), so that a busy
            pool wakes that process once per batch of finishes, not once
            per finish (0: at once). A finish somebody waits for
            (``taskwait``, ``taskwait_multi``, ``task_async``) is delivered
            at once whatever this says.
        start_delay: (local pool) seconds, at most 1, a task nobody waits
            for may wait before a task worker takes it, when tasks come
            often (more than one per ``10 * start_delay``): a task worker
            that keeps finding work *lingers* this long before it sleeps,
            and a task queued meanwhile wakes no process (the lingering
            worker takes it when its linger ends), so a pool under web
            request rates wakes a worker once per several tasks, not once
            per task (0: every task wakes a sleeping worker at once). A
            task somebody waits for (``taskwait``, ``task_async``, …)
            wakes a worker at once whatever this says.
        wait_spin: (local pool) seconds, at most 0.01, a thread blocked in
            ``taskwait`` or ``taskwait_multi`` polls its finishes before it
            sleeps, so that the finish of a short task reaches it without a
            wake-up (the CPU of that thread, otherwise idle, for at most
            this long per wait: only its first sleep is preceded by the
            spin; 0: it sleeps at once). ``task_async`` and
            the finish reader never spin.
        task_timeout: seconds a task may run (``None``: no limit). A task
            over it finishes ``timeout``: a sync task's worker is killed and
            replaced, an async task is cancelled. Per task:
            ``task(Task(fn, ...), task_timeout=s)``.
        retries: times a task that finished ``error``, ``lost`` or
            ``timeout`` is run again (for idempotent work; per task:
            ``task(Task(fn, ...), retries=n)``). Its finish event says how
            many ``attempts`` ran.
        retry_backoff: seconds before the first retry, doubling after each.
        max_tasks_per_worker: a worker that ran this many tasks is replaced
            by a fresh one (``None``: never), to bound leaks.
        max_payload_bytes: largest task (pickled) ``task()`` accepts.
            Tasks and results too large for the rings travel as files in a
            private directory (on ``/dev/shm`` when there is one).
        spill_dir: where that private directory is made (``None``:
            ``/dev/shm`` if writable, else the temp directory).
        spill_bytes: bound on the queued tasks' files in it (``/dev/shm``
            is memory): past it ``task()`` waits ``queue_timeout`` for room,
            then raises :class:`~taskmw.QueueFull`, as for a full queue.
        record_arguments: keep each task's pickled arguments in the record
            too (its worker copies them into its result arena, about 0.5 µs
            a task), so that ``status(id).arguments`` and the dashboard show
            their repr; off by default.
        builder_dumpable: leave the process that builds a local pool (and
            the HTTP workers it forks later) dumpable. By default it is made
            non-dumpable (``PR_SET_DUMPABLE`` 0), as the supervisor and task
            workers always are, so that no other process of the same user
            can open the pool's memfds through ``/proc/<pid>/fd``; that also
            stops same-user debuggers (py-spy, gdb), core dumps and reading
            its ``/proc/<pid>/environ``. ``True`` keeps those, and lets every
            process of the user reach the pool through the builder.
        share: which processes that did not fork from one another share
            one pool. ``"auto"``: the HTTP workers of an app server that
            imports the app in each worker (gunicorn without ``--preload``,
            ``uvicorn --workers N``) share the pool the first of them
            builds; anywhere else (a script, ``--preload``, ``taskmw
            start``) the pool is this process's and its forked children's.
            ``"never"``: each such worker builds its own. Any other string
            names a group (letters, digits, ``.``, ``_``, ``-``; up to 64):
            every process of the user that builds a pool with that name
            joins the same one (another app server's workers, your own
            prefork). See README, "Topologies".
        max_worker_memory: bytes (or a size such as ``"500MB"``): after a
            task, a worker whose resident memory is over it exits and is
            replaced by a fresh one (``None``: never), to bound leaks.
        schedule: the pool's periodic tasks (:class:`taskmw.Periodic`
            entries), run by its supervisor, once per due time per pool (see
            :mod:`taskmw.schedule`). :class:`taskmw.TaskServer` gives the
            ``@taskmw.periodic`` functions when it is not given one.
        missed_runs: what a supervisor does with the due times that passed
            while none ran (a dead one being replaced; with ``schedule_file``,
            the pool stopped): ``"once"`` runs each entry once at once,
            ``"skip"`` waits for the next due time.
        schedule_file: a file in which the supervisor keeps each periodic
            entry's last due time, so that a pool started anew goes on from
            it (``missed_runs`` then applies to what was due while the pool
            was stopped); ``None``: a new pool begins with the next due time.

    Raises:
        ValueError: a setting is out of range (the message names it).
    """

    task_workers: int = 4
    queue_bytes: int = 16 << 20
    queue_timeout: float = 5.0
    task_concurrency: int = 100
    shutdown_timeout: float = 30.0
    max_dispatchers: int = 32
    channel_bytes: int = 1 << 20
    task_records: int = 100_000
    result_bytes: int = 64 << 20
    result_ttl: float = 3600.0
    finish_delay: float = 0.005
    start_delay: float = 0.005
    wait_spin: float = 0.0001
    task_timeout: float | None = None
    retries: int = 0
    retry_backoff: float = 0.5
    max_tasks_per_worker: int | None = None
    max_payload_bytes: int = 128 << 20
    spill_dir: str | None = None
    spill_bytes: int = 256 << 20
    builder_dumpable: bool = False
    record_arguments: bool = False
    share: str = "auto"
    max_worker_memory: int | None = None
    schedule: tuple[Periodic, ...] = ()
    missed_runs: MissedRuns = "once"
    schedule_file: str | None = None

    def __post_init__(self) -> None:
        check_int("task_workers", self.task_workers, 1, 1024)
        check_int("task_concurrency", self.task_concurrency, 1, 10000)
        check_int("max_dispatchers", self.max_dispatchers, 1, 4096)
        check_int("queue_bytes", self.queue_bytes, 4096, 1 << 40)
        check_int("channel_bytes", self.channel_bytes, 4096, 1 << 40)
        check_int("task_records", self.task_records, 16, 1 << 28)
        check_int("result_bytes", self.result_bytes, 4096, 1 << 40)
        check_seconds("result_ttl", self.result_ttl, positive=True)
        check_seconds("queue_timeout", self.queue_timeout)
        check_seconds("finish_delay", self.finish_delay)
        if self.finish_delay > 1.0:
            raise ValueError(f"finish_delay must be at most 1 second, got {self.finish_delay!r}")
        check_seconds("start_delay", self.start_delay)
        if self.start_delay > 1.0:
            raise ValueError(f"start_delay must be at most 1 second, got {self.start_delay!r}")
        check_seconds("wait_spin", self.wait_spin)
        if self.wait_spin > 0.01:
            raise ValueError(f"wait_spin must be at most 0.01 second, got {self.wait_spin!r}")
        check_seconds("shutdown_timeout", self.shutdown_timeout)
        check_seconds("retry_backoff", self.retry_backoff)
        check_int("retries", self.retries, 0, 1000)
        check_int("max_payload_bytes", self.max_payload_bytes, 1, 1 << 40)
        check_int("spill_bytes", self.spill_bytes, 1, 1 << 40)
        if not isinstance(self.record_arguments, bool):
            raise ValueError(f"record_arguments must be True or False, got {self.record_arguments!r}")
        if not isinstance(self.builder_dumpable, bool):
            raise ValueError(f"builder_dumpable must be True or False, got {self.builder_dumpable!r}")
        if self.schedule_file is not None and (not isinstance(self.schedule_file, str) or not self.schedule_file):
            raise ValueError(f"schedule_file must be a file's path or None, got {self.schedule_file!r}")
        if self.spill_dir is not None and (not isinstance(self.spill_dir, str) or not self.spill_dir):
            raise ValueError(f"spill_dir must be a directory's path or None, got {self.spill_dir!r}")
        if not isinstance(self.share, str) or not _SHARE_NAME.fullmatch(self.share):
            raise ValueError(
                f"share must be 'auto', 'never' or a group name (1 to 64 letters, digits, '.', '_', '-'), "
                f"got {self.share!r}"
            )
        if self.task_timeout is not None:
            check_seconds("task_timeout", self.task_timeout, positive=True)
        if self.max_worker_memory is not None:
            memory = parse_size("max_worker_memory", self.max_worker_memory)
            check_int("max_worker_memory", memory, 1 << 20, 1 << 50)
            object.__setattr__(self, "max_worker_memory", memory)
        from taskmw.schedule import MISSED_RUNS, schedule_of  # it imports the records, which import this module

        if self.missed_runs not in MISSED_RUNS:
            raise ValueError(f"missed_runs must be 'once' or 'skip', got {self.missed_runs!r}")
        object.__setattr__(self, "schedule", schedule_of(self.schedule))
        if self.max_tasks_per_worker is not None:
            check_int("max_tasks_per_worker", self.max_tasks_per_worker, 1, 1 << 62)
        for name in (
            "queue_timeout",
            "shutdown_timeout",
            "retry_backoff",
            "task_timeout",
            "result_ttl",
            "finish_delay",
            "start_delay",
            "wait_spin",
        ):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, float(value))

    @classmethod
    def names(cls) -> frozenset[str]:
        """The name of every setting."""
        return frozenset(f.name for f in dataclasses.fields(cls))

    @classmethod
    def default(cls, name: str) -> Any:
        """The default value of setting ``name``."""
        return next(f.default for f in dataclasses.fields(cls) if f.name == name)
