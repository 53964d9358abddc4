"""taskmw: task workers for any WSGI or ASGI application.

The IPC core is available today as :class:`taskmw.Ring`; the task server
(``TaskMiddleware``, ``TaskServer``) builds on it.
"""

from taskmw.ring import (
    Batch,
    Held,
    RecordTooLarge,
    Ring,
    RingCorrupt,
    RingError,
    RingFull,
    RingStats,
)

__all__ = [
    "Batch",
    "Held",
    "RecordTooLarge",
    "Ring",
    "RingCorrupt",
    "RingError",
    "RingFull",
    "RingStats",
]
