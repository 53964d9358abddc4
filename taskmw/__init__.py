"""taskmw: task workers for any WSGI or ASGI application.

Wrap an app and queue work from its handlers::

    from taskmw import TaskMiddleware

    app = TaskMiddleware(app, task_workers=4)         # WSGI or ASGI, detected

    def handler(environ, start_response):
        task_id = environ["taskmw.server"].task(send_mail, to, subject=s)

A pool of pre-forked worker processes runs the tasks; each task's outcome
comes back, as a :class:`TaskFinishEvent`, to the ``on_finish`` hooks of the
process that queued it. Without a web app: ``with TaskServer() as server``.
"""

from taskmw.errors import PoolClosed, QueueFull, TaskFailed, TaskmwError, UnknownTask
from taskmw.events import STATUSES, Status, TaskError, TaskEvent, TaskFinishEvent
from taskmw.hookspecs import hookimpl, hookspec
from taskmw.info import TaskInfo
from taskmw.interfaces import Server, Transport
from taskmw.middleware import ASGITaskMiddleware, TaskMiddleware, WSGITaskMiddleware
from taskmw.ring import (
    Batch,
    Held,
    Peeked,
    RecordTooLarge,
    Ring,
    RingCorrupt,
    RingError,
    RingFull,
    RingStats,
)
from taskmw.schedule import Periodic, periodic, periodic_tasks
from taskmw.server import TaskServer, create_server
from taskmw.settings import Settings
from taskmw.tasks import (
    DeferredListener,
    ServiceTask,
    Task,
    TaskFunction,
    TaskOptions,
    current_server,
    deferred,
    progress,
    task,
)

__all__ = [
    "ASGITaskMiddleware",
    "Batch",
    "DeferredListener",
    "Held",
    "Peeked",
    "Periodic",
    "PoolClosed",
    "QueueFull",
    "RecordTooLarge",
    "Ring",
    "RingCorrupt",
    "RingError",
    "RingFull",
    "RingStats",
    "STATUSES",
    "Server",
    "ServiceTask",
    "Settings",
    "Status",
    "Task",
    "TaskError",
    "TaskEvent",
    "TaskFailed",
    "TaskFinishEvent",
    "TaskFunction",
    "TaskOptions",
    "TaskInfo",
    "TaskMiddleware",
    "TaskServer",
    "TaskmwError",
    "Transport",
    "UnknownTask",
    "WSGITaskMiddleware",
    "create_server",
    "current_server",
    "deferred",
    "hookimpl",
    "hookspec",
    "periodic",
    "periodic_tasks",
    "progress",
    "task",
]
