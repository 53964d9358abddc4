"""The ``taskmw`` command: ``start``, ``stop``, ``reload`` and ``status``.

``taskmw start MODULE:APP`` serves a WSGI app on gunicorn (sync workers) or
an ASGI app on gunicorn with uvicorn workers, with one task pool shared by
every HTTP worker. How it is arranged (docs/operations.md says why):

1. The app is imported once in a short-lived child process, which only
   learns its kind (WSGI or ASGI) and the pool settings its
   ``TaskMiddleware(...)`` asks for; no pool is built there.
2. The master builds the pool from the settings (flags, then environment
   variables, then the app's, then defaults) **without importing the app**,
   and hands it down (:func:`taskmw.middleware.adopt_pool`).
3. HTTP workers import the app after gunicorn forks them; task workers import
   it when they start. A ``TaskMiddleware`` built there joins the pool, a
   plain app is wrapped in one.
4. ``taskmw reload`` is SIGHUP to the master: gunicorn replaces the HTTP
   workers, and the pool replaces its task workers, both with a fresh import
   of the app. ``taskmw stop`` is SIGTERM: requests drain, then tasks.

``taskmw status`` asks the master on its control socket (the pid file's path
+ ``.sock``, mode 0600).

The package: :mod:`~taskmw.cli.app` imports the user's app,
:mod:`~taskmw.cli.master` is the gunicorn master, :mod:`~taskmw.cli.pidfile`
finds a running master, :mod:`~taskmw.cli.commands` holds the commands,
:mod:`~taskmw.cli.render` the text of ``status``; here are the parser and
:func:`main`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from taskmw import config
from taskmw.cli.app import IMPORT_TIMEOUT, IMPORT_TIMEOUT_ENV, inspect_app, load_app
from taskmw.cli.commands import READY_TIMEOUT, READY_TIMEOUT_ENV, cmd_reload, cmd_start, cmd_status, cmd_stop
from taskmw.cli.errors import CLIError
from taskmw.cli.master import Master
from taskmw.cli.render import render_status

__all__ = ["CLIError", "Master", "build_parser", "inspect_app", "load_app", "main", "render_status"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskmw",
        description="Serve a WSGI or ASGI app with a shared pool of task workers, and manage it.",
        epilog="Every start option also reads an environment variable (TASKMW_<NAME>); see docs/configuration.md.",
    )
    parser.add_argument("--version", action="version", version=f"taskmw {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    start = sub.add_parser(
        "start",
        help="serve MODULE:APP with HTTP workers and a shared task pool",
        description="Serve MODULE:APP (WSGI on gunicorn, ASGI on uvicorn workers) with one task pool shared by every "
        "HTTP worker. APP may be a plain app (taskmw wraps it) or a TaskMiddleware (its settings are used; flags and "
        "environment variables win). Runs in the foreground unless --daemonize. Each option's help ends with "
        "[its environment variable; its default].",
    )
    start.add_argument("app", metavar="MODULE:APP", help="the app to serve, e.g. examples.demo:app")
    for opt in config.OPTIONS:
        kwargs: dict[str, Any] = {
            "dest": opt.name,
            "default": None,
            "help": f"{opt.help} [{opt.env}; {opt.default_text}]",
        }
        if opt.is_flag:
            kwargs["action"] = "store_const"
            kwargs["const"] = True
        else:
            kwargs["type"] = opt.parse
            kwargs["metavar"] = opt.metavar or opt.name.upper()
        start.add_argument(*opt.flags, **kwargs)
    start.add_argument("--import-timeout", type=float, default=None, metavar="SECONDS",
                       help="seconds the app's import may take (in the child that inspects it, at start and on reload) "
                       f"[{IMPORT_TIMEOUT_ENV}; {IMPORT_TIMEOUT:g}]")  # fmt: skip
    start.add_argument("--ready-timeout", type=float, default=None, metavar="SECONDS",
                       help=f"with --daemonize: seconds to wait for the daemon to listen [{READY_TIMEOUT_ENV}; "
                       f"{READY_TIMEOUT:g}]")  # fmt: skip
    start.add_argument("--gunicorn-arg", action="append", default=[], metavar="ARG", dest="gunicorn_args",
                       help="a gunicorn command-line setting, e.g. --gunicorn-arg=--max-requests=1000 (repeatable; "
                       "wins over GUNICORN_CMD_ARGS and --config; the worker class, preload, bind, pidfile, daemon "
                       "and taskmw's hooks are refused, with the reason) [GUNICORN_CMD_ARGS; none]")  # fmt: skip
    start.set_defaults(func=cmd_start)

    _command(
        sub, "stop", cmd_stop, "stop gracefully: requests finish, then queued tasks run",
        "Send SIGTERM to the master and wait until it exits: HTTP workers finish their requests, then the task pool "
        "runs what is queued (up to shutdown_timeout).",
        wait="give up waiting after this many seconds (the master goes on stopping)",
    )  # fmt: skip
    reload = _command(
        sub, "reload", cmd_reload, "load new code into HTTP and task workers, dropping nothing",
        "Send SIGHUP to the master: new HTTP workers (a fresh import of the app) replace the old ones after they "
        "finish their requests, and new task workers replace the old ones after they finish their task; queued tasks "
        "stay queued. Waits until every worker is new.",
        wait="give up waiting for new workers after this many seconds",
    )  # fmt: skip
    reload.add_argument("--no-wait", action="store_true", help="send the signal and return")
    reload.add_argument("-w", "--num-workers", type=int, default=None, metavar="N",
                        help="run N HTTP workers from now on (the pool's settings need a restart)")  # fmt: skip
    status = _command(
        sub, "status", cmd_status, "HTTP workers, task workers, queue depth, totals, tasks/s",
        "Show the running server: HTTP workers (pid, memory); task workers (pid, state, task in flight and for how "
        "long, tasks done, memory, restarts); queue depth; finished tasks by status; tasks/s over the last 10 "
        "seconds. Read from the pool's shared counters through the master's control socket.",
    )  # fmt: skip
    status.add_argument("--socket", default=None, metavar="PATH",
                        help="ask the pool of a server not started by taskmw start (gunicorn --preload, uvicorn) on "
                        "the socket it serves with TASKMW_STATUS_SOCKET=PATH [TASKMW_STATUS_SOCKET]")  # fmt: skip
    status.add_argument("--json", action="store_true", help="print JSON (one object; one a line with --watch)")
    status.add_argument("--watch", action="store_true", help="redraw every --interval seconds until Ctrl-C")
    status.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                        help="seconds between redraws with --watch (at least 0.2) [1]")  # fmt: skip
    status.add_argument("--count", type=int, default=0, metavar="N", help="with --watch: stop after N redraws")
    status.add_argument("task_id", nargs="?", type=int, default=None, metavar="TASK_ID",
                        help="show this one task: state, status, name, worker, timings, progress, error")  # fmt: skip
    return parser


def _version() -> str:
    try:
        return importlib.metadata.version("taskmw")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _command(
    sub: Any,
    name: str,
    func: Callable[[argparse.Namespace], int],
    summary: str,
    description: str,
    wait: str | None = None,
) -> argparse.ArgumentParser:
    """A command that acts on a running master: ``--pid-file``, and
    ``--timeout`` when it waits (``wait`` says for what)."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=summary, description=description)
    parser.add_argument("--pid-file", default=None, metavar="PATH",
                        help=f"pid file of the master [TASKMW_PID_FILE; ./{config.DEFAULT_PID_FILE}]")  # fmt: skip
    if wait is not None:
        parser.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS", help=f"{wait} [120]")
    parser.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``taskmw`` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "start" and not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s")
    try:
        return int(args.func(args))
    except (CLIError, ConnectionError) as exc:
        print(f"taskmw {args.command}: {exc}", file=sys.stderr)
        return 1
