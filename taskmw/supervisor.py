"""The supervisor: the one process that forks, watches and stops a pool's
task workers.

The process that builds a local pool forks the supervisor,
and the supervisor forks the workers, so an app server that reaps every
child of its own (gunicorn's arbiter) never reaps a task worker. Like
gunicorn's arbiter it acts on signals in one loop: SIGCHLD (a worker died:
its held tasks finish ``lost`` and a new worker takes its place) and SIGTERM
(stop: every worker drains the queue, then exits). It also stops when the
process that built the pool is gone.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import sys
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

from taskmw import _proc, _table, _title, delayed, records
from taskmw._share import Host
from taskmw._table import (
    ASYNC_DEADLINE,
    ASYNC_LIMIT,
    ASYNC_SEQ,
    DEADLINE,
    PID,
    RESTARTS,
    ROW,
    SEQ,
    START,
    STARTING,
    STATE,
    TASK,
    TERMINATE,
)
from taskmw.backlog import Backlogs
from taskmw.events import TaskError
from taskmw.pool import STOPPED, Pool
from taskmw.records import CANCELLED, LOST, TIMEOUT
from taskmw.retries import RETRIED
from taskmw.ring import Held, RingFull
from taskmw.schedule import Scheduler

_TERMINATED = TaskError("Cancelled", "the task was cancelled while it ran; its worker was replaced", "")
_CANCELLED_DELAYED = TaskError("Cancelled", "the task was cancelled before it ran", "")
_STOPPED_DELAYED = TaskError("Cancelled", "the pool stopped before the delayed task was due", "")

StartWorker = Callable[[int], int]
"""Forks task worker ``worker_id`` and returns its pid (see :func:`taskmw.worker.spawn`)."""

log = logging.getLogger(__name__)

_WATCHED = {signal.SIGCHLD, signal.SIGTERM, delayed.WAKE}
_TICK = 0.1  # seconds between checks of time limits and that the pool's builder is alive
_BUSY_TICK = 0.01  # the same while finishes wait in a backlog (see taskmw.backlog)
_SETTLE = 3.0  # seconds a stopping supervisor keeps moving backlogged finishes to processes that read them
ASYNC_GRACE = 1.0
"""Seconds an async task past its time limit has to end (its event loop
cancels it at the limit) before the supervisor kills its worker: the loop is
blocked (a sync call inside ``async def``) or the task ignores
``CancelledError``."""


class Backoff:
    """Capped exponential delays between the attempts of something that
    fails for a while (``fork()`` at the process limit): 0 before the first
    failure, then ``first``, doubling up to ``cap``."""

    def __init__(self, first: float = 0.1, cap: float = 5.0) -> None:
        self.first, self.cap = first, cap
        self.delay = 0.0
        """The wait before the next attempt."""

    def failed(self) -> float:
        """One more failure: the (longer) wait before the next attempt."""
        self.delay = min(self.cap, self.delay * 2 if self.delay else self.first)
        return self.delay

    def reset(self) -> None:
        """It worked: the next failure starts from ``first`` again."""
        self.delay = 0.0


class Orphan(NamedTuple):
    """A task worker whose supervisor died, for the next supervisor to adopt."""

    worker_id: int
    pid: int
    pidfd: int
    """A pidfd of the process (-1: it was gone already)."""


def orphans(pool: Pool) -> list[Orphan]:
    """The workers in ``pool``'s worker table, with a pidfd each: in the
    builder, after its supervisor died and before the next one starts. A
    worker keeps its row until it is gone, so this finds the workers of every
    supervisor that died, not only the last one's. A pid that now names a
    process without the pool's ring mapped is someone else's and is left out."""
    words, me = pool.table.words, os.getpid()
    ring = os.fstat(pool.submit.memfd()).st_ino
    found = []
    for worker_id in range(pool.settings.task_workers):
        pid = words[worker_id * ROW + PID]
        if pid <= 0 or pid == me:
            continue
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            found.append(Orphan(worker_id, pid, -1))  # gone (reaped by someone else): reclaim what it held
            continue
        mapped = ended(fd) or _proc.maps_inode(pid, ring)
        if mapped is None:  # not dumpable and this process unprivileged: its start time says if it is that worker
            start = words[worker_id * ROW + START]
            mapped = not start or _proc.start_ticks(pid) == start  # 0: it died before writing it
        if mapped:
            found.append(Orphan(worker_id, pid, fd))
        else:
            os.close(fd)
    return found


def ended(pidfd: int, timeout: float = 0.0) -> bool:
    """True once the process of ``pidfd`` has exited (a zombie or reaped),
    waiting up to ``timeout`` seconds."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(int(timeout * 1000)))


