"""A Starlette app with the dashboard mounted at ``/_taskmw`` (read-only,
behind an access check that denies while ``$TASKMW_E2E_DIR/deny`` exists),
one pool (``uvicorn dash_asgi:app``): ``POST /jobs``, ``GET /pool``."""

from __future__ import annotations

import os

import dash_jobs
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

import taskmw.web
from taskmw import TaskMiddleware


async def queue_job(request: Request) -> JSONResponse:
    server = request.scope["taskmw.server"]
    return JSONResponse(dash_jobs.queue(server, request.query_params["kind"], request.query_params.get("token", "")))


async def pool(request: Request) -> JSONResponse:
    return JSONResponse({"pid": os.getpid()})


dashboard = taskmw.web.asgi_app(check=lambda scope: not dash_jobs.denied())
app = TaskMiddleware(
    Starlette(routes=[Route("/jobs", queue_job, methods=["POST"]), Route("/pool", pool), Mount("/_taskmw", dashboard)]),
    task_workers=1,
)
