"""What the benchmark's apps share: the task, its argument, and the finish counter."""

from __future__ import annotations

import os
import threading
from typing import Any

from taskmw import hookimpl

PAYLOAD = b"x" * 100
"""The task's argument: 100 bytes."""


def trivial(data: bytes) -> int:
    """The task: a module-level function (pickled by reference)."""
    return len(data)


class FinishCounter:
    """Counts this process's finishes by status (``on_finish`` runs on a reader thread)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.queued = 0
        """Tasks this process queued (the routes count them)."""
        self._lock = threading.Lock()

    @hookimpl  # type: ignore[untyped-decorator]
    def on_finish(self, event: Any) -> None:
        with self._lock:
            self.counts[event.status] = self.counts.get(event.status, 0) + 1

    def line(self) -> str:
        """The line the benchmark parses: ``taskmw-bench finishes pid=… queued=… ok=…``."""
        counts = " ".join(f"{status}={n}" for status, n in sorted(self.counts.items()))
        return f"taskmw-bench finishes pid={os.getpid()} queued={self.queued} {counts}"
