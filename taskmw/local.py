"""The local pool as a :class:`~taskmw.interfaces.Transport`: tasks go into
the shared :class:`~taskmw.pool.Pool`, task workers forked by the pool's
supervisor run them, and finishes come back through this process's
:class:`~taskmw.channel.Channel`.

The process that builds it forks the supervisor (with the pool and a way to
fork workers, nothing else) and keeps a watchdog thread that forks a new
supervisor if that one dies while the pool runs. Every process forked later
from the builder (gunicorn's HTTP workers with ``--preload``) shares the pool,
and so does a sibling that joins it (the ``share`` setting, see
:mod:`taskmw._share`): it receives the pool's files from the supervisor and
forks nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from taskmw import _proc, _share, _table, delayed, records, schedule, supervisor, worker
from taskmw._codec import SPLIT_BYTE as _SPLIT_BYTE
from taskmw._table import ATTEMPT, SEQ, STARTED, TASK, TERMINATE
from taskmw.channel import Channel
from taskmw.errors import PoolClosed, UnknownTask
from taskmw.events import TaskError
from taskmw.info import TaskInfo
from taskmw.interfaces import Deliver, Registered, Server
from taskmw.pool import RESTARTING, RUNNING, STOPPED, Pool
from taskmw.records import FinishRecord
from taskmw.ring import Peeked, RingFull
from taskmw.settings import Settings
from taskmw.tasktable import PEEK_HEAD, TaskTable

log = logging.getLogger(__name__)
_running_loop = asyncio._get_running_loop  # noqa: SLF001 - the C getter, None outside a loop (send()'s hot path)

_NAMED_HERE = records.NAMED_HERE
_STABLE = 10.0
"""Seconds a supervisor must have run for its death to be restarted at once."""
_CANCEL_WAIT = 10.0
"""Seconds cancel() waits for a popped task's worker to take it (or for a terminated one to finish)."""
_CANCELLED_QUEUED = TaskError("Cancelled", "the task was cancelled before it ran", "")
_RECENT_SCAN = 4
_WANT = records.WANT
"""``tasks(limit)`` looks back through ``limit`` times this many ids for finished ones."""
_HELD_SCAN = 10_000
"""``tasks()`` reads the records of up to this many delayed tasks to list the soonest due."""


def _poll(get: Callable[[], TaskInfo], done: Callable[[TaskInfo], bool], timeout: float) -> TaskInfo:
    """``get()`` until ``done`` says so or ``timeout`` seconds pass (backing off to 20 ms)."""
    deadline, delay = time.monotonic() + timeout, 0.0005
    info = get()
    while not done(info) and time.monotonic() < deadline:
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
        info = get()
    return info


