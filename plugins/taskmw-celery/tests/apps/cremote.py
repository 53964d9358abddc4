"""Another process using the same Celery app: ``python cremote.py <command>
<task id> ...`` builds its own ``TaskServer(backend="celery")`` on
``$TASKMW_CELERY_URL`` (it queued nothing) and prints one JSON line.

Commands: ``status``, ``result``, ``cancel`` (``terminate`` as a third
argument), ``tasks``, and ``watch`` (poll ``status()`` until done, then
``result()``: every distinct state seen, with its progress and message).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import cjobs

from taskmw import TaskFailed, TaskServer, UnknownTask

WAIT = 30.0


def result(server: TaskServer, task_id: int) -> dict[str, Any]:
    try:
        return {"value": server.result(task_id, timeout=WAIT)}
    except TaskFailed as exc:
        e = exc.event.error
        return {"failed": exc.event.status, "error": [e.type, e.message, bool(e.traceback)] if e else None}
    except UnknownTask as exc:
        return {"unknown": exc.reason}


def main(command: str, *args: str) -> dict[str, Any]:
    server = TaskServer(backend="celery", celery_app=cjobs.make_app(os.environ["TASKMW_CELERY_URL"]), entrypoints=False)
    try:
        if command == "tasks":
            return {k: [i.as_dict() for i in v] for k, v in server.tasks(int(args[0]) if args else 50).items()}
        task_id = int(args[0])
        if command == "result":
            return result(server, task_id)
        try:
            if command == "status":
                return {"info": server.status(task_id).as_dict()}
            if command == "cancel":
                cancelled = server.cancel(task_id, terminate=args[1:] == ("terminate",))
                return {"cancelled": cancelled, "info": server.status(task_id).as_dict()}
            if command == "watch":
                seen: list[list[Any]] = []
                deadline = time.monotonic() + WAIT
                info = server.status(task_id)
                while time.monotonic() < deadline:
                    row = [info.state, info.progress, info.message]
                    if not seen or seen[-1] != row:
                        seen.append(row)
                    if info.state == "done":
                        break
                    time.sleep(0.02)
                    info = server.status(task_id)
                return {"seen": seen, "info": info.as_dict(), **result(server, task_id)}
        except UnknownTask as exc:
            return {"unknown": exc.reason}
        raise SystemExit(f"unknown command {command!r}")
    finally:
        server.close()


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:])))
