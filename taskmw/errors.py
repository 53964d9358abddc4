"""The exceptions of the task server (the ring's own are in :mod:`taskmw.ring`)."""

from __future__ import annotations

import queue
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from taskmw.events import TaskFinishEvent


class TaskmwError(Exception):
    """Base class of the task server's errors."""


class QueueFull(TaskmwError, queue.Full):
    """``task()`` waited ``queue_timeout`` seconds for room in the queue.

    The task was not queued (nothing was dropped: the caller still has it).
    """


class UnknownTask(TaskmwError, LookupError):
    """``status()``, ``result()`` or ``cancel()`` got an id the pool has no
    record of: it never issued it, or the record was evicted (``reason`` says which)."""

    def __init__(self, task_id: object, reason: str) -> None:
        self.task_id = task_id
        self.reason = reason
        super().__init__(f"unknown task {task_id!r}: {reason}")


class PoolClosed(TaskmwError, RuntimeError):
    """The pool was closed, or its supervisor is gone: no task can be queued."""


class TaskFailed(TaskmwError):
    """A task waited for with ``taskwait()`` or ``task_async()`` did not finish ``ok``.

    ``event`` is its :class:`~taskmw.TaskFinishEvent` (status, error and traceback text).
    """

    def __init__(self, event: TaskFinishEvent) -> None:
        self.event = event
        if event.error is not None:
            detail = f"{event.error.type}: {event.error.message}\n\n{event.error.traceback}"
        else:
            detail = "no error details"
        super().__init__(f"task {event.task_id} finished {event.status!r}: {detail}")
