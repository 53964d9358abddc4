"""The job and the answers of the progress apps (``progress_wsgi``,
``progress_asgi``): a job that reports progress and then waits for a flag
file the test creates, so that a test sees it ``queued``, ``running`` (with
progress) and ``done`` when it chooses, from any HTTP worker."""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import taskmw

JOB_LIMIT = 60.0  # seconds a job waits for its flag before it gives up (no test waits that long)


def flag_path(token: str) -> str:
    return os.path.join(os.environ["TASKMW_E2E_DIR"], f"go-{token}")


def wait_job(token: str, fail: bool = False) -> dict[str, Any]:
    """Report progress 0.5, wait for ``go-<token>`` in ``$TASKMW_E2E_DIR``,
    then return (or raise ``ValueError`` with ``fail``)."""
    taskmw.progress(0.5, f"waiting for go-{token}")
    deadline = time.monotonic() + JOB_LIMIT
    while not os.path.exists(flag_path(token)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no go-{token} within {JOB_LIMIT}s")
        time.sleep(0.02)
    taskmw.progress(1.0, "done")
    if fail:
        raise ValueError(f"failed as asked: {token}")
    return {"token": token, "pid": os.getpid()}


def queue(server: Any, token: str, fail: bool, delay: float = 0.0) -> dict[str, Any]:
    """``POST /jobs``: queue :func:`wait_job` (in ``delay`` seconds if given)."""
    if delay:
        return {"id": server.task(taskmw.Task(wait_job, token, fail=fail), delay=delay), "pid": os.getpid()}
    return {"id": server.task(wait_job, token, fail=fail), "pid": os.getpid()}


def job(server: Any, task_id: int) -> tuple[int, dict[str, Any]]:
    """``GET /jobs/<id>``: the record, the result once done ``ok``, this pid."""
    try:
        info = server.status(task_id)
    except taskmw.UnknownTask as exc:
        return 404, {"error": str(exc), "pid": os.getpid()}
    out: dict[str, Any] = {"task": info.as_dict(), "pid": os.getpid()}
    if info.state == "done" and info.status == "ok":
        try:
            out["result"] = server.result(task_id, timeout=0)
        except taskmw.UnknownTask as exc:
            out["result_error"] = str(exc)
    return 200, out


def cancel(server: Any, task_id: int, unless_pid: int | None) -> tuple[int, dict[str, Any]]:
    """``POST /jobs/<id>/cancel``: 409 (nothing done) when answered by the
    worker ``unless_pid``, so that a test can have another worker do it."""
    if unless_pid == os.getpid():
        return 409, {"skipped": True, "pid": os.getpid()}
    try:
        return 200, {"cancelled": server.cancel(task_id), "pid": os.getpid()}
    except taskmw.UnknownTask as exc:
        return 404, {"error": str(exc), "pid": os.getpid()}


def kill_self(server: Any, token: str) -> None:
    """``GET /kill-self``: queue a job, write its id to
    ``killed-<pid>.json``, then SIGKILL this HTTP worker (no answer)."""
    answer = queue(server, token, False)
    path = os.path.join(os.environ["TASKMW_E2E_DIR"], f"killed-{os.getpid()}.json")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(answer, f)
    os.rename(path + ".tmp", path)
    os.kill(os.getpid(), signal.SIGKILL)


def hold(seconds: float) -> None:
    """Keep this worker busy (at most 2 s), so that concurrent requests
    reach the other HTTP workers."""
    if seconds:
        time.sleep(min(seconds, 2.0))
