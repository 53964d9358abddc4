"""The ASGI app of the HTTP benchmark (``bench/test_http.py``): a Starlette
app served by ``uvicorn --app-dir bench/apps asgi_app:app`` (one process),
wrapped in ``TaskMiddleware`` with 2 task workers. Three routes:

* ``/plain`` answers ``ok``;
* ``/queue`` first queues one trivial task (fire and forget, ``task()``);
* ``/wait`` awaits the same task's return value (``await task_async(...)``).

The finishes the app receives are counted (:class:`common.FinishCounter`,
on the event loop) and logged when the server shuts down, so the benchmark can
check that every queued task finished.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator

from common import PAYLOAD, FinishCounter, trivial
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from taskmw import TaskMiddleware

finishes = FinishCounter()


async def plain(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok\n")


async def queue(request: Request) -> PlainTextResponse:
    request.scope["taskmw.server"].task(trivial, PAYLOAD)
    finishes.queued += 1
    return PlainTextResponse("ok\n")


async def wait(request: Request) -> PlainTextResponse:
    finishes.queued += 1
    if await request.scope["taskmw.server"].task_async(trivial, PAYLOAD) != len(PAYLOAD):
        return PlainTextResponse("wrong result\n", status_code=500)
    return PlainTextResponse("ok\n")


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """Logs the finishes counted when the server shuts down (the benchmark's
    load is over by then; the pool is closed after this)."""
    yield
    print(finishes.line(), file=sys.stderr, flush=True)


app = TaskMiddleware(
    Starlette(routes=[Route("/plain", plain), Route("/queue", queue), Route("/wait", wait)], lifespan=lifespan),
    task_workers=2,
    plugins=[finishes],
    entrypoints=False,
)
