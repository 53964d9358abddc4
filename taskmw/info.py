"""What ``server.status(task_id)`` returns: :class:`TaskInfo`."""

from __future__ import annotations

import dataclasses
from typing import Literal

from taskmw.events import Status, TaskError

State = Literal["scheduled", "queued", "running", "done"]
STATES: tuple[State, ...] = ("scheduled", "queued", "running", "done")


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """A task as the pool's record has it, from any process of the pool."""

    task_id: int
    """The id ``task()`` returned."""
    state: State
    """``"scheduled"``, ``"queued"``, ``"running"`` or ``"done"``."""
    status: Status | None
    """The finish status once done (``ok``, ``error``, ``lost``, ``timeout``, ``cancelled``), else ``None``."""
    name: str
    """What it runs (``module.qualname``; empty when the record does not say)."""
    worker_id: int | None
    """The task worker that ran it last (``None``: none yet)."""
    attempts: int
    """Runs so far (more than 1 when ``retries`` re-ran it)."""
    queued_at: float | None
    """``time.time()`` when it was queued."""
    started_at: float | None
    """``time.time()`` when its last run started."""
    finished_at: float | None
    """``time.time()`` when it finished."""
    progress: float | None
    """What the task last reported with :func:`taskmw.progress` (0 to 1), if anything."""
    message: str | None
    """The message that came with it."""
    error: TaskError | None
    """Why it did not finish ``ok`` (``None`` while it runs, or when it did)."""
    arguments: str | None = None
    """A short repr of what it was given (``fn(*args, **kwargs)``), when the
    pool records arguments (``record_arguments=True``) and they are still kept."""
    scheduled_for: float | None = None
    """A delayed task's due time (``time.time()``; ``delay=``/``eta=``), else ``None``.
    Its state is ``"scheduled"`` until then."""

    def as_dict(self) -> dict[str, object]:
        """Plain data (JSON-able): the fields, the error as a dict."""
        out = dataclasses.asdict(self)
        out["error"] = self.error._asdict() if self.error is not None else None
        return out
