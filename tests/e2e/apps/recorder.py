"""A plugin given in code: records every ``on_task`` (in the task worker) and
every ``on_finish`` (in the process that queued the task) as JSON lines under
``$TASKMW_E2E_DIR``: ``task-<pid>.jsonl`` and ``finish-<pid>.jsonl``."""

from __future__ import annotations

import os
import threading

from jobs import record

from taskmw import TaskEvent, TaskFinishEvent, hookimpl


class Recorder:
    @hookimpl
    def on_task(self, event: TaskEvent) -> None:
        # An observer: it looks and returns, never completes the event.
        data = event.data
        record(
            "task",
            {
                "task_id": event.task_id,
                "worker_id": event.worker_id,
                "data_type": type(data).__name__,
                "args": list(getattr(data, "args", ()) or ()),
                "pid": os.getpid(),
                "ppid": os.getppid(),
            },
        )

    @hookimpl
    def on_finish(self, event: TaskFinishEvent) -> None:
        error = event.error
        record(
            "finish",
            {
                "task_id": event.task_id,
                "status": event.status,
                "return_value": event.return_value,
                "error": None
                if error is None
                else {"type": error.type, "message": error.message, "traceback": error.traceback[-2000:]},
                "duration": event.duration,
                "worker_id": event.worker_id,
                "pid": os.getpid(),
                "thread": threading.current_thread().name,
            },
        )
