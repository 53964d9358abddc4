"""A Starlette app written the way a user writes one, served by uvicorn
(``uvicorn starlette_app:app``) or by gunicorn with uvicorn's worker class in
the e2e tests."""

from __future__ import annotations

import itertools
import os
import time

from jobs import add, boom
from recorder import Recorder
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from taskmw import TaskMiddleware

_seq = itertools.count()  # order in which this process got its task ids


def _server(request: Request):
    return request.scope["taskmw.server"]


async def queue_add(request: Request) -> JSONResponse:
    a, b = int(request.query_params["a"]), int(request.query_params["b"])
    delay = float(request.query_params.get("delay", 0))  # seconds the task sleeps after recording its run
    server = _server(request)
    task_id = server.task(add, a, b, delay=delay) if delay else server.task(add, a, b)
    seq = next(_seq)  # no await in between: same order as the ids
    return JSONResponse({"id": task_id, "pid": os.getpid(), "seq": seq})


async def queue_boom(request: Request) -> JSONResponse:
    task_id = _server(request).task(boom, request.query_params["msg"])
    seq = next(_seq)
    return JSONResponse({"id": task_id, "pid": os.getpid(), "seq": seq})


async def wait_add(request: Request) -> JSONResponse:
    a, b = int(request.query_params["a"]), int(request.query_params["b"])
    result = await _server(request).task_async(add, a, b)
    return JSONResponse({"result": result, "pid": os.getpid()})


async def pool(request: Request) -> JSONResponse:
    # ?hold=S blocks this worker's event loop for S seconds (deliberately: a
    # test-only knob), so that concurrent requests reach the other HTTP workers.
    hold = float(request.query_params.get("hold", 0))
    if hold:
        time.sleep(min(hold, 2.0))
    server = _server(request)
    return JSONResponse({"pid": os.getpid(), "ppid": os.getppid(), "supervisor": server.supervisor_pid})


starlette_app = Starlette(
    routes=[
        Route("/queue", queue_add),
        Route("/fail", queue_boom),
        Route("/wait", wait_add),
        Route("/pool", pool),
    ]
)

app = TaskMiddleware(starlette_app, task_workers=2, plugins=[Recorder()])