def spawn(pool: Pool, start_worker: StartWorker, adopted: Iterable[Orphan] = (), host: Host | None = None) -> int:
    """Fork the supervisor of ``pool``, which starts its workers with
    ``start_worker`` and takes over the ``adopted`` workers of a dead one;
    returns its pid (in the caller). With ``host``, it also hands the pool
    to sibling processes (see :mod:`taskmw._share`) and stops when every
    member has left, not when its builder is gone."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    # Fork with SIGTERM and SIGCHLD blocked, so that a close() right after the
    # fork cannot kill the supervisor before it has started its workers: the
    # signal waits, pending, for the supervisor's loop.
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _WATCHED)
    try:
        pid = os.fork()
    except OSError:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        raise
    if pid:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        return pid
    code = 1
    try:
        _proc.make_undumpable()  # no other process of its user can reach the pool's memfds through it
        _title.set_title("supervisor")
        reset_signals()
        if host is not None:
            host.adopt()
        code = _Supervisor(pool, start_worker, adopted, host).run()
    except BaseException:
        log.exception("taskmw supervisor failed")
    finally:
        os._exit(code)


IGNORED_SIGNALS = (
    signal.SIGINT,  # Ctrl-C reaches the whole group; the pool stops in order when its builder does
    signal.SIGHUP,  # a terminal hang-up, kill -HUP -PGID (gunicorn's reload, meant for its master)
    signal.SIGQUIT,  # Ctrl-\ (gunicorn's quick stop, for its master)
    signal.SIGUSR1,  # gunicorn: reopen logs
    signal.SIGUSR2,  # gunicorn: upgrade
    signal.SIGTTIN,  # gunicorn: one more HTTP worker (by default: stop this process)
    signal.SIGTTOU,  # gunicorn: one fewer
    signal.SIGPIPE,  # a closed pipe is an error (EPIPE) in the task, not a death
    signal.SIGXFSZ,  # a file size limit too (EFBIG)
    signal.SIGALRM,  # timers nothing of the pool set; a task that wants one installs its handler
    signal.SIGVTALRM,
    signal.SIGPROF,
    signal.SIGIO,
    signal.SIGPWR,
)
"""Signals a pool process ignores: every one whose default action ends the
process and that anything but the process itself may send to a whole
process group (the README's "Never losing a task" says which does what).
SIGTERM is the supervisor's stop (workers ignore it too); the rest keep their
default: faults (SIGSEGV, SIGBUS, ...) and SIGXCPU end one process, whose
tasks finish ``lost``; SIGTSTP and SIGSTOP pause it until SIGCONT."""


def reset_signals() -> None:
    """In a freshly forked pool process: drop the app server's signal handling
    (its handlers and wake-up fd belong to the app server) and ignore
    :data:`IGNORED_SIGNALS`: sent to the whole process group (a terminal, a
    service manager, ``kill -HUP -PGID``), they are for the app server. The
    pool stops in order when its builder does, or on SIGTERM."""
    try:
        signal.set_wakeup_fd(-1)
    except ValueError:  # not the main thread
        pass
    for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGWINCH):
        signal.signal(sig, signal.SIG_DFL)
    for sig in IGNORED_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class _Supervisor:
    """The supervisor's loop and what it knows: its workers (its children),
    and the workers it adopted from a dead supervisor. It cannot wait for
    those (they are not its children): it watches them through pidfds,
    enforces their time limits, finishes what they held when they are gone,
    and only then starts a fresh worker in their row."""

    def __init__(
        self, pool: Pool, start_worker: StartWorker, adopted: Iterable[Orphan] = (), host: Host | None = None
    ) -> None:
        self.pool = pool
        self.host = host
        self.files = pool.files() if host is not None else None
        self.pool_id = os.fstat(pool.submit.memfd()).st_ino
        self.start_worker = start_worker
        self.owner = pool.owner
        self.workers: dict[int, int] = {}  # pid -> worker id
        self.adopted = {o.pid: (o.worker_id, o.pidfd) for o in adopted}  # pid -> (worker id, pidfd)
        self.unstarted: set[int] = set()  # worker ids whose fork failed, tried again after the backoff
        self.fork_backoff = Backoff()
        self.next_fork = 0.0  # time.monotonic() of the next attempt
        self.timed_out: dict[int, tuple[int, float]] = {}  # pid -> (seq, limit) of the task it was killed for
        self.terminated: dict[int, int] = {}  # pid -> seq of the task it was killed for (cancel(terminate=True))
        self.stopping = False
        self.table = pool.table
        self.words = pool.table.words
        self.backlogs = Backlogs(pool)
        self.scheduler = delayed.Scheduler(pool, self.send_cancelled)
        """The delayed tasks this supervisor holds until due (:mod:`taskmw.delayed`)."""
        self.cancel_error = _CANCELLED_DELAYED
        self.periodic = Scheduler(pool)
        """The pool's periodic tasks (:mod:`taskmw.schedule`)."""

    def run(self) -> int:
        if self.adopted:
            log.warning("adopted %d task worker(s) of the supervisor that died", len(self.adopted))
        taken = {worker_id for worker_id, _ in self.adopted.values()}
        self.unstarted.update(set(range(self.pool.settings.task_workers)) - taken)
        self.watch_adopted()
        self.start_unstarted()
        self.serve()
        scheduler = self.scheduler
        scheduler.tick(woken=True)  # the delayed tasks held before this supervisor started
        while not self.stopping:
            tick = _BUSY_TICK if self.backlogs.busy else _TICK
            info = signal.sigtimedwait(_WATCHED, min(scheduler.wait(tick), self.periodic.wait(tick)))
            if info is not None and info.si_signo == signal.SIGTERM:
                self.stopping = True
            elif self.host is None and os.getppid() != self.owner:
                log.warning("the process that built the pool (pid %d) is gone: stopping the pool", self.owner)
                self.stopping = True
            elif self.host is not None and not self.serve() and self.host.may_stop():
                log.info("every process of the shared pool has left: stopping the pool")
                self.stopping = True
            self.enforce_time_limits()
            self.reap()
            self.watch_adopted()
            self.backlogs.move()
            scheduler.tick(woken=info is not None and info.si_signo == delayed.WAKE)
            if not self.stopping:
                self.periodic.tick()
            if self.unstarted and time.monotonic() >= self.next_fork:
                self.start_unstarted()
        self.stop()
        return 0

    def serve(self) -> int:
        """Hand the pool to the siblings that asked (a shared pool) and count
        its members; returns how many (1 without sharing: the builder)."""
        if self.host is None or self.files is None:
            return 1
        members = self.host.serve(self.files, self.pool.settings, self.pool_id, os.getpid())
        self.words[self.table.sup + _table.MEMBERS] = members
        return members

    def start_unstarted(self) -> None:
        """Start the workers not running yet, in order, until a fork fails."""
        for worker_id in sorted(self.unstarted):
            if not self.start(worker_id):
                return

    def start(self, worker_id: int) -> bool:
        """Fork worker ``worker_id``; False if ``fork()`` failed (at the
        process limit, out of memory): it is tried again by the main loop
        after a capped exponential backoff, one log line per attempt."""
        w, r = self.words, worker_id * ROW
        w[r + STATE], w[r + TASK], w[r + DEADLINE], w[r + ASYNC_DEADLINE], w[r + START] = STARTING, 0, 0, 0, 0
        try:
            pid = self.start_worker(worker_id)
        except OSError as exc:
            w[r + PID] = 0
            self.unstarted.add(worker_id)
            delay = self.fork_backoff.failed()
            self.next_fork = time.monotonic() + delay
            log.error("could not fork task worker %d (%s): trying again in %.1fs", worker_id, exc, delay)
            return False
        self.fork_backoff.reset()
        self.unstarted.discard(worker_id)
        w[r + PID] = pid
        self.workers[pid] = worker_id
        log.debug("task worker %d started, pid %d", worker_id, pid)
        return True

    def reap(self) -> None:
        """Collect dead workers: report their tasks ``lost`` and replace them
        (unless stopping)."""
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker_id = self.workers.pop(pid, None)
            if worker_id is None:
                continue
            self.settle(pid, worker_id, status)
            if not self.stopping:
                self.unstarted.add(worker_id)  # started by the main loop, at once unless forks fail

    def watch_adopted(self) -> None:
        """Settle the adopted workers that are gone (their pidfd says so) and
        give their rows to fresh workers (unless stopping)."""
        for pid, (worker_id, fd) in list(self.adopted.items()):
            if fd >= 0 and not ended(fd):
                continue
            del self.adopted[pid]
            if fd >= 0:
                os.close(fd)
            self.settle(pid, worker_id, None)
            if not self.stopping:
                self.unstarted.add(worker_id)

    def kill(self, pid: int) -> None:
        """SIGKILL a worker: a child by pid (it stays a zombie until reaped), an
        adopted one through its pidfd (its pid may be reused once it is reaped)."""
        adopted = self.adopted.get(pid)
        if adopted is None:
            os.kill(pid, signal.SIGKILL)
        elif adopted[1] >= 0:
            try:
                signal.pidfd_send_signal(adopted[1], signal.SIGKILL)
            except ProcessLookupError:
                pass

    def enforce_time_limits(self) -> None:
        """Kill every worker whose task ran past its deadline, or was cancelled
        with ``terminate=True``.

        The worker writes its row while this reads it: each word is read
        once, and the kill is made only if the deadline read first is still
        there after the others were read (a task's deadline is unique and is
        cleared when it ends, so the seq read in between is that task's). A
        worker that moved on to its next task is left alone."""
        w, now = self.words, time.monotonic_ns()
        adopted = [(pid, worker_id) for pid, (worker_id, _) in self.adopted.items()]
        for pid, worker_id in [*self.workers.items(), *adopted]:
            r = worker_id * ROW
            stop = w[r + TERMINATE]
            if stop and pid not in self.terminated:
                w[r + TERMINATE] = 0
                task_id = w[r + TASK]
                if stop == w[r + SEQ] and task_id:
                    self.kill(pid)
                    self.terminated[pid] = stop
                    log.warning("task worker %d (pid %d): task %d was cancelled: killed it", worker_id, pid, task_id)
                    continue
            if pid in self.timed_out:
                continue
            self.enforce_async_limit(pid, worker_id, now)
            deadline = w[r + DEADLINE]
            if not deadline or now <= deadline or pid in self.timed_out:
                continue
            seq, task_id, started = w[r + SEQ], w[r + TASK], w[r + _table.STARTED]
            if w[r + DEADLINE] != deadline:
                continue  # that task ended meanwhile
            self.kill(pid)
            limit = (deadline - started) / 1e9
            self.timed_out[pid] = (seq, limit)
            log.warning(
                "task worker %d (pid %d): task %d passed its time limit of %.3gs: killed it",
                worker_id,
                pid,
                task_id,
                limit,
            )

    def enforce_async_limit(self, pid: int, worker_id: int, now: int) -> None:
        """Kill worker ``pid`` if an async task of it is still running
        :data:`ASYNC_GRACE` seconds past its time limit (its event loop did
        not stop it). That task finishes ``timeout``; the others the worker
        held finish ``lost``."""
        w, r = self.words, worker_id * ROW
        deadline = w[r + ASYNC_DEADLINE]
        if not deadline or now <= deadline + int(ASYNC_GRACE * 1e9):
            return
        seq, limit = w[r + ASYNC_SEQ], w[r + ASYNC_LIMIT] / 1e9
        if w[r + ASYNC_DEADLINE] != deadline:
            return  # that task ended meanwhile
        self.kill(pid)
        self.timed_out[pid] = (seq, limit)
        log.warning(
            "task worker %d (pid %d): async task seq %d ran %.3gs past its time limit of %.3gs without "
            "stopping (its event loop is blocked, or it ignores cancellation): killed it",
            worker_id,
            pid,
            seq,
            ASYNC_GRACE,
            limit,
        )

    def settle(self, pid: int, worker_id: int, status: int | None) -> None:
        """Finish every task the dead worker ``pid`` held: ``timeout`` for the
        one it was killed for, ``lost`` for the others. ``status``: its wait
        status (``None``: an adopted worker, whose status only its parent gets)."""
        held = self.pool.submit.reclaim(pid)
        lost = [h for h in held if not records.is_stop(h.aux)]
        timed_seq, limit = self.timed_out.pop(pid, (0, 0.0))
        cancelled_seq = self.terminated.pop(pid, 0)
        if status is None:
            cause, failed = "died after its supervisor did", bool(lost)
        else:
            cause, failed = describe(status), status != 0
        r = worker_id * ROW
        if failed and not cancelled_seq:
            self.words[r + RESTARTS] += 1
            self.words[r + _table.REASON] = _table.DIED
        running_seq, running_id = self.words[r + SEQ], self.words[r + TASK]  # what it ran when it died
        if (failed or lost) and not timed_seq and not cancelled_seq:
            log.warning("task worker %d (pid %d) %s; %d task(s) lost", worker_id, pid, cause, len(lost))
        error = TaskError("WorkerLost", f"task worker {worker_id} (pid {pid}) {cause} while running the task", "")
        for h in lost:
            task_id = running_id if h.seq == running_seq and running_id else h.seq
            if records.is_delayed(h.aux) and task_id == h.seq:  # not known to have started: see taskmw.delayed
                elsewhere = self.runs_elsewhere(worker_id)
                if h.aux & records.RELEASED:
                    task_id = self.scheduler.lost_run(h.seq, elsewhere)
                    if not task_id:
                        continue
                elif self.scheduler.handed_over(h.seq) or self.pool.tasks.done(h.seq) or elsewhere(h.seq):
                    continue  # its first trip was done: the scheduler has it (or had, and it runs or ran)
            if h.seq == timed_seq:
                message = f"the task ran longer than its time limit of {limit:.3g}s; its worker was replaced"
                self.table.count(_table.TIMEOUT)
                self.finish(h, task_id, TIMEOUT, TaskError("TimeoutError", message, ""), limit, worker_id)
            elif h.seq == cancelled_seq:
                self.table.count(_table.CANCELLED)
                self.finish(h, task_id, CANCELLED, _TERMINATED, 0.0, worker_id)
            else:
                self.table.count(_table.LOST)
                self.finish(h, task_id, LOST, error, 0.0, worker_id)

    def finish(self, held: Held, task_id: int, status: int, error: TaskError, duration: float, worker_id: int) -> None:
        """Finish a task the supervisor settles itself (lost, timeout, cancelled):
        record it, and send its finish to the process that queued it. Never
        waits: a full channel's finish waits in its backlog for as long as
        its process lives (see :mod:`taskmw.backlog`)."""
        attempt, left = self.pool.tasks.retries_of(task_id)
        reply = records.reply_to(held.aux)
        if not (left and status in RETRIED and self.pool.channel_claimed(records.channel_of(reply))):
            self.pool.tasks.finished(task_id, status, attempt, error)  # else its queuing process runs it again
        record = records.lost(held.seq, error, status, duration, worker_id, task_id)
        if self.backlogs.send(reply, [record]):
            log.info("the finish of task %d was dropped: the process that queued it is gone", task_id)

    def runs_elsewhere(self, dead: int) -> Callable[[int], bool]:
        """Whether a worker other than ``dead`` runs a task now (by its id)."""
        words = self.words

        def running(task_id: int) -> bool:
            rows = (w * ROW for w in range(self.pool.settings.task_workers) if w != dead)
            return any(words[r + TASK] == task_id for r in rows)

        return running

    def send_cancelled(self, task_id: int, header: int) -> None:
        """Finish a delayed task cancelled while the scheduler held it (see :mod:`taskmw.delayed`)."""
        self.table.count(_table.CANCELLED)
        self.finish(Held(task_id, header), task_id, CANCELLED, self.cancel_error, 0.0, -1)

    def stop(self) -> None:
        """Let the workers drain the queue for up to ``shutdown_timeout``
        seconds, kill what is left, and cancel the tasks nobody ran."""
        pool = self.pool
        if self.host is not None:
            self.host.stop_listening()  # a sibling that comes now builds a fresh pool
        pool.state = STOPPED
        grace = pool.settings.shutdown_timeout
        deadline = time.monotonic() + grace
        markers = len(self.workers)
        try:
            pool.submit.push_many([b""] * markers, aux=records.STOP, timeout=grace)
        except RingFull as full:
            log.warning("the queue stayed full: only %d of %d workers were asked to stop", full.accepted, markers)
        while (self.workers or self.adopted) and time.monotonic() < deadline:
            signal.sigtimedwait({signal.SIGCHLD}, _BUSY_TICK if self.backlogs.busy else 0.05)
            self.enforce_time_limits()
            self.reap()
            self.watch_adopted()
            self.backlogs.move()
        busy = len(self.workers) + len(self.adopted)
        if busy:
            log.warning("%d task worker(s) still busy after shutdown_timeout: killing them", busy)
            for pid in [*self.workers, *self.adopted]:
                self.kill(pid)
            for pid, worker_id in list(self.workers.items()):
                _, status = os.waitpid(pid, 0)
                del self.workers[pid]
                self.settle(pid, worker_id, status)
            for _, fd in self.adopted.values():
                if fd >= 0:
                    ended(fd, 5.0)
            self.watch_adopted()
            if self.adopted:
                log.error("adopted task worker(s) %s did not die of SIGKILL within 5s", sorted(self.adopted))
        self.cancel_queued()
        self.scheduler.scan()  # cancelled ones first, with their own message
        self.cancel_error = _STOPPED_DELAYED
        held = self.scheduler.cancel_all()
        if held:
            log.warning("pool stopped: %d delayed task(s) not due yet cancelled", held)
        self.backlogs.settle(_SETTLE)
        self.words[self.table.sup + _table.STOPPED_BY] = os.getpid()
        if os.getppid() != self.owner or (self.host is not None and not self.host.members):
            pool.remove_files()  # else the builder removes it, once it has read its finishes

    def cancel_queued(self) -> None:
        """Finish every task still queued as ``cancelled``."""
        error = TaskError("Cancelled", "the pool stopped before the task ran", "")
        cancelled = 0
        while True:
            batch = self.pool.submit.try_pop_many(256)
            if not batch.records:
                break
            for i, header in enumerate(batch.auxs):
                if records.is_stop(header):
                    continue
                seq = batch.first_seq + i
                task_id = seq
                if records.is_delayed(header):
                    task_id = self.queued_delayed(seq, batch.records[i], header)
                    if not task_id:
                        continue
                elif records.is_spilled(header):
                    self.pool.consume_spill(batch.records[i])
                    records.discard(batch.records[i])
                cancelled += 1
                self.finish(Held(seq, header), task_id, CANCELLED, error, 0.0, -1)
        if cancelled:
            self.table.count(_table.CANCELLED, cancelled)
            log.warning("pool stopped: %d queued task(s) cancelled", cancelled)

    def queued_delayed(self, seq: int, record: bytes, header: int) -> int:
        """A delayed task's record left in the queue when the pool stops: the
        id to finish ``cancelled`` (0: none, a run whose file is gone, see
        :mod:`taskmw.delayed`)."""
        if records.is_spilled(header):
            self.pool.consume_spill(record)
        try:
            task = records.SubmitRecord.read(seq, record, header)
        except Exception:  # noqa: BLE001 - unreadable: finish it under its seq
            return seq
        if task.due or delayed.claim(self.pool.scheduled_dir, task.task_id):
            return task.task_id
        return 0


def describe(status: int) -> str:
    """How a process ended, from its wait status."""
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"
