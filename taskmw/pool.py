"""The local pool's shared state: everything made before the first fork and
used by every process of the pool.

:class:`Pool` holds the submit ring (tasks), one completion channel (a small
ring) per process that queues tasks, the worker table, the task record, a state page, the
spill directory for records too large for a ring, and the settings the
workers need. The process that builds it (:class:`taskmw.local.LocalTransport`)
forks the supervisor, which forks the workers; each is handed this object,
never the server. Its methods are the two ends of the carrying:
:meth:`push_task` (queue a task) and :meth:`send_finishes` (write outcomes back).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import shutil
import tempfile
import threading
import time
from typing import NamedTuple, NoReturn

from taskmw import _proc, records
from taskmw._shm import shared_map
from taskmw._table import WorkerTable
from taskmw.errors import PoolClosed, QueueFull
from taskmw.ring import Ring, RingFull
from taskmw.schedule import ScheduleState
from taskmw.settings import Settings
from taskmw.tasktable import TaskTable

log = logging.getLogger(__name__)

_SPIN_US = 0.0
"""Waiters of the pool's rings sleep at once: at web request rates a spin
before sleeping costs more CPU (taken from the HTTP workers on a small
machine) than the wake-up it saves."""

BACKLOG_FACTOR = 16
"""A completion channel's backlog holds this many times ``channel_bytes``
(memory is only touched as it is used)."""

RUNNING, STOPPED, RESTARTING = 0, 1, 2
"""The pool's state (its state page): taking tasks, stopped, or its
supervisor is being replaced."""

_SPILLED = 1
"""Word 1 of the state page (int64): bytes of queued tasks' spill files, by
the count of the processes that write and read them (see :meth:`Pool.reserve_spill`)."""
_RECOUNT_FULL = 0.2  # seconds: the least time between recounts of a spill directory that looks full
_RECOUNT_ANYWAY = 5.0  # seconds: recount at least this often while spilling (a count that drifted low)
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.ENOMEM, errno.EFBIG)
_spill_lock = threading.Lock()
"""The threads of one process take turns on the spill count (the file lock
only excludes other processes)."""


def _new_spill_lock() -> None:
    global _spill_lock
    _spill_lock = threading.Lock()  # a fork may have copied it held by another thread


os.register_at_fork(after_in_child=_new_spill_lock)


class PoolFiles(NamedTuple):
    """What a process that did not fork from a pool's builder needs to join
    it (see :meth:`Pool.files`, :mod:`taskmw._share`)."""

    fds: list[int]
    """Every memfd and eventfd of the pool, in :meth:`Pool.fds` order."""
    spill_dir: str
    scheduled_dir: str
    schedule_entries: int
    """How many periodic tasks the pool's schedule has (its shared state's size)."""
    owner: int
    """The pid of the process that built the pool."""


class Pool:
    """The shared memory, files and settings of one local pool.

    Args:
        settings: the pool's settings (sizes, limits, timeouts).
        files: join the pool these describe (received from its supervisor,
            see :meth:`attach`) instead of making a new one.
    """

    def __init__(self, settings: Settings, files: PoolFiles | None = None) -> None:
        self.settings = settings
        if not settings.builder_dumpable:
            # Before any memfd exists: only processes forked from here (and root) can reach them.
            _proc.make_undumpable()
        received = iter(files.fds) if files is not None else None

        def ring(capacity: int, slots: int, max_held: int) -> Ring:
            if received is None:
                return Ring(capacity, slots=slots, max_held=max_held, spin_us=_SPIN_US)
            return Ring.attach([next(received) for _ in range(2)], spin_us=_SPIN_US)

        def fd() -> int | None:
            return None if received is None else next(received)

        workers = settings.task_workers
        self.submit = ring(
            settings.queue_bytes,
            slots=settings.max_dispatchers + 2 * workers + 8,
            max_held=max(256, settings.task_concurrency + 128),
        )
        """The task queue: submit records of :mod:`taskmw.records`."""
        entries = len(settings.schedule) if files is None else files.schedule_entries
        self.schedule_channel = settings.max_dispatchers if entries else None
        """The completion channel of the schedule's runs, after the dispatchers' (``None``: no schedule).
        The supervisor claims it (see :mod:`taskmw.schedule`)."""
        channels = settings.max_dispatchers + (self.schedule_channel is not None)
        self.channels = [ring(settings.channel_bytes, slots=2 * workers + 8, max_held=1) for _ in range(channels)]
        """Completion channels, one per process that queues tasks (see :mod:`taskmw.channel`), and the schedule's."""
        self.backlogs = [
            ring(BACKLOG_FACTOR * settings.channel_bytes, slots=2 * workers + 8, max_held=1) for _ in range(channels)
        ]
        """One backlog per completion channel: finishes that did not fit in a
        full channel wait here, and the supervisor moves them on as the
        channel's process reads (see :mod:`taskmw.backlog`)."""
        self.table = WorkerTable(workers, fd())
        """One row of counters per worker, plus the supervisor's."""
        tasks_fds = None if received is None else [next(received) for _ in range(3)]
        self.tasks = TaskTable(settings.task_records, workers, settings.result_bytes, settings.result_ttl, tasks_fds)
        """The record of every task (see :mod:`taskmw.tasktable`)."""
        self.schedule = ScheduleState(entries, fd())
        """The history of the schedule's entries (see :mod:`taskmw.schedule`)."""
        self.page_fd, self.page = shared_map("state", mmap.PAGESIZE, fd())
        """The state page: ``page[0]`` is :attr:`state` (read directly on the hot path)."""
        self.spill_at = min(1 << 20, self.submit.max_record)
        """Tasks larger than this travel as files."""
        self.finish_spill_at = self.channels[0].max_record // 4
        """Finishes larger than this travel as files."""
        if files is None:
            where = settings.spill_dir or ("/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
            spill_dir = tempfile.mkdtemp(prefix="taskmw-", dir=where)  # mode 0700
            scheduled_dir = tempfile.mkdtemp(prefix="taskmw-scheduled-", dir=where)
        else:
            spill_dir, scheduled_dir = files.spill_dir, files.scheduled_dir
        self.spill_dir = spill_dir
        """Where spilled records live (removed by :meth:`remove_files`)."""
        self.scheduled_dir = scheduled_dir
        """Where the delayed tasks not due yet wait, a file each (see :mod:`taskmw.delayed`; removed
        by :meth:`remove_files`)."""
        self.words = memoryview(self.page).cast("q")
        """The state page as int64 words (word 0's first byte is :attr:`state`)."""
        lock_fd = os.memfd_create("taskmw-spill-count", os.MFD_CLOEXEC) if received is None else next(received)
        self.spill_lock = os.fdopen(lock_fd, "r+b", buffering=0)
        """A memfd whose POSIX lock (per process: a forked child holds none) guards the spill count
        (a file object: closed with the pool)."""
        self.recounted = 0.0  # time.monotonic() of this process's last recount of the spill directory
        self.owner = os.getpid() if files is None else files.owner
        """The pid of the process that built the pool (the supervisor's parent)."""
        self.own_channel: int | None = None
        """The completion channel this process has claimed (``None``: none)."""

    @classmethod
    def attach(cls, settings: Settings, files: PoolFiles) -> Pool:
        """The pool ``files`` describe, in a process that did not fork from
        its builder (a sibling HTTP worker): the same shared memory,
        queue and record, the builder's ``settings``. It queues like a
        forked process; it forks nothing. Owns the received fds."""
        return cls(settings, files)

    def fds(self) -> list[int]:
        """Every memfd and eventfd of the pool (borrowed), in the order
        :meth:`attach` takes them."""
        out: list[int] = []
        for ring in (self.submit, *self.channels, *self.backlogs):
            out.extend(ring.fds())
        out.append(self.table.fd)
        out.extend(self.tasks.fds)
        out.extend((self.schedule.fd, self.page_fd, self.spill_lock.fileno()))
        return out

    def files(self) -> PoolFiles:
        """What :meth:`attach` needs in another process (the fds are borrowed)."""
        return PoolFiles(self.fds(), self.spill_dir, self.scheduled_dir, len(self.schedule), self.owner)

    # -- state ------------------------------------------------------------------

    @property
    def state(self) -> int:
        """:data:`RUNNING`, :data:`STOPPED` or :data:`RESTARTING`."""
        return self.page[0]

    @state.setter
    def state(self, value: int) -> None:
        self.page[0] = value

    @property
    def supervisor_pid(self) -> int:
        """The pid of the supervisor now."""
        return self.table.supervisor_pid

    def check_open(self) -> None:
        """Raise :class:`PoolClosed` unless the pool takes tasks."""
        state = self.page[0]
        if state == RESTARTING:
            raise PoolClosed("the pool's supervisor died and is being restarted: try again in a moment")
        if state:
            raise PoolClosed("the task pool has stopped; no more tasks can be queued")

    # -- carrying -------------------------------------------------------------------

    def push_task(self, record: bytes, header: int) -> int:
        """Write a submit record into the task queue (as a file if it is
        large); returns its seq.

        Raises:
            ValueError: it is larger than ``max_payload_bytes``.
            QueueFull: the queue stayed full for ``queue_timeout`` seconds.
            PoolClosed: the supervisor is gone.
        """
        size = len(record)
        if size > self.spill_at:
            record = self.spill_task(record)
            header |= records.SPILLED
        try:
            return self.submit.push(record, aux=header, timeout=self.settings.queue_timeout)
        except RingFull:
            if records.is_spilled(header):
                records.discard(record)
                self.release_spill(size)
            self.raise_full()

    def raise_full(self) -> NoReturn:
        """A push into the task queue timed out: say why.

        Raises:
            PoolClosed: the supervisor is gone.
            QueueFull: else.
        """
        if not _proc.alive(self.supervisor_pid):
            raise PoolClosed(f"the pool's supervisor (pid {self.supervisor_pid}) is gone") from None
        raise QueueFull(
            f"the task queue stayed full for queue_timeout={self.settings.queue_timeout}s "
            f"({self.submit.stats().records} tasks waiting): the task was not queued"
        ) from None

    # -- spilled tasks -----------------------------------------------------------------

    def spill_task(self, record: bytes, timeout: float | None = None) -> bytes:
        """Write a task too large for a ring record to a file of the spill
        directory, waiting up to ``timeout`` (default ``queue_timeout``)
        seconds for room under ``spill_bytes``; returns the record that stands for it.

        Raises:
            ValueError: it is larger than ``max_payload_bytes`` or ``spill_bytes``.
            QueueFull: no room came within ``queue_timeout``, or the spill
                directory's file system is full (``ENOSPC``).
        """
        size, settings = len(record), self.settings
        for name in ("max_payload_bytes", "spill_bytes"):
            limit = getattr(settings, name)
            if size > limit:
                raise ValueError(f"the task is {size} bytes pickled, more than {name}={limit}")
        deadline = time.monotonic() + (settings.queue_timeout if timeout is None else timeout)
        while not self.reserve_spill(size):
            if time.monotonic() >= deadline:
                raise QueueFull(
                    f"the spilled tasks stayed over spill_bytes={settings.spill_bytes} for queue_timeout="
                    f"{settings.queue_timeout}s ({self.spilled_bytes()} bytes waiting in {self.spill_dir}, "
                    f"this task {size}): the task was not queued"
                )
            time.sleep(0.01)
        try:
            return records.spill(record, self.spill_dir, records.TASK_FILE)
        except OSError as exc:
            self.release_spill(size)
            if exc.errno in _NO_ROOM:
                raise QueueFull(
                    f"the spill directory {self.spill_dir} has no room for the task ({size} bytes pickled): "
                    f"{exc.strerror}; the task was not queued (see spill_dir, spill_bytes)"
                ) from None
            raise

    def spilled_bytes(self) -> int:
        """Bytes of queued tasks' files, by the shared count."""
        return max(0, self.words[_SPILLED])

    def reserve_spill(self, size: int) -> bool:
        """Count ``size`` more bytes of spilled tasks, if they fit under
        ``spill_bytes``; False if they do not (yet).

        The count is a word of the state page, changed under a file lock by
        whoever writes (:meth:`spill_task`) or reads (:meth:`release_spill`)
        a task's file. A process killed between a file and its count leaves
        it wrong, so when it says "full" (at most every 0.2 s), and every 5 s
        anyway, it is recounted from the directory (the ``task-*`` files'
        sizes, set in full before their bytes are written)."""
        bound = self.settings.spill_bytes
        with _spill_lock:
            fcntl.lockf(self.spill_lock.fileno(), fcntl.LOCK_EX)
            try:
                used = self.spilled_bytes()
                since = time.monotonic() - self.recounted
                if (used + size > bound and since > _RECOUNT_FULL) or since > _RECOUNT_ANYWAY:
                    used = self.recount_spill()
                if used + size > bound:
                    return False
                self.words[_SPILLED] = used + size
                return True
            finally:
                fcntl.lockf(self.spill_lock.fileno(), fcntl.LOCK_UN)

    def release_spill(self, size: int) -> None:
        """``size`` bytes of a spilled task's file are gone (read, or discarded)."""
        with _spill_lock:
            fcntl.lockf(self.spill_lock.fileno(), fcntl.LOCK_EX)
            try:
                self.words[_SPILLED] = max(0, self.words[_SPILLED] - size)
            finally:
                fcntl.lockf(self.spill_lock.fileno(), fcntl.LOCK_UN)

    def consume_spill(self, record: bytes) -> None:
        """A spilled task's file (``record`` is its path) is about to be read
        or discarded: uncount its size (nothing if it is gone)."""
        try:
            size = os.stat(os.fsdecode(record)).st_size
        except (OSError, ValueError):
            return
        self.release_spill(size)

    def recount_spill(self) -> int:
        """Set the count from the spill directory's task files (with the lock held)."""
        total = 0
        try:
            with os.scandir(self.spill_dir) as entries:
                for entry in entries:
                    if entry.name.startswith(records.TASK_FILE):
                        try:
                            total += entry.stat().st_size
                        except OSError:  # read meanwhile
                            pass
        except OSError:
            pass
        self.words[_SPILLED] = total
        self.recounted = time.monotonic()
        return total

    def send_finishes(self, reply: int, finishes: list[bytes], lazy: bool = False) -> int:
        """Write finish records into the completion channel ``reply``
        addresses (see :func:`taskmw.records.reply_to`); a large one travels
        as a file. What does not fit in a full channel goes into its backlog
        (see :mod:`taskmw.backlog`) without waiting; only when the backlog is
        full too, wait for room in either for as long as the channel's
        process lives. Finishes for a process that is gone are dropped at
        once. Returns how many were dropped. ``lazy``: those written into
        the channel wake nobody (the caller, a worker, wakes the channel's
        reader within ``finish_delay``; see :mod:`taskmw.worker`)."""
        index = records.channel_of(reply)
        channel, backlog = self.channels[index], self.backlogs[index]
        dropped = 0
        for header, left in self.grouped(reply, finishes):
            left = left[channel.try_push_many(left, aux=header, lazy=lazy) :]
            while left:
                if not self.channel_claimed(index):
                    self.discard(header, left)
                    dropped += len(left)
                    break
                left = left[backlog.try_push_many(left, aux=header) :]
                if not left:
                    break
                try:  # both full: the pool waits for that process (the backlog's bound)
                    channel.push_many(left, aux=header, timeout=0.1)
                    break
                except RingFull as full:
                    left = left[full.accepted :]
        return dropped

    def grouped(self, reply: int, finishes: list[bytes]) -> list[tuple[int, list[bytes]]]:
        """``finishes`` for the channel ``reply`` addresses, as ``(header,
        records)`` groups ready to push: the large ones written to files
        (each with the :data:`~taskmw.records.SPILLED` bit), the rest as they are."""
        header = reply & ~records.CHANNEL_MASK
        limit = self.finish_spill_at
        if all(len(r) <= limit for r in finishes):
            return [(header, finishes)]
        big = [records.spill(r, self.spill_dir) for r in finishes if len(r) > limit]
        small = [r for r in finishes if len(r) <= limit]
        return [(h, rs) for h, rs in ((header, small), (header | records.SPILLED, big)) if rs]

    @staticmethod
    def discard(header: int, finishes: list[bytes]) -> None:
        """Remove the files of finishes that will never be read."""
        if records.is_spilled(header):
            for r in finishes:
                records.discard(r)

    # -- completion channels ------------------------------------------------------------

    def try_claim(self, index: int) -> bool:
        """Claim channel ``index`` for this process (a POSIX record lock on its
        memfd, which dies with the process); False if a live process holds it."""
        try:
            fcntl.lockf(self.channels[index].memfd(), fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
        except OSError:
            return False
        self.own_channel = index
        return True

    def unclaim(self, index: int) -> None:
        """Give channel ``index`` up."""
        try:
            fcntl.lockf(self.channels[index].memfd(), fcntl.LOCK_UN, 1, 0)
        except OSError:
            pass
        if self.own_channel == index:
            self.own_channel = None

    def channel_claimed(self, index: int) -> bool:
        """True if a live process holds completion channel ``index``."""
        if self.own_channel == index:
            return True
        fd = self.channels[index].memfd()
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
        except OSError:
            return True
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, 0)
        return False

    def after_fork(self) -> None:
        """In a forked child: it holds no channel (locks are not inherited)."""
        self.own_channel = None

    def remove_files(self) -> None:
        """Remove the spill and scheduled directories (by the builder, once the pool stopped)."""
        shutil.rmtree(self.spill_dir, ignore_errors=True)
        shutil.rmtree(self.scheduled_dir, ignore_errors=True)
