"""The pool's worker table: one row of counters per task worker, in shared
memory, for time limits and for :meth:`taskmw.TaskServer.stats`.

Each row is written by one process at a time: most fields by the worker
that holds the row now (a replacement continues its predecessor's counts),
the rest by the supervisor (marked below). One more row, after the
workers', holds the supervisor's own counts. Readers (the supervisor,
``stats()`` in any process of the pool) may see a row mid-update; every
field is a single aligned 64-bit word, so each value read is one that was
written.
"""

from __future__ import annotations

import mmap
import time
from typing import Any

from taskmw._proc import rss_bytes
from taskmw._shm import shared_map

# Fields of a worker row (int64 each).
PID = 0  # supervisor
STATE = 1  # worker (supervisor sets STARTING)
TASK = 2  # the task id it runs now (0: none)
STARTED = 3  # time.monotonic_ns() when it started that task
DEADLINE = 4  # time.monotonic_ns() by which it must be done (0: no limit)
DONE = 5  # tasks it finished
OK = 6  # of those, ok (the rest: error)
ASYNC_DONE = 7  # async tasks finished (written by the worker's event-loop thread)
ASYNC_OK = 8
RESTARTS = 9  # supervisor: times this worker was replaced after dying
SEQ = 10  # the ring seq of the task it runs now (its id, unless it is a retry)
ASYNC_TIMEOUT = 11  # async tasks stopped at their time limit
CANCELLED_HERE = 18  # tasks it finished cancelled without running them (cancel() of a queued task)
ATTEMPT = 13  # which run of the task it runs now is this (1: the first)
TERMINATE = 12  # any process: the seq of a running task to stop (cancel(terminate=True)); the supervisor kills it
# The earliest time limit of the worker's running async tasks (its event-loop thread writes them; 0: none).
# The loop cancels a task at its limit; past ASYNC_DEADLINE + taskmw.supervisor.ASYNC_GRACE (the loop is
# blocked, or the task ignores its cancellation) the supervisor kills the worker, as for a sync task.
ASYNC_DEADLINE = 14  # time.monotonic_ns() of that limit
ASYNC_SEQ = 15  # the ring seq of that task
ASYNC_LIMIT = 16  # its time limit, in ns
START = 17  # worker (supervisor clears it): its start time (taskmw._proc.start_ticks), which with PID names it
RECYCLED = 19  # worker: times this row's worker exited cleanly to be replaced (max_tasks_per_worker, memory, reload)
REASON = 20  # why this row's last worker went (one of REASONS' indexes; 0: none went); the supervisor sets DIED
BATCH_END = 21  # worker: the seq after the last of the batch it holds now (0: none)
# (a worker writes a task's SEQ before it reads its cancel request: see LocalTransport._taken_behind)
ROW = 24

# Fields of the supervisor's row.
LOST = 0
TIMEOUT = 1
CANCELLED = 2
GENERATION = 3  # bumped by TaskServer.reload(): workers of an older one exit
SUPERVISOR = 4  # pid of the supervisor now (the builder's watchdog replaces a dead one)
STOPPED_BY = 5  # pid of the supervisor that stopped the pool, once it is done (see LocalTransport.close)
MEMBERS = 6  # a shared pool's processes (the builder and the siblings that joined; see taskmw._share)

STARTING, IDLE, BUSY, STOPPING = range(4)
REASONS = (None, "max_tasks", "memory", "reload", "died")
"""What :data:`REASON` says: a worker replaced after ``max_tasks_per_worker``
tasks, over ``max_worker_memory``, by a reload, or after it died."""
MAX_TASKS, MEMORY, RELOAD, DIED = range(1, 5)
STATE_NAMES = ("starting", "idle", "busy", "stopping")
_PAGE = mmap.PAGESIZE


class WorkerTable:
    """``task_workers`` rows plus the supervisor's, shared by every process
    forked after it is built (and any that receives :attr:`fd`)."""

    def __init__(self, task_workers: int, fd: int | None = None) -> None:
        self.task_workers = task_workers
        size = (task_workers + 1) * ROW * 8
        self.fd, self._map = shared_map("workers", max(size, _PAGE), fd)
        """The table's memfd (``fd``: one received from the process that made it)."""
        self.words = memoryview(self._map).cast("q")
        """The table as int64 words: row ``w`` starts at ``w * ROW``."""
        self.sup = task_workers * ROW
        """Index of the supervisor's row."""

    def row(self, worker_id: int) -> int:
        """Index of the first word of worker ``worker_id``'s row."""
        return worker_id * ROW

    @property
    def supervisor_pid(self) -> int:
        """The pid of the pool's supervisor now."""
        return self.words[self.sup + SUPERVISOR]

    @supervisor_pid.setter
    def supervisor_pid(self, pid: int) -> None:
        self.words[self.sup + SUPERVISOR] = pid

    @property
    def generation(self) -> int:
        """Bumped by each reload: workers of an older generation exit."""
        return self.words[self.sup + GENERATION]

    def bump_generation(self) -> None:
        """Ask every worker to make way for a fresh one."""
        self.words[self.sup + GENERATION] += 1

    def count(self, field: int, n: int = 1) -> None:
        """Add ``n`` to one of the supervisor row's totals (``LOST``, ``TIMEOUT``, ``CANCELLED``)."""
        self.words[self.sup + field] += n

    def snapshot(self) -> dict[str, Any]:
        """Workers and totals as plain data (see :meth:`TaskServer.stats`)."""
        w = self.words
        now_ns = time.monotonic_ns()
        now = time.time()
        workers = []
        ok = error = timeout = 0
        for worker_id in range(self.task_workers):
            r = worker_id * ROW
            done, good = w[r + DONE] + w[r + ASYNC_DONE], w[r + OK] + w[r + ASYNC_OK]
            ok += good
            timeout += w[r + ASYNC_TIMEOUT]
            error += done - good - w[r + ASYNC_TIMEOUT]
            task = w[r + TASK]
            pid = w[r + PID]
            workers.append(
                {
                    "worker_id": worker_id,
                    "pid": pid,
                    "state": STATE_NAMES[w[r + STATE]] if 0 <= w[r + STATE] < len(STATE_NAMES) else "unknown",
                    "task_id": task or None,
                    "task_started": now - (now_ns - w[r + STARTED]) / 1e9 if task else None,
                    "tasks_done": done,
                    "rss_bytes": rss_bytes(pid) if pid else None,
                    "restarts": w[r + RESTARTS],
                    "recycled": w[r + RECYCLED],
                    "restart_reason": REASONS[w[r + REASON]] if 0 <= w[r + REASON] < len(REASONS) else None,
                }
            )
        s = self.sup
        totals = {
            "ok": ok,
            "error": error,
            "lost": w[s + LOST],
            "timeout": timeout + w[s + TIMEOUT],
            "cancelled": w[s + CANCELLED] + sum(w[i * ROW + CANCELLED_HERE] for i in range(self.task_workers)),
        }
        return {"workers": workers, "totals": totals}
