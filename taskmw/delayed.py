"""Delayed tasks (``delay=``, ``eta=``): the pool holds them until they are due.

A delayed task's trip, each step robust to any process dying at any instant:

1. ``task()`` pushes it into the submit ring like any task, flagged
   :data:`taskmw.records.DELAYED` with its due time in the options header;
   its id is its seq, as ever, and the queuing process records it as
   scheduled (:meth:`taskmw.tasktable.TaskTable.scheduled`). From here the
   pool has it: the queuing process may exit.
2. The task worker that pops it does not run it: :func:`hold` writes it to a
   file ``s<id>`` of the pool's scheduled directory (``Pool.scheduled_dir``; under a temporary name,
   then renamed, so a file is whole or absent) and wakes the supervisor.
3. The supervisor's :class:`Scheduler` keeps the due times in a heap (loaded
   from the directory when it starts: a supervisor that replaces a dead one
   picks them all up) and pushes each into the ring when it is due, with its
   id in the options header (as a retry carries it). The file stays.
4. The worker that pops that run :func:`claim`\\ s the file (an ``unlink``:
   exactly one process succeeds) and runs the task. If the file is gone the
   run is a second push of the same task (by a supervisor that replaced the
   one that pushed it) or the task was cancelled: it is dropped, without a
   finish. So a delayed task runs at most once, and is never both run and
   cancelled.

:func:`cancel` renames ``s<id>`` to ``c<id>`` (exactly one of a cancel and a
claim wins); the supervisor sends the ``cancelled`` finish of every ``c``
file to the process that queued the task, records it, and removes the file.
When the pool stops, every ``s`` file is cancelled so.

Processes wake the supervisor with SIGURG: it waits for it in its
``sigtimedwait`` loop, and the signal's default action is to do nothing, so
one sent to a pid that is no longer the supervisor's harms nobody.
"""

from __future__ import annotations

import heapq
import logging
import os
import signal
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from taskmw import records
from taskmw.records import Options, SubmitRecord

if TYPE_CHECKING:
    from taskmw.pool import Pool

log = logging.getLogger(__name__)

WAKE = signal.SIGURG
"""The signal that tells the supervisor the scheduled directory changed."""
_HEAD = struct.Struct("<dIdqq")  # due, header (kind and reply), time limit (0: none), retries left, task id
_RETRY = 0.01  # seconds before pushing again when the queue was full
_RESCAN = 1.0  # seconds between two checks of the directory when nothing woke the supervisor
_RUNS = 1 << 16  # runs pushed whose seq the scheduler remembers (for the workers that die holding one)

SendCancelled = Callable[[int, int], None]
"""``send(task_id, header)``: record task ``task_id`` cancelled and send its
finish to the process its header addresses (the supervisor's)."""


def _path(directory: str, prefix: str, task_id: int) -> str:
    return os.path.join(directory, f"{prefix}{task_id}")


def wake(supervisor_pid: int) -> None:
    """Tell the supervisor to look at the scheduled directory again."""
    try:
        os.kill(supervisor_pid, WAKE)
    except (ProcessLookupError, PermissionError):
        pass  # restarting: the next supervisor reads the directory when it starts


def hold(directory: str, task: SubmitRecord, supervisor_pid: int) -> None:
    """In the worker that popped a delayed task's first trip: hand it to the
    scheduler (write its file, wake the supervisor).

    Raises:
        OSError: the file could not be written (the directory's file system
            is full): the task then finishes ``error``.
    """
    header = records.submit_header(records.Kind(task.kind)) | task.reply
    head = _HEAD.pack(task.due, header, task.timeout or 0.0, task.left, task.task_id)
    final = _path(directory, "s", task.task_id)
    temp = f"{final}.{os.getpid()}.tmp"
    try:
        with open(temp, "wb") as f:
            f.write(head + task.payload)
        os.rename(temp, final)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
    wake(supervisor_pid)


