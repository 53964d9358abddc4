"""A FastAPI app as its docs write one: the pool comes in through
``app.add_middleware`` and reaches handlers as a dependency. Served by
``uvicorn fastapi_app:app`` and ``taskmw start fastapi_app:app``."""

from __future__ import annotations

import os
from typing import Annotated

from fastapi import Depends, FastAPI, Request

from taskmw import TaskMiddleware, TaskServer, current_server


def double(x: int) -> dict[str, int]:
    return {"value": 2 * x, "pid": os.getpid()}


def scope_server(request: Request) -> TaskServer:
    return request.scope["taskmw.server"]  # type: ignore[no-any-return]


Pool = Annotated[TaskServer, Depends(current_server)]

app = FastAPI()
app.add_middleware(TaskMiddleware, task_workers=2)


@app.get("/wait")
async def wait(server: Pool, x: int = 1) -> dict[str, int]:
    return await server.task_async(double, x)  # type: ignore[no-any-return]


@app.get("/pool")
def pool(server: Pool, same: Annotated[TaskServer, Depends(scope_server)]) -> dict[str, object]:
    return {"task_workers": server.task_workers, "same": server is same, "supervisor": server.supervisor_pid}