class LocalTransport:
    """A local pool: built (and its processes forked) when this is made.

    Args:
        settings: the pool's settings.
        server: what the tasks and hooks in the workers see as their server.
    """

    inline = False

    def __init__(self, settings: Settings, server: Server, **options: Any) -> None:
        if options:
            raise TypeError(f"the local pool got unexpected settings: {', '.join(sorted(options))}")
        self._group = _share.group_of(settings.share)
        self._host: _share.Host | None = None  # the builder of a shared pool: its socket, until forked
        self._member: socket.socket | None = None  # this process's membership of a shared pool
        self._member_lock = threading.Lock()
        self._joined: _share.Joined | None = None  # a sibling that joined the pool (it forks nothing)
        self._lost: str | None = None  # a joined pool whose supervisor is gone for good: why
        self._timeout = settings.shutdown_timeout  # close()'s
        got = None if self._group is None else _share.build_or_join(self._group)
        if isinstance(got, _share.Joined):
            self._joined, self._member = got, got.member
            pool_settings = got.settings  # the builder's, but for its schedule (not sent): this process's, if it fits
            if len(settings.schedule) == got.files.schedule_entries:
                pool_settings = dataclasses.replace(pool_settings, schedule=settings.schedule)
            try:
                self.pool = Pool.attach(pool_settings, got.files)
            except BaseException:
                got.member.close()  # (the fds not taken yet are left to the process's exit)
                raise
        else:
            self._host = got
            try:
                self.pool = Pool(settings)
            except BaseException:
                if got is not None:
                    got.close()
                raise
        schedule.pool_built()
        pool = self.pool
        self._push = pool.submit.push  # the hot path of send(), bound once
        self._push_below = pool.spill_at  # a larger task goes to a spill file (Pool.push_task)
        self._queue_timeout = settings.queue_timeout
        self._queued = pool.tasks.queued
        self._server = server
        self._deliver: Deliver | None = None
        self._channel: Channel | None = None
        self._claim_lock = threading.Lock()
        self._closed = False
        self._wake = threading.Event()  # set by close(): the watchdog stops waiting to restart
        self._restart_lock = threading.Lock()  # the watchdog's restart, or close()'s
        self._orphans: dict[int, int] = {}  # pid -> pidfd of a dead supervisor's worker, until reaped

    def _spawn_supervisor(self, adopted: list[supervisor.Orphan] | None = None) -> int:
        """Fork a supervisor (with the sharing socket of a shared pool: the
        first one's, or a new one for a replacement)."""
        pool, server = self.pool, self._server
        host = self._host
        if host is None and self._group is not None and adopted is not None:
            host = _share.Host.bind(self._group)  # None: another pool took the name meanwhile
        try:
            pid = supervisor.spawn(pool, lambda worker_id: worker.spawn(pool, server, worker_id), adopted or (), host)
        except BaseException:
            if host is not None:
                host.close()
            self._host = None
            raise
        with self._member_lock:
            if self._member is not None and adopted is not None:
                self._member.close()  # the dead supervisor's
                self._member = None  # (no name for the new one: the pool is this process's, stopped by close())
            if host is not None:
                host.forked()
                self._member = host.builder_end
        self._host = None
        return pid

    def _replace_supervisor(self) -> int:
        """Fork a new supervisor that adopts the workers of the dead one (with
        the restart lock held); returns its pid."""
        pool = self.pool
        adopted = supervisor.orphans(pool)  # with pidfd -1 for those gone: the supervisor reclaims what they held
        with_fd = [orphan for orphan in adopted if orphan.pidfd >= 0]
        try:
            pid = self._spawn_supervisor(adopted)
        except OSError:
            for orphan in with_fd:
                os.close(orphan.pidfd)
            raise
        pool.table.supervisor_pid = pid
        for orphan in with_fd:  # the new supervisor has its own copies; these are for reaping
            old = self._orphans.pop(orphan.pid, None)  # adopted again: its supervisor died too
            if old is not None:
                os.close(old)
            self._orphans[orphan.pid] = orphan.pidfd
        return pid

    def _reap_orphans(self, wait: float = 0.0) -> None:
        """Reap the workers of dead supervisors that have exited, waiting up
        to ``wait`` seconds for one. They are this process's children when it
        is PID 1 of a container (``docker run ... gunicorn``) or a child
        subreaper: then nobody else reaps them, and a zombie's ring slots are
        never reused. Otherwise their new parent reaps them and this only
        drops the pidfd."""
        with self._restart_lock:
            fds = list(self._orphans.values())
        if wait and fds:
            poller = select.poll()
            for fd in fds:
                poller.register(fd, select.POLLIN)
            poller.poll(int(wait * 1000))
        with self._restart_lock:
            for pid, fd in list(self._orphans.items()):
                if supervisor.ended(fd):
                    try:
                        os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG)
                    except ChildProcessError:  # not this process's child
                        pass
                    os.close(fd)
                    del self._orphans[pid]

    @property
    def supervisor_pid(self) -> int:
        """The pid of the process that owns the task workers."""
        return self.pool.supervisor_pid

    def _watch_supervisor(self) -> None:
        """In the builder: if the supervisor dies while the pool runs, fork a
        new one (its workers carry on with the queue; the old workers finish
        what they hold and exit). ``send()`` raises :class:`PoolClosed` in
        between. A failed fork is tried again after a capped exponential
        backoff, and so is the restart of a supervisor that died within
        ``_STABLE`` seconds of its start (a crash loop), one log line each."""
        pool = self.pool
        backoff = supervisor.Backoff()
        started = time.monotonic()
        while True:
            pid = pool.supervisor_pid
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                fd = -1
            try:
                while fd >= 0:  # until the supervisor dies, reaping the orphans that exit
                    poller = select.poll()  # not select(): the fds may be above FD_SETSIZE
                    poller.register(fd, select.POLLIN)
                    with self._restart_lock:
                        for orphan in self._orphans.values():
                            poller.register(orphan, select.POLLIN)
                    ready = [ready_fd for ready_fd, _ in poller.poll()]
                    self._reap_orphans()
                    if fd in ready:
                        break
            finally:
                if fd >= 0:
                    os.close(fd)
            try:
                _, status = os.waitpid(pid, os.WNOHANG)
                cause = supervisor.describe(status)
            except ChildProcessError:
                cause = "died"
            with self._restart_lock:
                if self._closed or pool.state or os.getpid() != pool.owner:
                    return
                pool.state = RESTARTING
            if time.monotonic() - started >= _STABLE:
                backoff.reset()
            delay = backoff.delay
            log.error(
                "the pool's supervisor (pid %d) died (%s): starting a new one%s",
                pid,
                cause,
                f" in {delay:.1f}s" if delay else "",
            )
            while True:
                if self._wake.wait(delay):
                    return  # closed: close() stops what is left
                with self._restart_lock:
                    if self._closed:
                        return
                    try:
                        self._replace_supervisor()
                    except OSError as exc:
                        delay = backoff.failed()
                        log.error("could not fork a new supervisor (%s): trying again in %.1fs", exc, delay)
                        continue
                    if pool.state == RESTARTING:
                        pool.state = RUNNING
                    break
            started = time.monotonic()
            backoff.failed()  # if this one dies soon too, wait before the next

    # -- the transport -------------------------------------------------------------

    def start(self, deliver: Deliver) -> None:
        """Fork the supervisor (which forks the workers) and start the
        watchdog; finishes go to ``deliver`` (the channel is claimed at the
        first send)."""
        self._deliver = deliver
        if self._joined is not None:
            watcher = threading.Thread(target=self._watch_membership, name="taskmw-member", daemon=True)
            watcher.start()
            return
        self.pool.table.supervisor_pid = self._spawn_supervisor()
        watchdog = threading.Thread(target=self._watch_supervisor, name="taskmw-watchdog", daemon=True)
        watchdog.start()

    def send(self, record: bytes, header: int, registered: Registered | None = None, name: bytes | None = None) -> int:
        """Queue one task in the pool; returns its seq (recorded as queued, under ``name``, if given)."""
        channel = self._channel
        if channel is None or channel.loop is not None:
            channel = self._channel_here()
        pool = self.pool
        if pool.page[0] or self._lost is not None:
            self._check_open()
        if header & records.DELAYED or registered is not None or len(record) > self._push_below:
            return self._send_slow(channel, record, header, registered, name)
        try:  # Pool.push_task's fast path, inlined: this is every task() call's
            # A task nobody waits for need not wake a worker that lingers (start_delay).
            seq = self._push(record, aux=header | channel.header, timeout=self._queue_timeout, soon=not header & _WANT)
        except RingFull:
            pool.raise_full()
        if name is not None and (header & _NAMED_HERE or record[:1] != _SPLIT_BYTE):
            self._queued(seq, name)  # else the worker that takes it records it (records.named_by_worker)
        return seq

    def _check_open(self) -> None:
        """Raise :class:`PoolClosed` if the pool is not taking tasks (read
        from the state page) or this joined pool lost its supervisor."""
        self.pool.check_open()
        if self._lost is not None:
            raise PoolClosed(self._lost)

    def _channel_here(self) -> Channel:
        """This process's channel, claimed if not yet; read here first when
        its reader is this thread's event loop (or moved to a thread if that loop closed)."""
        channel = self._channel
        if channel is None:
            return self._claim()
        if channel.loop is not None:
            if channel.loop.is_closed():
                channel.move_to_thread()
            elif len(channel.ring) and _running_loop() is channel.loop:
                channel.read_here()  # finishes waiting for this loop: no wake-up needed
        return channel

    def _send_slow(
        self, channel: Channel, record: bytes, header: int, registered: Registered | None, name: bytes | None
    ) -> int:
        """:meth:`send` of a delayed task, a spilled one, or one whose seq is registered first."""
        pool = self.pool
        seq = pool.push_task(record, header | channel.header)
        if name is not None:
            pool.tasks.queued(seq, name)
        if header & records.OPTS:
            options = records.options_of(record, header)
            if header & records.DELAYED:
                pool.tasks.scheduled(seq, options.due)
            if options.left or options.attempt > 1:  # the supervisor must know it may run again
                pool.tasks.retriable(records.task_id_of(seq, options.task_id), options.attempt, options.left)
        if registered is not None:
            registered(seq)
        return seq

    def wait_here(self, done: Callable[[], bool], timeout: float | None) -> bool:
        """Wait until ``done()`` reading this process's channel on the calling
        thread (see :meth:`Channel.wait`), if its reader is a thread and this
        is not a thread that delivers now (a hook waiting for a task); False if not."""
        channel = self._channel
        if channel is None or channel.thread is None or channel.reads_here:
            return False
        if channel.thread is threading.current_thread():
            return False
        channel.wait(done, timeout)
        return True

    # -- the record of tasks ----------------------------------------------------------

    def status(self, task_id: int) -> TaskInfo:
        """The record of ``task_id`` (see :meth:`taskmw.TaskServer.status`)."""
        issued, queue_start = self._bounds()
        return self.pool.tasks.info(task_id, issued, queue_start, self._running().get(task_id), self._peek, wait=True)

    def _peek(self, first_seq: int, n: int) -> list[Peeked]:
        """Queued records from ``first_seq`` on, with what a name needs of their payloads (a :data:`Peek`)."""
        return self.pool.submit.peek(first_seq, n, PEEK_HEAD)

    def _running(self) -> dict[int, tuple[int, int, float]]:
        """What the workers run now (from the worker table): id -> (worker, attempt, started_at)."""
        table = self.pool.table
        words, out = table.words, {}
        now, now_ns = time.time(), time.monotonic_ns()
        for worker_id in range(self.pool.settings.task_workers):
            row = table.row(worker_id)
            task_id = words[row + TASK]
            if task_id:
                started = now - (now_ns - words[row + STARTED]) / 1e9
                out[task_id] = (worker_id, words[row + ATTEMPT] or 1, started)
        return out

    def _bounds(self) -> tuple[int, int]:
        """The next seq the queue will give, and the first still queued."""
        stats = self.pool.submit.stats()
        return stats.next_seq, stats.next_seq - stats.records

    def name_of(self, task_id: int) -> str:
        """What the record calls ``task_id``."""
        return self.pool.tasks.name_of(task_id)

    def outcome(self, task_id: int) -> FinishRecord | None:
        """The kept finish record of a finished task (None: not kept, or evicted)."""
        return self.pool.tasks.finish_record(task_id)

    def cancel(self, task_id: int, terminate: bool = False) -> bool:
        """See :meth:`taskmw.TaskServer.cancel`."""
        pool = self.pool
        tasks = pool.tasks
        info = self.status(task_id)
        if info.state == "done":
            return False
        if pool.submit.mark(task_id, records.CANCEL):
            # Still queued: the worker that pops it sends its one finish; the record says so now.
            tasks.finished(task_id, records.CANCELLED, 0, _CANCELLED_QUEUED)
            return True
        tasks.request_cancel(task_id)  # popped: its worker checks before it starts it (or hands it to the scheduler)
        if info.scheduled_for is not None and delayed.cancel(pool.scheduled_dir, task_id, pool.supervisor_pid):
            tasks.finished(task_id, records.CANCELLED, 0, _CANCELLED_QUEUED)  # the supervisor sends its finish
            return True
        if self._taken_behind(task_id):
            tasks.finished(task_id, records.CANCELLED, 0, _CANCELLED_QUEUED)  # its worker sends its one finish
            return True
        info = _poll(lambda: self.status(task_id), lambda i: i.state not in ("queued", "scheduled"), _CANCEL_WAIT)
        if info.state == "done":
            return info.status == "cancelled"
        if not terminate or info.state != "running":
            return False
        running = self._running().get(task_id)
        if running is None:
            return False
        table = pool.table
        row = table.row(running[0])
        table.words[row + TERMINATE] = table.words[row + SEQ]
        info = _poll(lambda: self.status(task_id), lambda i: i.state == "done", _CANCEL_WAIT)
        return info.state == "done" and info.status == "cancelled"

    def _taken_behind(self, seq: int) -> bool:
        """After a cancel request for ``seq``: True if a worker holds it in
        its batch behind the task it runs now, so it will read the request
        before it could start it (a worker writes a task's seq in its row
        before it reads that task's cancel request: a row still at an
        earlier seq of the batch, read after the request, has not read it)."""
        time.sleep(0.001)  # the request, written just before, has left this core's store buffer
        table = self.pool.table
        words = table.words
        for worker_id in range(self.pool.settings.task_workers):
            row = table.row(worker_id)
            end, now = words[row + _table.BATCH_END], words[row + SEQ]
            if words[row + _table.STATE] == _table.BUSY and now < seq < end:
                return True
        return False

    def tasks(self, limit: int = 50) -> dict[str, list[TaskInfo]]:
        """Queued, running and recently finished tasks (up to ``limit`` each)."""
        issued, queue_start = self._bounds()
        tasks, now = self.pool.tasks, self._running()
        running = [i for i in (self._try(tasks, t, issued, queue_start, now) for t in sorted(now)) if i is not None]
        queued = tasks.scan(range(queue_start, issued), issued, queue_start, limit, now, self._peek)
        back = max(0, issued - 1 - _RECENT_SCAN * limit)
        recent = tasks.scan(range(issued - 1, back, -1), issued, queue_start, limit, now)
        # Taken out of the queue in a worker's batch, behind the task it runs now: still queued.
        taken = [i for i in reversed(recent) if i.state == "queued" and i.task_id < queue_start]
        held_ids = delayed.held(self.pool.scheduled_dir)
        held = tasks.scan(held_ids, issued, queue_start, min(len(held_ids), _HELD_SCAN), now)
        # A delayed task a worker took out of the queue and has not yet handed to the scheduler (its file is
        # not there yet) is among the recent ones: still scheduled.
        scheduled = {i.task_id: i for i in [*held, *queued, *recent] if i.state == "scheduled"}
        return {
            "scheduled": sorted(scheduled.values(), key=lambda i: i.scheduled_for or 0.0)[:limit],
            "queued": [*taken, *(i for i in queued if i.state == "queued")][:limit],
            "running": running,
            "done": [i for i in recent if i.state == "done"],
        }

    @staticmethod
    def _try(
        tasks: TaskTable, task_id: int, issued: int, queue_start: int, running: dict[int, tuple[int, int, float]]
    ) -> TaskInfo | None:
        try:
            return tasks.info(task_id, issued, queue_start, running.get(task_id))
        except UnknownTask:
            return None

    def _claim(self) -> Channel:
        """Claim a completion channel (once per process) and start its reader:
        on the running event loop if there is one, else on a thread (and on
        a thread from the time that loop closes)."""
        with self._claim_lock:
            channel = self._channel
            if channel is not None:
                return channel
            assert self._deliver is not None, "start() was not called"
            channel = Channel.claim(self.pool, self._deliver)
            channel.start_reader()
            self._channel = channel
            return channel

    def pending(self) -> int:
        """Finish records in this process's channel not read yet."""
        channel = self._channel
        return 0 if channel is None else channel.unread

    @property
    def reader_loop(self) -> Any:
        """The event loop reading this process's finishes (``None``: a thread,
        or none yet). A closed loop's reader is moved to a thread first."""
        channel = self._channel
        if channel is None:
            return None
        if channel.stale:
            channel.move_to_thread()
        return channel.loop

    @property
    def closed(self) -> bool:
        """True once the pool stopped taking tasks."""
        return self._closed or self.pool.state == STOPPED or self._lost is not None

    @property
    def stops_delayed(self) -> bool:
        """True in the process that built the pool: closing it cancels the
        delayed tasks not due yet (elsewhere, leaving does not)."""
        return os.getpid() == self.pool.owner

    def alive(self) -> bool:
        """True while the pool's supervisor runs."""
        return _proc.alive(self.pool.supervisor_pid)

    def stats(self) -> dict[str, Any]:
        """Workers, totals and queue depth (see :meth:`taskmw.TaskServer.stats`)."""
        out = self.pool.table.snapshot()
        out["supervisor_pid"] = self.pool.supervisor_pid
        out["task_workers"] = self.pool.settings.task_workers
        out["queue_depth"] = self.pool.submit.stats().records
        out["schedule"] = schedule.schedule_snapshot(self.pool)
        return out

    def reload(self) -> None:
        """Have every worker make way for a fresh one."""
        if self.closed:
            raise PoolClosed("the task pool has stopped")
        self.pool.table.bump_generation()

    def close(self, timeout: float) -> None:
        """Take no more tasks; in the builder, stop the supervisor (it drains
        the queue for up to ``timeout`` seconds, then cancels the rest). A
        member of a shared pool leaves it in :meth:`stop_receiving` instead,
        once its own tasks have finished; the last to leave stops it."""
        self._closed = True
        self._wake.set()
        self._timeout = timeout
        if os.getpid() == self.pool.owner and self._member is None:
            self._stop_supervisor(timeout)
            self._reap_orphans(wait=1.0)  # the supervisor waited for them (or killed them)

    def _stop_supervisor(self, timeout: float) -> None:
        """Stop the supervisor (it drains the queue). One that is dead, or
        dies while stopping, leaves workers that still run what they hold and
        a queue of tasks: a new one adopts them and stops the pool in its
        place."""
        words = self.pool.table.words
        for _ in range(3):
            with self._restart_lock:
                self.pool.state = STOPPED
                pid = self.pool.supervisor_pid
                if not _proc.alive(pid):
                    try:
                        os.waitpid(pid, os.WNOHANG)
                    except ChildProcessError:
                        pass
                    log.warning("the pool's supervisor (pid %d) is dead: starting one to stop the pool", pid)
                    try:
                        pid = self._replace_supervisor()
                    except OSError as exc:
                        log.error("could not fork a supervisor to stop the pool (%s): its tasks are left", exc)
                        return
            if self._wait_stopped(pid, timeout) or words[self.pool.table.sup + _table.STOPPED_BY] == pid:
                return

    def _wait_stopped(self, pid: int, timeout: float, stop: bool = True) -> bool:
        """SIGTERM supervisor ``pid`` (unless ``stop`` is false: it stops by
        itself) and wait until it exits; True if it had to be killed (it did
        not stop within ``timeout`` seconds and 5 more)."""
        try:
            os.kill(pid, signal.SIGTERM if stop else 0)
        except ProcessLookupError:
            return False
        killed = False
        deadline = time.monotonic() + timeout + 5.0
        while True:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else (an app server's arbiter)
                done = pid if not _proc.alive(pid) else 0
            if done:
                return killed
            if time.monotonic() > deadline:
                log.error("supervisor %d did not stop within %.1fs: killing it", pid, timeout + 5.0)
                os.kill(pid, signal.SIGKILL)
                killed = True
                deadline = time.monotonic() + 5.0
            time.sleep(0.01)

    def stop_receiving(self) -> None:
        """Stop this process's reader; the builder removes the pool's files."""
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.stop()
        if self._member is not None:
            self._leave()
        if os.getpid() == self.pool.owner and self.pool.state == STOPPED:
            self.pool.remove_files()

    # -- a shared pool ----------------------------------------------------------------

    def _leave(self) -> None:
        """Leave a shared pool (its supervisor sees the membership close). The
        builder, if it was the last member, waits for the pool to stop."""
        words, members = self.pool.table.words, self.pool.table.sup + _table.MEMBERS
        before = words[members]
        with self._member_lock:
            member, self._member = self._member, None
        if member is None:
            return
        try:
            member.shutdown(socket.SHUT_RDWR)  # wakes the watcher thread, which is then done
        except OSError:
            pass
        member.close()
        if os.getpid() != self.pool.owner:
            return
        pid, deadline = self.pool.supervisor_pid, time.monotonic() + 2.0
        while words[members] == before and self.pool.state != STOPPED and time.monotonic() < deadline:
            if not _proc.alive(pid):
                break
            time.sleep(0.01)
        if self.pool.state == STOPPED or words[members] == 0 or not _proc.alive(pid):
            self._wait_stopped(pid, self._timeout, stop=False)
            self._reap_orphans(wait=1.0)

    def _watch_membership(self) -> None:
        """In a sibling that joined a shared pool: if the supervisor dies, join
        the one that replaces it (the builder's watchdog starts it); if none
        comes, or another pool now holds the name (the builder is gone too),
        the pool is lost and :meth:`send` raises :class:`PoolClosed`."""
        joined, group = self._joined, self._group
        assert joined is not None and group is not None
        while True:
            poller = select.poll()
            with self._member_lock:
                member = self._member
                if member is None:
                    return
                poller.register(member, select.POLLIN | select.POLLHUP)
            poller.poll()  # _leave() shuts it down before it closes it
            with self._member_lock:
                if self._member is not member or self._closed:
                    return
            supervisor_pid = self.pool.supervisor_pid
            why = self._rejoin(group, joined.pool_id, member)
            if why is not None:
                self._lost = (
                    f"the shared pool's supervisor (pid {supervisor_pid}) is gone and {why}: "
                    "no more tasks can be queued (restart this process to build a new pool)"
                )
                log.error("taskmw: %s", self._lost)
                return

    def _rejoin(self, group: _share.Group, pool_id: int, old: socket.socket) -> str | None:
        """Join the supervisor that replaced a dead one; why not (``None``: done)."""
        deadline = time.monotonic() + 3 * _STABLE
        while time.monotonic() < deadline and not self._closed:
            if not _proc.alive(self.pool.owner):
                return f"so is the process that built it (pid {self.pool.owner}), which would start a new one"
            try:
                again = _share.join(group)
            except (OSError, ValueError) as exc:
                again, error = None, exc
            else:
                error = None
            if again is not None:
                _share.close_fds(again.files.fds)
                if again.pool_id != pool_id:
                    again.member.close()
                    return "another pool has its name now"
                with self._member_lock:
                    if self._member is old:
                        old.close()
                        self._member = again.member
                        return None
                again.member.close()
                return None
            if isinstance(error, _share.Refused):
                return f"its replacement refused this process ({error})"
            time.sleep(0.2)
        return f"no supervisor replaced it within {3 * _STABLE:.0f}s"

    def after_fork(self) -> None:
        """In a forked child: no channel claimed, no reader."""
        self._channel = None
        self._claim_lock = threading.Lock()
        for fd in self._orphans.values():
            os.close(fd)
        self._orphans = {}
        self._restart_lock = threading.Lock()
        self.pool.after_fork()
