"""The two events of a task's life: :class:`TaskEvent` in the task worker,
:class:`TaskFinishEvent` back in the process that queued it."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

from taskmw.interfaces import Server

Status = Literal["ok", "error", "lost", "timeout", "cancelled"]
STATUSES: tuple[Status, ...] = ("ok", "error", "lost", "timeout", "cancelled")
"""Every status a finish can have, in the order of their wire codes."""


class TaskError(NamedTuple):
    """Why a task did not finish ``ok``: the exception's type name, its
    message, and the traceback text (empty when there was no exception)."""

    type: str
    message: str
    traceback: str


class TaskEvent:
    """A task being run, handed to every ``on_task`` hook in the task worker.

    Like mezzio-swoole's ``TaskEvent``: the handler that runs the task calls
    :meth:`set_return_value` and :meth:`complete`; ``complete()`` stops the
    hooks that would have run after it (observers that run first, such as a
    logger, see every task).
    """

    __slots__ = ("task_id", "worker_id", "data", "server", "return_value", "completed", "attempt")

    def __init__(self, task_id: int, worker_id: int, data: Any, server: Server, attempt: int = 1) -> None:
        self.task_id = task_id
        """The id ``task()`` returned for this task."""
        self.worker_id = worker_id
        """Index (0 … task_workers-1) of the task worker running it."""
        self.data = data
        """What was queued: a :class:`~taskmw.Task`, a :class:`~taskmw.ServiceTask` or a data object."""
        self.server = server
        """The pool, for queuing more tasks from inside a task."""
        self.return_value: Any = None
        """What the finish event will carry back (set with :meth:`set_return_value`)."""
        self.completed = False
        """True once a handler called :meth:`complete`."""
        self.attempt = attempt
        """1 the first time the task runs; 2, 3, … when ``retries`` re-run it."""

    def set_return_value(self, value: Any) -> None:
        """Set the value that the finish event carries back to the dispatcher."""
        self.return_value = value

    def complete(self) -> None:
        """Mark the task handled: no later ``on_task`` hook runs for it."""
        self.completed = True

    def __repr__(self) -> str:
        return f"<TaskEvent id={self.task_id} worker={self.worker_id} data={self.data!r}>"


class TaskFinishEvent(NamedTuple):
    """The outcome of one task, delivered to ``on_finish`` hooks in the
    process that queued it (exactly once per task id). Immutable."""

    task_id: int
    """The id ``task()`` returned."""
    status: Status
    """``ok``, ``error`` (it raised, nothing handled it, or its result could
    not be sent back), ``lost`` (its worker died), ``timeout`` or ``cancelled``
    (the pool stopped before it ran)."""
    return_value: Any = None
    """What the task returned (``None`` unless ``status == "ok"``)."""
    error: TaskError | None = None
    """Why it failed, for every status but ``ok``."""
    duration: float = 0.0
    """Seconds the task ran in its worker."""
    worker_id: int = -1
    """Index of the task worker that ran it (-1: none did)."""
    attempts: int = 1
    """How many times it ran (more than 1 when ``retries`` re-ran it)."""
    name: str = ""
    """What ran: ``module.qualname`` of the callable, ``service:<name>`` of
    a service task, or the type of a data object (empty when no worker read
    the task: ``lost``, ``cancelled``, or killed at its time limit)."""

    @property
    def ok(self) -> bool:
        """True if the task finished with status ``ok``."""
        return self.status == "ok"
