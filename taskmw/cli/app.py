"""Importing the user's app: :func:`load_app` (in this process) and
:func:`inspect_app` (in a short-lived child that builds no pool)."""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any, Literal

from taskmw import middleware
from taskmw.cli.errors import CLIError
from taskmw.middleware import ASGITaskMiddleware, TaskMiddleware
from taskmw.server import TaskServer

log = logging.getLogger(__name__)

INSPECT_TIMEOUT = 60.0  # seconds the app import in the inspecting child may take


def load_app(spec: str) -> Any:
    """Import ``MODULE:NAME`` (``NAME`` defaults to ``app``; dots reach
    attributes of attributes) and return the object.

    Raises:
        CLIError: the module cannot be imported or has no such attribute.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise CLIError(f"APP must look like MODULE:NAME (e.g. examples.demo:app), got {spec!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise CLIError(f"cannot import {module_name!r} from {os.getcwd()}: {exc}") from exc
        raise
    for part in (attr or "app").split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CLIError(f"module {module_name!r} has no attribute {attr or 'app'!r}") from None
    if not callable(obj):
        raise CLIError(f"{spec} is not a WSGI or ASGI app: {obj!r} is not callable")
    return obj


def inspect_app(spec: str) -> tuple[Literal["wsgi", "asgi"], dict[str, Any]]:
    """Import the app in a forked child that builds no pool; returns its
    interface (``"wsgi"`` or ``"asgi"``) and the pool settings of its
    ``TaskMiddleware(...)`` (JSON-able ones: numbers, strings, booleans,
    lists of strings).

    Raises:
        CLIError: the app could not be imported (the child's traceback is in
            the message).
    """
    read_fd, write_fd = os.pipe()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        code = 0
        try:
            settings: dict[str, Any] = {}
            middleware.inspect_only(settings)
            app = load_app(spec)
            wrapped = app if isinstance(app, TaskMiddleware) else TaskMiddleware(app)  # only detects the kind here
            kind = "asgi" if isinstance(wrapped, ASGITaskMiddleware) else "wsgi"
            plain = {k: v for k, v in settings.items() if _plain(v)}
            answer = {"interface": kind, "settings": plain}
        except CLIError as exc:
            answer, code = {"error": str(exc)}, 1
        except BaseException:  # noqa: B036 - whatever the import raised, report it
            answer, code = {"error": f"importing {spec} failed:\n{traceback.format_exc()}"}, 1
        with os.fdopen(write_fd, "w") as out:
            out.write(json.dumps(answer))
        with contextlib.suppress(BaseException):
            # What the app registered (temporary files, …) runs as at a normal exit; the
            # atexit module has no public way to run them without exiting through Python.
            atexit._run_exitfuncs()  # noqa: SLF001
        os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as inp:
        text = inp.read()
    _wait_child(pid, INSPECT_TIMEOUT)
    try:
        answer = json.loads(text)
    except json.JSONDecodeError:
        raise CLIError(f"importing {spec} ended the process before it reported (output: {text[:200]!r})") from None
    if "error" in answer:
        raise CLIError(answer["error"])
    return answer["interface"], answer["settings"]


def _plain(value: Any) -> bool:
    """True for a setting that can travel as JSON: a scalar, or a list of strings."""
    if isinstance(value, (list, tuple)):
        return all(isinstance(v, str) for v in value)
    return value is None or isinstance(value, (int, float, str, bool))


def _wait_child(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def import_in_task_worker(spec: str) -> Callable[[TaskServer, int], None]:
    """The ``worker.before_run`` hook: import the app in a new task worker,
    joining the inherited pool, so the app's plugins run there too."""

    def setup(server: TaskServer, worker_id: int) -> None:
        middleware.adopt_pool(server)
        try:
            load_app(spec)
        except BaseException:  # noqa: B036 - a broken import must not kill (and re-fork) the worker in a loop
            log.exception("task worker %d: importing %s failed; the app's plugins do not run in it", worker_id, spec)

    return setup