def claim(directory: str, task_id: int) -> bool:
    """In the worker that popped a delayed task's run: True if this run is
    the one to run it (it took the file), False if it must be dropped."""
    try:
        os.unlink(_path(directory, "s", task_id))
    except FileNotFoundError:
        return False
    return True


def cancel(directory: str, task_id: int, supervisor_pid: int) -> bool:
    """Cancel delayed task ``task_id`` if the scheduler holds it and no run
    has claimed it; the supervisor then sends its ``cancelled`` finish."""
    if not _take(directory, task_id):
        return False
    wake(supervisor_pid)
    return True


def _take(directory: str, task_id: int) -> bool:
    """Mark held task ``task_id`` cancelled (False: it is not held, or a run claimed it)."""
    try:
        os.rename(_path(directory, "s", task_id), _path(directory, "c", task_id))
    except FileNotFoundError:
        return False
    return True


def held(directory: str) -> list[int]:
    """The ids of the delayed tasks the scheduler holds (not run yet)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(int(n[1:]) for n in names if n[0] == "s" and n[1:].isdigit())


class Scheduler:
    """The supervisor's part: pushes each held task into the queue when it is due.

    Args:
        pool: the pool (its ring, spill and scheduled directories).
        send_cancelled: records a cancelled task and sends its finish.
    """

    def __init__(self, pool: Pool, send_cancelled: SendCancelled) -> None:
        self.pool = pool
        self.directory: str = pool.scheduled_dir
        self.send_cancelled = send_cancelled
        self.heap: list[tuple[float, int]] = []
        self.known: set[int] = set()  # ids of the s files seen (in the heap, or pushed)
        self.pushed: set[int] = set()  # ids pushed into the queue whose file is still there
        self.mtime = -1
        self.scanned = 0.0  # time.monotonic() of the last check of the directory
        self.retry_at = 0.0  # time.monotonic() to try a push again after a full queue (0: none)
        self.runs: OrderedDict[int, int] = OrderedDict()  # seq of each run pushed -> the task's id

    def wait(self, tick: float) -> float:
        """Seconds the supervisor may sleep: ``tick``, or less if a task is due sooner."""
        if self.retry_at:
            return max(0.0, min(tick, self.retry_at - time.monotonic()))
        while self.heap and self.heap[0][1] not in self.known:
            heapq.heappop(self.heap)
        if not self.heap:
            return tick
        return max(0.0, min(tick, self.heap[0][0] - time.time()))

    def tick(self, woken: bool = False) -> None:
        """Read the directory when ``woken`` (a file came, or was cancelled),
        or, in case a wake-up went to a supervisor that was just replaced,
        once a second if it changed; then push what is due."""
        now = time.monotonic()
        if woken or now - self.scanned >= _RESCAN:
            try:
                mtime = os.stat(self.directory).st_mtime_ns
            except FileNotFoundError:
                return
            if woken or mtime != self.mtime:
                self.mtime, self.scanned = mtime, now
                self.scan()
        if self.retry_at and time.monotonic() < self.retry_at:
            return
        self.retry_at = 0.0
        self.push_due()

    def scan(self) -> None:
        """Take in new files: held tasks into the heap, cancelled ones finished."""
        present: set[int] = set()
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:  # the pool's files were removed: nothing is held
            names = []
        for name in names:
            kind, digits = name[0], name[1:]
            if not digits.isdigit():
                continue  # a file being written
            task_id = int(digits)
            if kind == "c":
                self.finish_cancelled(task_id)
            elif kind == "s":
                present.add(task_id)
                if task_id not in self.known:
                    due = self.due_of(task_id)
                    if due is not None:
                        self.known.add(task_id)
                        heapq.heappush(self.heap, (due, task_id))
        gone = self.known - present  # run (claimed) or cancelled
        self.known -= gone
        self.pushed -= gone

    def due_of(self, task_id: int) -> float | None:
        try:
            with open(_path(self.directory, "s", task_id), "rb") as f:
                head = f.read(_HEAD.size)
        except FileNotFoundError:
            return None
        return _HEAD.unpack(head)[0] if len(head) == _HEAD.size else None

    def push_due(self) -> None:
        """Push every task that is due into the queue (in due order)."""
        heap, now = self.heap, time.time()
        while heap and heap[0][0] <= now:
            task_id = heap[0][1]
            if task_id in self.known and task_id not in self.pushed:
                if not self.push(task_id):
                    self.retry_at = time.monotonic() + _RETRY
                    return
                self.pushed.add(task_id)
                late = now - heap[0][0]
                if late > 0.05:
                    log.debug("delayed task %d queued %.3fs after its due time", task_id, late)
            heapq.heappop(heap)

    def push(self, task_id: int) -> bool:
        """Push one held task's run; False if the queue is full (try again)."""
        try:
            with open(_path(self.directory, "s", task_id), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return True  # cancelled meanwhile: its c file says so
        _, header, timeout, left, first_id = _HEAD.unpack_from(data)
        options = Options(timeout or None, 1, first_id, left)
        record, header = records.encode_submit(data[_HEAD.size :], header, options)
        pool = self.pool
        if len(record) > pool.spill_at:
            try:
                record = pool.spill_task(record, timeout=0.0)  # the supervisor never waits for room
            except Exception as exc:  # noqa: BLE001 - no room for its file: it waits, and is tried again
                log.debug("delayed task %d could not be queued yet: %s", task_id, exc)
                return False
            header |= records.SPILLED
        seq = pool.submit.try_push(record, aux=header | records.RELEASED)
        if seq is None:
            if header & records.SPILLED:
                pool.consume_spill(record)
                records.discard(record)
            return False
        self.runs[seq] = first_id
        while len(self.runs) > _RUNS:
            self.runs.popitem(last=False)
        return True

    def lost_run(self, seq: int, elsewhere: Callable[[int], bool]) -> int:
        """A worker died holding run ``seq`` of a delayed task: the task's id
        if that run may have claimed it (it is to be finished ``lost``), else
        0: not claimed (it is pushed again), claimed by another run (which
        finished it, or ``elsewhere(task_id)`` says another worker runs it),
        or a run this supervisor does not know (pushed by the one before it)."""
        task_id = self.runs.get(seq, 0)
        if not task_id:
            log.warning("a task worker died holding a delayed task's run (seq %d) pushed by an earlier supervisor", seq)
            return 0
        if os.path.exists(_path(self.directory, "s", task_id)):
            self.pushed.discard(task_id)  # not claimed: push it again when it is due (now)
            heapq.heappush(self.heap, (0.0, task_id))
            return 0
        if self.pool.tasks.done(task_id) or elsewhere(task_id):
            return 0  # this run was a second push, dropped: another one ran it
        return task_id

    def handed_over(self, task_id: int) -> bool:
        """True if delayed task ``task_id``'s first trip reached the scheduler (its file is there)."""
        return any(os.path.exists(_path(self.directory, kind, task_id)) for kind in "sc")

    def finish_cancelled(self, task_id: int) -> None:
        """Send the ``cancelled`` finish of a cancelled held task, then remove its file."""
        path = _path(self.directory, "c", task_id)
        try:
            with open(path, "rb") as f:
                head = f.read(_HEAD.size)
        except FileNotFoundError:
            return
        if len(head) == _HEAD.size:
            self.send_cancelled(task_id, _HEAD.unpack(head)[1])
        os.unlink(path)  # after the finish: a supervisor that dies in between sends it again (dropped as a repeat)

    def cancel_all(self) -> int:
        """When the pool stops: cancel every held task not claimed by a run;
        returns how many."""
        count = 0
        for task_id in held(self.directory):
            if _take(self.directory, task_id):
                count += 1
        if count:
            self.scan()
        return count
