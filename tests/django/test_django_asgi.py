"""``current_server()`` and ``request.taskmw`` in Django views under the
ASGI handler (in this process, through httpx's ASGI transport; the servers
are in test_django_servers.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskmw import TaskServer
from taskmw.contrib.django import get_asgi_application, get_wsgi_application
from taskmw.middleware import ASGITaskMiddleware, WSGITaskMiddleware


async def _get(app: Any, *paths: str) -> list[dict[str, Any]]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return [(await client.get(p)).json() for p in paths]


def test_views_under_asgi_find_the_pool_of_their_request(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKMW_BACKEND", "eager")
    app = get_asgi_application()
    assert isinstance(app, ASGITaskMiddleware) and app.server.task_workers == 2  # settings.TASKMW
    with TaskServer(1, backend="eager") as other:  # now this process's default pool: not the request's
        sync_view, async_view = asyncio.run(_get(app, "/pool", "/pool-async"))
    for answer in (sync_view, async_view):
        assert answer["request"] == "ASGIRequest" and answer["via"] == "scope"
        assert answer["current_server_is_request_taskmw"] is True
    assert other is not app.server
    app.server.close()


def test_the_wsgi_application_reads_the_setting(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKMW_BACKEND", "eager")
    app = get_wsgi_application()
    assert isinstance(app, WSGITaskMiddleware) and app.server.task_workers == 2
    app.server.close()
