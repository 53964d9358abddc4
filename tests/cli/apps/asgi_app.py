"""A plain Starlette app (no TaskMiddleware): ``taskmw start`` wraps it and
handlers find the pool in the scope."""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


def double(x: int) -> dict[str, int]:
    return {"value": 2 * x, "pid": os.getpid()}


async def queue(request: Request) -> JSONResponse:
    server = request.scope["taskmw.server"]
    return JSONResponse({"id": server.task(double, int(request.query_params.get("x", 1)))})


async def wait(request: Request) -> JSONResponse:
    server = request.scope["taskmw.server"]
    return JSONResponse(await server.task_async(double, int(request.query_params.get("x", 1))))


async def ready(request: Request) -> JSONResponse:
    return JSONResponse({"pid": os.getpid()})


app = Starlette(routes=[Route("/queue", queue), Route("/wait", wait), Route("/ready", ready)])
