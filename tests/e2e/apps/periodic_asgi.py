"""An ASGI app with a periodic task, for ``uvicorn --workers 2
periodic_asgi:app``: each uvicorn worker imports the app; they share one
pool (with ``share="never"``, ``PERIODIC_SHARE=never``, each builds its own, which runs the
schedule too, and says so)."""

from __future__ import annotations

import json
import os

import taskmw
from taskmw import TaskMiddleware

RUNS = os.path.join(os.environ["TASKMW_E2E_DIR"], "periodic-runs.txt")


@taskmw.periodic(every=3600)
def hourly() -> None:
    with open(RUNS, "a") as f:
        f.write(f"{os.getpid()}\n")


async def asgi(scope, receive, send):
    if scope["type"] != "http":
        return
    body = json.dumps({"pid": os.getpid()}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


app = TaskMiddleware(asgi, task_workers=1, share=os.environ.get("PERIODIC_SHARE", "auto"))
