"""Shared by the Celery worker, the web app and the tests: the tasks, the
data objects, the plugins, and the Celery app's settings (``make_app``).

Records go to JSON lines under ``$TASKMW_E2E_DIR``: ``ontask-<pid>.jsonl``
(every ``on_task``, in the Celery pool process), ``life-<pid>.jsonl``
(``on_worker_start``/``stop``) and ``finish-<pid>.jsonl`` (every
``on_finish``, where it is delivered).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from celery import Celery

import taskmw
from taskmw import TaskEvent, TaskFinishEvent, hookimpl

_lock = threading.Lock()


def make_app(url: str) -> Celery:
    """The tests' Celery app: Redis at ``url`` as broker and result backend."""
    app = Celery("taskmw-tests", broker=url, backend=url, set_as_current=False)
    app.conf.update(broker_connection_retry_on_startup=True, result_expires=600, worker_hijack_root_logger=False)
    return app


def record(kind: str, row: dict[str, Any]) -> None:
    """Append ``row`` to ``$TASKMW_E2E_DIR/<kind>-<pid>.jsonl`` (if set)."""
    folder = os.environ.get("TASKMW_E2E_DIR")
    if not folder:
        return
    line = json.dumps(row, default=repr) + "\n"
    with _lock, open(Path(folder) / f"{kind}-{os.getpid()}.jsonl", "a", encoding="utf-8") as f:
        f.write(line)


# -- tasks ---------------------------------------------------------------------


def add(a: int, b: int) -> int:
    return a + b


def whoami() -> tuple[int, int]:
    return os.getpid(), os.getppid()


def boom(message: str) -> None:
    raise ValueError(message)


async def async_add(a: int, b: int) -> int:
    await asyncio.sleep(0.01)
    return a + b


def queue_inner(a: int) -> int:
    """A task that queues a task (in the Celery worker) and waits for it."""
    return taskmw.current_server().taskwait(add, a, 1, timeout=30) * 10


def hang_first_time(folder: str, seconds: float = 30.0) -> int:
    """Write ``attempt-<n>-<pid>`` into ``folder``; the first attempt then
    sleeps (bounded) until the test kills its process. Returns the attempt."""
    d = Path(folder)
    attempt = len(list(d.glob("attempt-*"))) + 1
    (d / f"attempt-{attempt}-{os.getpid()}").write_text("")
    if attempt == 1:
        time.sleep(seconds)
    return attempt


def fail_first(folder: str) -> int:
    """Raise on the first attempt (counted in ``folder``); return the attempt after."""
    d = Path(folder)
    attempt = len(list(d.glob("try-*"))) + 1
    (d / f"try-{attempt}").write_text("")
    if attempt == 1:
        raise RuntimeError("the first attempt fails")
    return attempt


def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def report_progress(steps: int, pause: float) -> str:
    """Report ``taskmw.progress`` ``steps`` times, ``pause`` seconds apart."""
    for i in range(1, steps + 1):
        taskmw.progress(i / steps, f"step {i}")
        time.sleep(pause)
    return "reported"


def return_lock() -> Any:
    return threading.Lock()


# -- data objects, listeners, services ---------------------------------------------


class Signup:
    def __init__(self, email: str) -> None:
        self.email = email


class VipSignup(Signup):
    pass


def welcome(signup: Signup) -> str:
    return f"welcome {signup.email}"


def vip_welcome(signup: Signup) -> str:
    return f"vip {signup.email}"


def mail(to: str, subject: str = "") -> str:
    return f"mail to {to}: {subject}"


def send_receipt(order: int) -> str:
    return f"receipt {order} from pid {os.getpid()}"


deferred_receipt = taskmw.deferred(send_receipt, "celery_tests.receipt")

LISTENERS: dict[type, list[Any]] = {Signup: [welcome], VipSignup: [vip_welcome]}


# -- plugins --------------------------------------------------------------------------


class Services:
    """Resolves the ``mailer`` service in the worker."""

    @hookimpl
    def resolve_service(self, name: str) -> Any:
        return mail if name == "mailer" else None


class Recorder:
    """Records every on_task and on_finish, and the worker's lifecycle."""

    @hookimpl(tryfirst=True)
    def on_task(self, event: TaskEvent) -> None:
        record("ontask", {"task_id": event.task_id, "worker_id": event.worker_id, "pid": os.getpid(),
                          "data_type": type(event.data).__name__})  # fmt: skip

    @hookimpl
    def on_worker_start(self, worker_id: int, server: Any) -> None:
        record("life", {"event": "start", "worker_id": worker_id, "pid": os.getpid(), "server": server.backend})

    @hookimpl
    def on_worker_stop(self, worker_id: int, server: Any) -> None:
        record("life", {"event": "stop", "worker_id": worker_id, "pid": os.getpid()})

    @hookimpl
    def on_finish(self, event: TaskFinishEvent) -> None:
        error = event.error
        record("finish", {
            "task_id": event.task_id, "status": event.status, "return_value": event.return_value,
            "error": None if error is None else {"type": error.type, "message": error.message,
                                                 "traceback": error.traceback[-2000:]},
            "worker_id": event.worker_id, "pid": os.getpid(),
        })  # fmt: skip
