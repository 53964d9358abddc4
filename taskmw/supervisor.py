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
import signal
import sys
import time
from collections.abc import Callable

from taskmw import _table, records
from taskmw._table import DEADLINE, PID, RESTARTS, ROW, SEQ, STARTING, STATE, TASK
from taskmw.events import TaskError
from taskmw.pool import STOPPED, Pool
from taskmw.records import CANCELLED, LOST, TIMEOUT
from taskmw.ring import RingFull

StartWorker = Callable[[int], int]
"""Forks task worker ``worker_id`` and returns its pid (see :func:`taskmw.worker.spawn`)."""

log = logging.getLogger(__name__)

_WATCHED = {signal.SIGCHLD, signal.SIGTERM}
_TICK = 0.1  # seconds between checks of time limits and that the pool's builder is alive


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


def spawn(pool: Pool, start_worker: StartWorker) -> int:
    """Fork the supervisor of ``pool``, which starts its workers with
    ``start_worker``; returns its pid (in the caller)."""
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
        reset_signals()
        code = _Supervisor(pool, start_worker).run()
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
    def __init__(self, pool: Pool, start_worker: StartWorker) -> None:
        self.pool = pool
        self.start_worker = start_worker
        self.owner = pool.owner
        self.workers: dict[int, int] = {}  # pid -> worker id
        self.unstarted: set[int] = set()  # worker ids whose fork failed, tried again after the backoff
        self.fork_backoff = Backoff()
        self.next_fork = 0.0  # time.monotonic() of the next attempt
        self.timed_out: dict[int, tuple[int, float]] = {}  # pid -> (seq, limit) of the task it was killed for
        self.stopping = False
        self.table = pool.table
        self.words = pool.table.words

    def run(self) -> int:
        self.unstarted.update(range(self.pool.settings.task_workers))
        self.start_unstarted()
        while not self.stopping:
            info = signal.sigtimedwait(_WATCHED, _TICK)
            if info is not None and info.si_signo == signal.SIGTERM:
                self.stopping = True
            elif os.getppid() != self.owner:
                log.warning("the process that built the pool (pid %d) is gone: stopping the pool", self.owner)
                self.stopping = True
            self.enforce_time_limits()
            self.reap()
            if self.unstarted and time.monotonic() >= self.next_fork:
                self.start_unstarted()
        self.stop()
        return 0

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
        w[r + STATE], w[r + TASK], w[r + DEADLINE] = STARTING, 0, 0
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

    def enforce_time_limits(self) -> None:
        """Kill every worker whose task ran past its deadline.

        The worker writes its row while this reads it: each word is read
        once, and the kill is made only if the deadline read first is still
        there after the others were read (a task's deadline is unique and is
        cleared when it ends, so the seq read in between is that task's). A
        worker that moved on to its next task is left alone."""
        w, now = self.words, time.monotonic_ns()
        for pid, worker_id in self.workers.items():
            r = worker_id * ROW
            deadline = w[r + DEADLINE]
            if not deadline or now <= deadline or pid in self.timed_out:
                continue
            seq, task_id, started = w[r + SEQ], w[r + TASK], w[r + _table.STARTED]
            if w[r + DEADLINE] != deadline:
                continue  # that task ended meanwhile
            os.kill(pid, signal.SIGKILL)
            limit = (deadline - started) / 1e9
            self.timed_out[pid] = (seq, limit)
            log.warning(
                "task worker %d (pid %d): task %d passed its time limit of %.3gs: killed it",
                worker_id,
                pid,
                task_id,
                limit,
            )

    def settle(self, pid: int, worker_id: int, status: int) -> None:
        """Finish every task the dead worker ``pid`` held: ``timeout`` for the
        one it was killed for, ``lost`` for the others."""
        held = self.pool.submit.reclaim(pid)
        cause = describe(status)
        timed_seq, limit = self.timed_out.pop(pid, (0, 0.0))
        if status != 0:
            self.words[worker_id * ROW + RESTARTS] += 1
        lost = [h for h in held if not records.is_stop(h.aux)]
        if (status != 0 or lost) and not timed_seq:
            log.warning("task worker %d (pid %d) %s; %d task(s) lost", worker_id, pid, cause, len(lost))
        error = TaskError("WorkerLost", f"task worker {worker_id} (pid {pid}) {cause} while running the task", "")
        for h in lost:
            if h.seq == timed_seq:
                message = f"the task ran longer than its time limit of {limit:.3g}s; its worker was replaced"
                timeout = TaskError("TimeoutError", message, "")
                self.table.count(_table.TIMEOUT)
                self.finish(h.aux, records.lost(h.seq, timeout, TIMEOUT, limit, worker_id))
            else:
                self.table.count(_table.LOST)
                self.finish(h.aux, records.lost(h.seq, error, LOST, 0.0, worker_id))

    def finish(self, header: int, record: bytes) -> None:
        """Send a finish the supervisor made itself (lost, timeout, cancelled)
        for the task sent with ``header``."""
        if self.pool.send_finishes(records.reply_to(header), [record], patience=5.0):
            log.error("a completion channel stayed full for 5s: a finish was dropped")

    def stop(self) -> None:
        """Let the workers drain the queue for up to ``shutdown_timeout``
        seconds, kill what is left, and cancel the tasks nobody ran."""
        pool = self.pool
        pool.state = STOPPED
        grace = pool.settings.shutdown_timeout
        deadline = time.monotonic() + grace
        markers = len(self.workers)
        try:
            pool.submit.push_many([b""] * markers, aux=records.STOP, timeout=grace)
        except RingFull as full:
            log.warning("the queue stayed full: only %d of %d workers were asked to stop", full.accepted, markers)
        while self.workers and time.monotonic() < deadline:
            signal.sigtimedwait({signal.SIGCHLD}, 0.05)
            self.enforce_time_limits()
            self.reap()
        if self.workers:
            log.warning("%d task worker(s) still busy after shutdown_timeout: killing them", len(self.workers))
            for pid in self.workers:
                os.kill(pid, signal.SIGKILL)
            for pid, worker_id in list(self.workers.items()):
                _, status = os.waitpid(pid, 0)
                del self.workers[pid]
                self.settle(pid, worker_id, status)
        self.cancel_queued()
        if os.getppid() != self.owner:  # else the builder removes it, once it has read its finishes
            pool.remove_files()

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
                cancelled += 1
                if records.is_spilled(header):
                    records.discard(batch.records[i])
                self.finish(header, records.lost(batch.first_seq + i, error, CANCELLED))
        if cancelled:
            self.table.count(_table.CANCELLED, cancelled)
            log.warning("pool stopped: %d queued task(s) cancelled", cancelled)


def describe(status: int) -> str:
    """How a process ended, from its wait status."""
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"
