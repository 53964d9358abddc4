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

from taskmw import _table, _title, records
from taskmw._table import DEADLINE, PID, RESTARTS, ROW, SEQ, STARTING, STATE, TASK, TERMINATE
from taskmw.events import TaskError
from taskmw.pool import STOPPED, Pool
from taskmw.records import CANCELLED, LOST, TIMEOUT
from taskmw.ring import Held, RingFull

_TERMINATED = TaskError("Cancelled", "the task was cancelled while it ran; its worker was replaced", "")

StartWorker = Callable[[int], int]
"""Forks task worker ``worker_id`` and returns its pid (see :func:`taskmw.worker.spawn`)."""

log = logging.getLogger(__name__)

_WATCHED = {signal.SIGCHLD, signal.SIGTERM}
_TICK = 0.1  # seconds between checks of time limits and that the pool's builder is alive


def spawn(pool: Pool, start_worker: StartWorker) -> int:
    """Fork the supervisor of ``pool``, which starts its workers with
    ``start_worker``; returns its pid (in the caller)."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    # Fork with SIGTERM and SIGCHLD blocked, so that a close() right after the
    # fork cannot kill the supervisor before it has started its workers: the
    # signal waits, pending, for the supervisor's loop.
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _WATCHED)
    pid = os.fork()
    if pid:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        return pid
    code = 1
    try:
        _title.set_title("supervisor")
        reset_signals()
        code = _Supervisor(pool, start_worker).run()
    except BaseException:
        log.exception("taskmw supervisor failed")
    finally:
        os._exit(code)


def reset_signals() -> None:
    """In a freshly forked pool process: drop the app server's signal handling
    (its handlers and wake-up fd belong to the app server). SIGINT is
    ignored: a terminal's Ctrl-C reaches the whole process group, and the pool
    stops in order when its builder does."""
    try:
        signal.set_wakeup_fd(-1)
    except ValueError:  # not the main thread
        pass
    for sig in (
        signal.SIGTERM,
        signal.SIGHUP,
        signal.SIGQUIT,
        signal.SIGUSR1,
        signal.SIGUSR2,
        signal.SIGCHLD,
        signal.SIGTTIN,
        signal.SIGTTOU,
        signal.SIGWINCH,
        signal.SIGALRM,
    ):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _Supervisor:
    def __init__(self, pool: Pool, start_worker: StartWorker) -> None:
        self.pool = pool
        self.start_worker = start_worker
        self.owner = pool.owner
        self.workers: dict[int, int] = {}  # pid -> worker id
        self.timed_out: dict[int, tuple[int, float]] = {}  # pid -> (seq, limit) of the task it was killed for
        self.terminated: dict[int, int] = {}  # pid -> seq of the task it was killed for (cancel(terminate=True))
        self.stopping = False
        self.table = pool.table
        self.words = pool.table.words

    def run(self) -> int:
        for worker_id in range(self.pool.settings.task_workers):
            self.start(worker_id)
        while not self.stopping:
            info = signal.sigtimedwait(_WATCHED, _TICK)
            if info is not None and info.si_signo == signal.SIGTERM:
                self.stopping = True
            elif os.getppid() != self.owner:
                log.warning("the process that built the pool (pid %d) is gone: stopping the pool", self.owner)
                self.stopping = True
            self.enforce_time_limits()
            self.reap()
        self.stop()
        return 0

    def start(self, worker_id: int) -> None:
        w, r = self.words, worker_id * ROW
        w[r + STATE], w[r + TASK], w[r + DEADLINE] = STARTING, 0, 0
        pid = self.start_worker(worker_id)
        w[r + PID] = pid
        self.workers[pid] = worker_id
        log.debug("task worker %d started, pid %d", worker_id, pid)

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
                self.start(worker_id)

    def enforce_time_limits(self) -> None:
        """Kill every worker whose task ran past its deadline, or was cancelled
        with ``terminate=True``."""
        w, now = self.words, time.monotonic_ns()
        for pid, worker_id in self.workers.items():
            r = worker_id * ROW
            seq, deadline, started = w[r + SEQ], w[r + DEADLINE], w[r + _table.STARTED]
            stop = w[r + TERMINATE]
            if stop and pid not in self.terminated:
                w[r + TERMINATE] = 0
                if stop == seq and w[r + TASK]:
                    log.warning(
                        "task worker %d (pid %d): task %d was cancelled: killing it", worker_id, pid, w[r + TASK]
                    )
                    self.terminated[pid] = seq
                    os.kill(pid, signal.SIGKILL)
                    continue
            if deadline and now > deadline and pid not in self.timed_out and w[r + SEQ] == seq:
                limit = (deadline - started) / 1e9
                log.warning(
                    "task worker %d (pid %d): task %d passed its time limit of %.3gs: killing it",
                    worker_id,
                    pid,
                    w[r + TASK],
                    limit,
                )
                self.timed_out[pid] = (seq, limit)
                os.kill(pid, signal.SIGKILL)

    def settle(self, pid: int, worker_id: int, status: int) -> None:
        """Finish every task the dead worker ``pid`` held: ``timeout`` for the
        one it was killed for, ``lost`` for the others."""
        held = self.pool.submit.reclaim(pid)
        cause = _describe(status)
        timed_seq, limit = self.timed_out.pop(pid, (0, 0.0))
        cancelled_seq = self.terminated.pop(pid, 0)
        r = worker_id * ROW
        if status != 0 and not cancelled_seq:
            self.words[r + RESTARTS] += 1
        running_seq, running_id = self.words[r + SEQ], self.words[r + TASK]  # what it ran when it died
        lost = [h for h in held if not records.is_stop(h.aux)]
        if (status != 0 or lost) and not timed_seq and not cancelled_seq:
            log.warning("task worker %d (pid %d) %s; %d task(s) lost", worker_id, pid, cause, len(lost))
        error = TaskError("WorkerLost", f"task worker {worker_id} (pid {pid}) {cause} while running the task", "")
        for h in lost:
            task_id = running_id if h.seq == running_seq and running_id else h.seq
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
        record it, and send its finish to the process that queued it."""
        self.pool.tasks.finished(task_id, status, 0, error)
        record = records.lost(held.seq, error, status, duration, worker_id, task_id)
        if self.pool.send_finishes(records.reply_to(held.aux), [record], patience=5.0):
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
                seq = batch.first_seq + i
                self.finish(Held(seq, header), seq, CANCELLED, error, 0.0, -1)
        if cancelled:
            self.table.count(_table.CANCELLED, cancelled)
            log.warning("pool stopped: %d queued task(s) cancelled", cancelled)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"
