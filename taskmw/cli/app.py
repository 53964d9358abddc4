"""Importing the user's app: :func:`load_app` (in this process) and
:func:`inspect_app` (in a short-lived child that builds no pool)."""

from __future__ import annotations

import ast
import atexit
import contextlib
import importlib
import inspect
import json
import logging
import os
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any, Literal

from taskmw import config, middleware
from taskmw.cli.errors import CLIError
from taskmw.interfaces import Server
from taskmw.middleware import ASGITaskMiddleware, TaskMiddleware
from taskmw.schedule import schedule_of
from taskmw.server import TaskServer

log = logging.getLogger(__name__)

IMPORT_TIMEOUT = 60.0
"""Seconds the app's import in the inspecting child may take (by default)."""
IMPORT_TIMEOUT_ENV = "TASKMW_IMPORT_TIMEOUT"
IMPORT_TIMEOUT_HOW = f"--import-timeout SECONDS or {IMPORT_TIMEOUT_ENV} sets it"


def load_app(spec: str) -> Any:
    """Import ``MODULE:NAME`` (``NAME`` defaults to ``app``; dots reach
    attributes of attributes) and return the app.

    An app factory is called, once per call of this function (so once per
    process: the inspecting child, each HTTP worker, each task worker):
    ``MODULE:create_app()`` (gunicorn's convention; literal arguments
    allowed, ``create_app('prod', debug=True)``), or ``MODULE:create_app``
    naming a plain function that can be called with no argument (a WSGI or
    ASGI app needs two or three).

    Raises:
        CLIError: the module cannot be imported, has no such attribute, or
            the factory call is not ``NAME(literal arguments)``.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise CLIError(f"APP must look like MODULE:NAME (e.g. examples.demo:app), got {spec!r}")
    path, call = _parse_attr(attr or "app", spec)
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise CLIError(f"cannot import {module_name!r} from {os.getcwd()}: {exc}") from exc
        raise
    for part in path:
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CLIError(f"module {module_name!r} has no attribute {'.'.join(path)!r}") from None
    if call is not None:
        if not callable(obj):
            raise CLIError(f"{spec}: {obj!r} is not callable, it cannot be called as an app factory")
        obj = obj(*call[0], **call[1])
    elif is_factory(obj):
        obj = obj()
    if not callable(obj):
        raise CLIError(f"{spec} is not a WSGI or ASGI app: {obj!r} is not callable")
    return obj


def is_factory(obj: Any) -> bool:
    """True for a plain function callable with no argument (an app factory
    such as Flask's ``create_app``): a WSGI app takes ``(environ,
    start_response)``, an ASGI app ``(scope, receive, send)``."""
    if not inspect.isfunction(obj) or inspect.iscoroutinefunction(obj):
        return False
    try:
        inspect.signature(obj).bind()
    except (TypeError, ValueError):
        return False
    return True


def _parse_attr(attr: str, spec: str) -> tuple[list[str], tuple[list[Any], dict[str, Any]] | None]:
    """``"a.b"`` -> (["a", "b"], None); ``"make(1, x='y')"`` -> (["make"], ([1], {"x": "y"}))."""
    try:
        node = ast.parse(attr.strip(), mode="eval").body
    except SyntaxError:
        raise CLIError(f"{spec}: {attr!r} is neither a name nor a call of a factory with literal arguments") from None
    call = None
    if isinstance(node, ast.Call):
        try:
            args = [ast.literal_eval(a) for a in node.args]
            kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg is not None}
        except ValueError:
            raise CLIError(f"{spec}: a factory's arguments must be literals (numbers, strings, ...)") from None
        if len(kwargs) != len(node.keywords):
            raise CLIError(f"{spec}: a factory's arguments must be literals, not **kwargs")
        call, node = (args, kwargs), node.func
    path: list[str] = []
    while isinstance(node, ast.Attribute):
        path.insert(0, node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        raise CLIError(f"{spec}: {attr!r} is neither a name nor a call of a factory with literal arguments")
    path.insert(0, node.id)
    return path, call


def inspect_app(spec: str, timeout: float = IMPORT_TIMEOUT) -> tuple[Literal["wsgi", "asgi"], dict[str, Any]]:
    """Import the app in a forked child that builds no pool; returns its
    interface (``"wsgi"`` or ``"asgi"``) and the pool settings of its
    ``TaskMiddleware(...)`` (JSON-able ones: numbers, strings, booleans,
    lists of strings; and its schedule, as :meth:`taskmw.Periodic.wire`
    data: its ``schedule=``, else the ``@taskmw.periodic`` functions its
    import decorated). The child gets ``timeout`` seconds to answer.

    Raises:
        CLIError: the app could not be imported (the child's traceback is in
            the message), or its import took longer than ``timeout`` (the
            child is killed).
    """
    read_fd, write_fd = os.pipe()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _default_signal_handlers()
        code = 0
        try:
            settings: dict[str, Any] = {}
            middleware.inspect_only(settings)
            app = load_app(spec)
            wrapped = app if isinstance(app, TaskMiddleware) else TaskMiddleware(app)  # only detects the kind here
            kind = "asgi" if isinstance(wrapped, ASGITaskMiddleware) else "wsgi"
            settings = _merge_settings(spec, settings, added_middleware_settings(wrapped.app))
            plain = {k: v for k, v in settings.items() if _plain(v)}
            plain["schedule"] = [entry.wire() for entry in schedule_of(settings.get("schedule"))]
            answer = {"interface": kind, "settings": plain}
        except CLIError as exc:
            answer, code = {"error": str(exc)}, 1
        except BaseException:  # noqa: B036 - whatever the import raised, report it
            answer, code = {"error": f"importing {spec} failed:\n{traceback.format_exc()}"}, 1
        with os.fdopen(write_fd, "w") as out:
            out.write(json.dumps(answer) + "\n")
        with contextlib.suppress(BaseException):
            # What the app registered (temporary files, …) runs as at a normal exit; the
            # atexit module has no public way to run them without exiting through Python.
            atexit._run_exitfuncs()  # noqa: SLF001
        os._exit(code)
    os.close(write_fd)
    deadline = time.monotonic() + timeout
    with os.fdopen(read_fd, "rb") as inp:
        data = read_line_until(inp.fileno(), deadline)
    if data is None:
        _end_child(pid, 0.0)
        raise CLIError(f"importing {spec} did not finish within {timeout:g}s ({IMPORT_TIMEOUT_HOW})")
    _end_child(pid, max(deadline - time.monotonic(), 5.0))  # it runs the app's atexit functions, then exits
    text = data.decode(errors="replace")
    try:
        answer = json.loads(text)
    except json.JSONDecodeError:
        raise CLIError(f"importing {spec} ended the process before it reported (output: {text[:200]!r})") from None
    if "error" in answer:
        raise CLIError(answer["error"])
    return answer["interface"], answer["settings"]


def added_middleware_settings(app: Any) -> dict[str, Any]:
    """The settings of a ``TaskMiddleware`` added to a Starlette or FastAPI
    ``app`` with ``app.add_middleware(TaskMiddleware, ...)``: Starlette builds
    its middleware only at the first request, so importing the app does not
    show them. Read from ``app.user_middleware``, by building the
    ``TaskMiddleware`` while inspecting (which builds no pool)."""
    found: dict[str, Any] = {}
    for entry in getattr(app, "user_middleware", None) or ():
        cls = getattr(entry, "cls", None)
        if not (isinstance(cls, type) and issubclass(cls, TaskMiddleware)):
            continue
        args = getattr(entry, "args", ())
        kwargs = getattr(entry, "kwargs", None) or getattr(entry, "options", None) or {}
        recorded: dict[str, Any] = {}
        previous = middleware.inspecting()
        middleware.inspect_only(recorded)
        try:
            cls(app, *args, **kwargs)
        finally:
            middleware.inspect_only(previous)
        found.update(recorded)
    return found


def _merge_settings(spec: str, given: dict[str, Any], added: dict[str, Any]) -> dict[str, Any]:
    """The app's ``TaskMiddleware(...)`` settings and those of its
    ``add_middleware(TaskMiddleware, ...)``; one setting given two values is refused.

    Raises:
        CLIError: naming the setting, both values and what wins over both.
    """
    for name in sorted(given.keys() & added.keys()):
        if given[name] != added[name]:
            option = next((o for o in config.OPTIONS if config.pool_name(o) == name), None)
            wins = f"{'/'.join(option.flags)} or {option.env} wins over both" if option else "give it once"
            raise CLIError(f"{spec} gives {name} twice: {given[name]!r} to TaskMiddleware(...) and {added[name]!r} "
                           f"to add_middleware(TaskMiddleware, ...); keep one ({wins})")  # fmt: skip
    return added | given


def _plain(value: Any) -> bool:
    """True for a setting that can travel as JSON: a scalar, or a list of strings."""
    if isinstance(value, (list, tuple)):
        return all(isinstance(v, str) for v in value)
    return value is None or isinstance(value, (int, float, str, bool))


def read_line_until(fd: int, deadline: float) -> bytes | None:
    """Read ``fd`` up to a newline or its end; None if ``time.monotonic()``
    passes ``deadline`` first. (Not to the end only: a process the app
    started may hold the pipe open.)"""
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return data


def _end_child(pid: int, timeout: float) -> None:
    """Reap child ``pid`` within ``timeout`` seconds, else SIGKILL it first.
    (Under gunicorn the arbiter may reap it first: then it is gone already.)"""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
            time.sleep(0.01)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ChildProcessError, ProcessLookupError):
        return


def _default_signal_handlers() -> None:
    """In the inspecting child: no Python signal handler of the parent's
    (gunicorn's, when the master checks new code) runs here."""
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)
    for sig in signal.valid_signals():
        with contextlib.suppress(OSError, ValueError):
            handler = signal.getsignal(sig)
            if callable(handler) and handler is not signal.default_int_handler:
                signal.signal(sig, signal.SIG_DFL)


def import_in_task_worker(spec: str) -> Callable[[Server, int], None]:
    """The ``worker.before_run`` hook: import the app in a new task worker,
    joining the inherited pool, so the app's plugins run there too."""

    def setup(server: Server, worker_id: int) -> None:
        assert isinstance(server, TaskServer)  # the pool the master built
        middleware.adopt_pool(server)
        try:
            load_app(spec)
        except BaseException:  # noqa: B036 - a broken import must not kill (and re-fork) the worker in a loop
            log.exception("task worker %d: importing %s failed; the app's plugins do not run in it", worker_id, spec)

    return setup
