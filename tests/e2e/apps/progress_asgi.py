"""A Starlette app over :mod:`progress_jobs` (``uvicorn progress_asgi:app``,
or gunicorn ``--preload -w 3 -k uvicorn_worker.UvicornWorker``): the routes
of :mod:`progress_wsgi`."""

from __future__ import annotations

import os

import progress_jobs
from recorder import Recorder
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from taskmw import TaskMiddleware


def _server(request: Request):
    return request.scope["taskmw.server"]


async def queue_job(request: Request) -> JSONResponse:
    params = request.query_params  # (a form would need python-multipart)
    return JSONResponse(progress_jobs.queue(_server(request), params["token"], bool(params.get("fail"))))


async def job(request: Request) -> JSONResponse:
    progress_jobs.hold(float(request.query_params.get("hold", 0)))  # blocks the loop: on purpose
    code, body = progress_jobs.job(_server(request), request.path_params["task_id"])
    return JSONResponse(body, code)


async def cancel(request: Request) -> JSONResponse:
    unless = request.query_params.get("unless_pid")
    code, body = progress_jobs.cancel(_server(request), request.path_params["task_id"], int(unless) if unless else None)
    return JSONResponse(body, code)


async def kill_self(request: Request) -> JSONResponse:
    progress_jobs.kill_self(_server(request), request.query_params["token"])
    return JSONResponse({"error": "still alive"}, 500)  # not reached


async def pool(request: Request) -> JSONResponse:
    progress_jobs.hold(float(request.query_params.get("hold", 0)))
    return JSONResponse({"pid": os.getpid(), "supervisor": _server(request).supervisor_pid})


starlette_app = Starlette(
    routes=[
        Route("/jobs", queue_job, methods=["POST"]),
        Route("/jobs/{task_id:int}", job),
        Route("/jobs/{task_id:int}/cancel", cancel, methods=["POST"]),
        Route("/kill-self", kill_self),
        Route("/pool", pool),
    ]
)

app = TaskMiddleware(starlette_app, task_workers=1, plugins=[Recorder()])
