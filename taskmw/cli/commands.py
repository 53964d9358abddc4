"""The commands: ``cmd_start``, ``cmd_stop``, ``cmd_reload``, ``cmd_status``
(each takes the parsed arguments and returns the exit code)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time

from taskmw import _control, _proc, config
from taskmw.cli import gunicorn_cfg
from taskmw.cli.app import IMPORT_TIMEOUT, IMPORT_TIMEOUT_ENV, inspect_app, read_line_until
from taskmw.cli.errors import CLIError
from taskmw.cli.master import Master, check_can_listen
from taskmw.cli.pidfile import check_not_running, running_master
from taskmw.cli.render import render_status, render_task

log = logging.getLogger(__name__)

READY_TIMEOUT = 60.0
"""Seconds ``start --daemonize`` waits for the daemon to listen (by default)."""
READY_TIMEOUT_ENV = "TASKMW_READY_TIMEOUT"


def _seconds(flag: float | None, env: str, default: float) -> float:
    """A timeout: the flag, else the environment variable ``env``, else ``default``.

    Raises:
        CLIError: the value is no number of seconds > 0 (named by its variable).
    """
    text = os.environ.get(env) if flag is None else str(flag)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1e9:
        raise CLIError(f"{env}={text!r}: expected a number of seconds > 0")
    return value


def cmd_start(args: argparse.Namespace) -> int:
    """``taskmw start``: check, inspect the app, then run the master (here,
    or as a daemon with ``--daemonize``)."""
    flags = {opt.name: getattr(args, opt.name) for opt in config.OPTIONS}
    try:
        settings = config.resolve(flags, os.environ)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    gunicorn = gunicorn_cfg.user_settings(settings.gunicorn_config, os.environ, args.gunicorn_args)
    gunicorn_cfg.apply(settings, gunicorn)
    pid_file = os.path.abspath(settings.pid_file)  # relative to where taskmw runs, before --chdir
    log_file = settings.log_file
    access_log = settings.access_logfile
    if access_log not in (None, "-"):
        access_log = os.path.abspath(access_log)  # relative to where taskmw runs, before --chdir
    if settings.daemonize and log_file == "-":
        log_file = os.path.splitext(pid_file)[0] + ".log"
    elif log_file != "-":
        log_file = os.path.abspath(log_file)  # relative to where taskmw runs, before --chdir
    try:
        os.chdir(settings.chdir)
    except OSError as exc:
        raise CLIError(f"--chdir {settings.chdir}: {exc.strerror}") from None
    sys.path.insert(0, os.getcwd())  # import the app from here, as gunicorn does
    check_not_running(pid_file)
    check_can_listen(settings.host, settings.port)  # before anything is built: one clear line, nothing left
    import_timeout = _seconds(args.import_timeout, IMPORT_TIMEOUT_ENV, IMPORT_TIMEOUT)
    ready_timeout = _seconds(args.ready_timeout, READY_TIMEOUT_ENV, READY_TIMEOUT)
    interface, app_settings = inspect_app(args.app, import_timeout)
    settings = config.resolve(flags, os.environ, app_settings)
    extra = gunicorn_cfg.apply(settings, gunicorn)
    settings.values.update(pid_file=pid_file, log_file=log_file, access_logfile=access_log)
    master = Master(args.app, settings, interface, import_timeout, extra)
    if settings.daemonize:
        return _daemonize_and_run(master, ready_timeout)
    master.run()
    return 0


def _daemonize_and_run(master: Master, timeout: float) -> int:
    """Run ``master`` as a daemon; the calling process waits until it listens
    (or fails, or ``timeout`` seconds pass) and returns its exit code."""
    from gunicorn import util

    read_fd, write_fd = os.pipe()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    pid = os.fork()
    if pid == 0:  # becomes the daemon (gunicorn's double fork, setsid, stdio on /dev/null)
        os.close(read_fd)
        util.daemonize(False)
        master.ready_fd = write_fd
        try:
            master.run()  # it and its HTTP workers leave by SystemExit: a normal exit, atexit included
        except CLIError as exc:
            log.error("taskmw start: %s", exc)  # stderr is /dev/null now: say it in the log
            raise
        return 0
    os.close(write_fd)
    os.waitpid(pid, 0)  # the first fork of the daemonizing exits at once
    with os.fdopen(read_fd, "rb") as ready:
        said = read_line_until(ready.fileno(), time.monotonic() + timeout)  # "ready", or b"": the daemon ended
    s = master.settings
    if said is None:
        raise CLIError(f"the server did not say it listens within {timeout:g}s (--ready-timeout SECONDS or "
                       f"{READY_TIMEOUT_ENV} sets it); it may still be starting, see {s.log_file}: `taskmw status "
                       f"--pid-file {s.pid_file}` shows it once it listens, `taskmw stop` stops it")  # fmt: skip
    if not said.startswith(b"ready"):
        raise CLIError(f"the server did not start; see {s.log_file}")
    print(f"taskmw: serving {master.spec} on http://{master.settings.host}:{master.settings.port} in the "
          f"background (pid file {master.settings.pid_file}, log {master.settings.log_file})")  # fmt: skip
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    """``taskmw stop``: SIGTERM to the master, then wait until it is gone."""
    pid_file = config.pid_file_from(args.pid_file)
    pid = running_master(pid_file)
    os.kill(pid, signal.SIGTERM)
    print(f"taskmw: stopping master {pid} (requests finish, then queued tasks run)...", flush=True)
    deadline = time.monotonic() + args.timeout
    while _proc.alive(pid):
        if time.monotonic() > deadline:
            raise CLIError(f"master {pid} still runs after {args.timeout}s (it keeps draining; `kill -9 {pid}` "
                           "would drop queued tasks)")  # fmt: skip
        time.sleep(0.1)
    print(f"taskmw: stopped (pid {pid})")
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    """``taskmw reload``: SIGHUP to the master (or new settings, then SIGHUP),
    then wait until every worker is new."""
    pid_file = config.pid_file_from(args.pid_file)
    socket = config.socket_path(pid_file)
    pid = running_master(pid_file)
    before = _control.request(socket)
    old_http = {w["pid"] for w in before["http_workers"]}
    old_tasks = {w["pid"] for w in before["pool"]["workers"]} if before["reload_task_workers"] else set()
    checked = (before.get("last_reload") or {"number": 0})["number"]
    _control.request(socket, "reload", num_workers=args.num_workers)  # (new settings,) then SIGHUP
    print(f"taskmw: reloading master {pid}: new HTTP workers"
          + (" and task workers" if old_tasks else " (task workers keep their code: the pool cannot reload)"),
          flush=True)  # fmt: skip
    if args.no_wait:
        return 0
    deadline = time.monotonic() + args.timeout
    while True:  # the master imports the new code in a child first
        now = _control.request(socket)
        last = now.get("last_reload")
        if last is not None and last["number"] > checked:
            break
        if time.monotonic() > deadline:
            raise CLIError(f"the master did not check the new code within {args.timeout}s")
        time.sleep(0.2)
    if last["error"] is not None:
        raise CLIError(f"the new code was not loaded, the old workers keep serving:\n{last['error']}")
    while True:
        now = _control.request(socket)
        http = {w["pid"] for w in now["http_workers"]}
        tasks = {w["pid"] for w in now["pool"]["workers"]}
        if len(http) >= now["num_workers"] and not http & old_http and not tasks & old_tasks:
            print(f"taskmw: reloaded: HTTP workers {sorted(http)}, task workers {sorted(tasks)}")
            return 0
        if time.monotonic() > deadline:
            raise CLIError(f"not every worker was replaced within {args.timeout}s (a long task or request may "
                           "still run in an old one; it goes on in the background)")  # fmt: skip
        time.sleep(0.2)


def cmd_status(args: argparse.Namespace) -> int:
    """``taskmw status [TASK_ID]``: print the master's (or a pool's) answer,
    or one task's record, once or with ``--watch``."""
    socket = args.socket or os.environ.get(_control.STATUS_SOCKET_ENV)
    if not socket:
        pid_file = config.pid_file_from(args.pid_file)
        socket = config.socket_path(pid_file)
        running_master(pid_file)
    task_id = getattr(args, "task_id", None)
    interval = max(args.interval, 0.2)
    shown = 0
    try:
        while True:
            if task_id is None:
                reply = _control.request(socket)
                reply.pop("ok", None)
                shown_now: dict[str, object] = reply
                text = "" if args.json else render_status(reply)
            else:
                shown_now, text = _one_task(socket, task_id, args.json)
            if args.json:
                print(json.dumps(shown_now, indent=None if args.watch else 2), flush=True)
            else:
                if args.watch:
                    text = "\x1b[H\x1b[2J" + text  # cursor home, clear screen: redraw in place
                sys.stdout.write(text + "\n")
                sys.stdout.flush()
            shown += 1
            if not args.watch or (args.count and shown >= args.count):
                return 0
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0
    except ConnectionError as exc:
        if shown:
            print(f"taskmw: the master is gone ({exc})", file=sys.stderr)
            return 1
        raise


def _one_task(socket: str, task_id: int, as_json: bool) -> tuple[dict[str, object], str]:
    """Task ``task_id``'s record from the pool on ``socket`` and its text.

    Raises:
        CLIError: the pool has no record of it (never issued, or evicted).
    """
    reply = _control.request(socket, "task", task_id=task_id)
    task = reply.get("task")
    if not isinstance(task, dict):
        raise CLIError(reply.get("unknown") or f"unknown task {task_id}")
    return task, "" if as_json else render_task(task, reply.get("now") or time.time())
