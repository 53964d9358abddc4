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
"""

from __future__ import annotations

import argparse
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
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

from taskmw import _control, config, middleware, worker
from taskmw.middleware import ASGITaskMiddleware, TaskMiddleware, _is_asgi
from taskmw.interfaces import Server
from taskmw.server import TaskServer

log = logging.getLogger(__name__)

INSPECT_TIMEOUT = 60.0  # seconds the app import in the inspecting child may take
READY_TIMEOUT = 60.0  # seconds `start --daemonize` waits for the daemon to listen
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


class CLIError(Exception):
    """A problem to report to the user in one line (exit code 1)."""


# -- the app ---------------------------------------------------------------------------


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
            kind = "asgi" if isinstance(app, ASGITaskMiddleware) or (
                not isinstance(app, TaskMiddleware) and _is_asgi(app)) else "wsgi"  # fmt: skip
            plain = {k: v for k, v in settings.items() if _plain(v)}
            answer = {"interface": kind, "settings": plain}
        except CLIError as exc:
            answer, code = {"error": str(exc)}, 1
        except BaseException:  # noqa: B036 - whatever the import raised, report it
            answer, code = {"error": f"importing {spec} failed:\n{traceback.format_exc()}"}, 1
        with os.fdopen(write_fd, "w") as out:
            out.write(json.dumps(answer))
        with contextlib.suppress(BaseException):
            atexit._run_exitfuncs()  # what the app registered (temporary files, …), as at a normal exit
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


def _import_in_task_worker(spec: str) -> Callable[[Server, int], None]:
    """The ``worker.before_run`` hook: import the app in a new task worker,
    joining the inherited pool, so the app's plugins run there too."""

    def setup(server: Server, worker_id: int) -> None:
        assert isinstance(server, TaskServer)
        middleware.adopt_pool(server)
        try:
            load_app(spec)
        except BaseException:  # noqa: B036 - a broken import must not kill (and re-fork) the worker in a loop
            log.exception("task worker %d: importing %s failed; the app's plugins do not run in it", worker_id, spec)

    return setup


def asgi_worker_class() -> str:
    """uvicorn's gunicorn worker: from the ``uvicorn-worker`` package if it is
    installed, else the (deprecated) ``uvicorn.workers`` module."""
    try:
        importlib.import_module("uvicorn_worker")
        return "uvicorn_worker.UvicornWorker"
    except ImportError:
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            importlib.import_module("uvicorn.workers")
    except ImportError:
        raise CLIError("an ASGI app needs uvicorn: pip install 'taskmw[asgi]' (uvicorn and uvicorn-worker)") from None
    return "uvicorn.workers.UvicornWorker"


# -- the gunicorn application (the master) ------------------------------------------------


def _gunicorn_base() -> type:
    try:
        from gunicorn.app.base import BaseApplication
    except ImportError:
        raise CLIError("taskmw start needs gunicorn: pip install gunicorn") from None
    return BaseApplication  # type: ignore[no-any-return]


class Master:
    """What the gunicorn master holds: the settings, the pool, the control
    socket. :meth:`run` builds the pool and runs gunicorn's arbiter."""

    def __init__(self, spec: str, settings: config.Resolved, interface: Literal["wsgi", "asgi"]) -> None:
        self.spec = spec
        self.settings = settings
        self.interface = interface
        self.server: TaskServer | None = None
        self.control: _control.ControlServer | None = None
        self.arbiter: Any = None
        self.started = time.time()
        self.ready_fd: int | None = None  # `start --daemonize`: written once listening
        self.worker_class = asgi_worker_class() if interface == "asgi" else "sync"

    # gunicorn's settings and hooks

    def gunicorn_settings(self) -> dict[str, Any]:
        """gunicorn's settings (read again on every reload), hooks included."""
        s = self.settings
        out: dict[str, Any] = {
            "bind": [f"{s.host}:{s.port}"] if ":" not in s.host else [f"[{s.host}]:{s.port}"],
            "workers": s.num_workers,
            "worker_class": self.worker_class,
            "pidfile": s.pid_file,
            "errorlog": s.log_file,
            "loglevel": s.log_level,
            "graceful_timeout": s.graceful_timeout,
            "timeout": s.http_timeout,
            "preload_app": False,
            "proc_name": f"taskmw {self.spec}",
            "on_starting": self.on_starting,
            "when_ready": self.when_ready,
            "post_fork": self.post_fork,
            "on_reload": self.on_reload,
            "on_exit": self.on_exit,
        }
        from gunicorn.config import KNOWN_SETTINGS

        if any(k.name == "control_socket_disable" for k in KNOWN_SETTINGS):
            out["control_socket_disable"] = True  # gunicorn >= 24: taskmw has its own
        return out

    def on_starting(self, arbiter: Any) -> None:
        """Build the pool (in the master, before any HTTP worker exists, with
        gunicorn's log handlers, which the pool's processes inherit)."""
        self.arbiter = arbiter
        ours = logging.getLogger("taskmw")
        ours.handlers = list(arbiter.log.error_log.handlers)
        ours.setLevel(arbiter.log.error_log.level)
        ours.propagate = False
        pool = self.settings.pool_settings()
        worker.before_run.append(_import_in_task_worker(self.spec))
        try:
            self.server = TaskServer(**pool)
            middleware.adopt_pool(self.server)
            commands = {"status": self.status, "reload": self.reload}
            server = self.server
            self.control = _control.ControlServer(
                config.socket_path(self.settings.pid_file), commands, lambda: _control.finished_count(server)
            )
        except (TypeError, ValueError, OSError) as exc:  # a bad setting (named), an unusable socket path
            raise CLIError(f"cannot start the task pool: {exc}") from None

    def when_ready(self, arbiter: Any) -> None:
        assert self.control is not None
        self.control.start()
        log.info("taskmw: serving %s (%s) on http://%s:%s", self.spec, self.interface, self.settings.host,
                 self.settings.port)  # fmt: skip
        if self.ready_fd is not None:
            with contextlib.suppress(OSError):
                os.write(self.ready_fd, b"ready\n")
                os.close(self.ready_fd)
            self.ready_fd = None

    def post_fork(self, arbiter: Any, http_worker: Any) -> None:
        # An HTTP worker: the control socket and the ready pipe are the master's.
        control, self.control = self.control, None
        if control is not None:
            control.forget()
        if self.ready_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.ready_fd)

    def on_reload(self, arbiter: Any) -> None:
        server = self.server
        reload = getattr(server, "reload", None)
        if reload is None:
            log.warning("taskmw: this pool cannot replace its task workers (no TaskServer.reload): "
                        "HTTP workers get the new code, task workers keep the old")  # fmt: skip
            return
        log.info("taskmw: replacing the task workers (queued tasks stay queued)")
        reload()

    def on_exit(self, arbiter: Any) -> None:
        control, self.control = self.control, None
        if control is not None:
            control.close()
        server, self.server = self.server, None
        if server is not None:
            log.info("taskmw: HTTP workers stopped; draining the task pool")
            server.close()

    # the control socket's answer

    def status(self) -> dict[str, Any]:
        """The ``status`` answer: HTTP workers from the arbiter, the pool from
        its shared counters."""
        assert self.server is not None
        answer = _control.pool_status(self.server, self.started, self.control.rate() if self.control else None)
        http = []
        if self.arbiter is not None:
            for _ in range(5):  # the arbiter's loop changes WORKERS meanwhile
                try:
                    workers = sorted((w.age, pid) for pid, w in self.arbiter.WORKERS.items())
                    break
                except RuntimeError:
                    continue
            else:
                workers = []
            http = [{"pid": pid, "age": age, "rss_bytes": rss_bytes(pid)} for age, pid in workers]
        answer.update(
            app=self.spec,
            interface=self.interface,
            bind=f"http://{self.settings.host}:{self.settings.port}",
            num_workers=self.settings.num_workers,
            http_workers=http,
        )
        return answer

    def reload(self, num_workers: int | None = None) -> dict[str, Any]:
        """The ``reload`` command: take a new HTTP worker count (if given),
        then reload as on SIGHUP (gunicorn re-reads the settings)."""
        if num_workers is not None:
            if not isinstance(num_workers, int) or not 1 <= num_workers <= 1024:
                raise ValueError(f"num_workers must be an int in 1..1024, got {num_workers!r}")
            self.settings.values["num_workers"] = num_workers
        os.kill(os.getpid(), signal.SIGHUP)
        return {"num_workers": self.settings.num_workers}

    # running

    def run(self) -> None:
        """Run gunicorn's arbiter until it stops; the pool is built as it
        starts (:meth:`on_starting`)."""
        base = _gunicorn_base()
        master = self

        class Application(base):  # type: ignore[misc,valid-type]
            def load_config(self) -> None:
                for key, value in master.gunicorn_settings().items():
                    self.cfg.set(key, value)

            def load(self) -> Any:
                app = load_app(master.spec)  # in an HTTP worker, after the fork: fresh code
                if not isinstance(app, TaskMiddleware):
                    app = TaskMiddleware(app, interface=master.interface)  # joins the master's pool
                return app

        pid = os.getpid()
        try:
            Application().run()
        finally:
            if os.getpid() == pid:  # not in an HTTP worker leaving gunicorn's stack (SystemExit)
                self.on_exit(None)
                _unlink_own_pid_file(self.settings.pid_file)


def _unlink_own_pid_file(pid_file: str) -> None:
    """Remove ``pid_file`` if it still names this process (gunicorn leaves it
    when the master fails while starting)."""
    with contextlib.suppress(OSError, ValueError):
        with open(pid_file) as f:
            if int(f.read().strip() or 0) == os.getpid():
                os.unlink(pid_file)


def rss_bytes(pid: int) -> int | None:
    """Resident memory of ``pid`` in bytes, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return None


# -- commands ----------------------------------------------------------------------------------


def cmd_start(args: argparse.Namespace) -> int:
    flags = {opt.name: getattr(args, opt.name) for opt in config.OPTIONS}
    try:
        settings = config.resolve(flags, os.environ)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    pid_file = os.path.abspath(settings.pid_file)  # relative to where taskmw runs, before --chdir
    log_file = settings.log_file
    if settings.daemonize and log_file == "-":
        log_file = os.path.splitext(pid_file)[0] + ".log"
    try:
        os.chdir(settings.chdir)
    except OSError as exc:
        raise CLIError(f"--chdir {settings.chdir}: {exc.strerror}") from None
    sys.path.insert(0, os.getcwd())  # import the app from here, as gunicorn does
    _check_not_running(pid_file)
    interface, app_settings = inspect_app(args.app)
    settings = config.resolve(flags, os.environ, app_settings)
    settings.values.update(pid_file=pid_file, log_file=log_file if log_file == "-" else os.path.abspath(log_file))
    master = Master(args.app, settings, interface)
    if settings.daemonize:
        return _daemonize_and_run(master)
    master.run()
    return 0


def _check_not_running(pid_file: str) -> None:
    """Refuse to start over a running master; remove a stale pid file (its
    pid may belong to another process by now, which gunicorn would refuse)."""
    pid = _read_pid(pid_file)
    if pid is None:
        return
    if _is_master(pid, pid_file):
        raise CLIError(f"taskmw already runs with pid {pid} (pid file {pid_file}): `taskmw stop` first")
    log.warning("removing the stale pid file %s (pid %d is no taskmw master)", pid_file, pid)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(pid_file)


def _daemonize_and_run(master: Master) -> int:
    """Run ``master`` as a daemon; the calling process waits until it listens
    (or fails) and returns its exit code."""
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
        said = ready.readline()  # "ready", or nothing: the daemon ended first
    if not said.startswith(b"ready"):
        raise CLIError(f"the server did not start; see {master.settings.log_file}")
    print(f"taskmw: serving {master.spec} on http://{master.settings.host}:{master.settings.port} in the "
          f"background (pid file {master.settings.pid_file}, log {master.settings.log_file})")  # fmt: skip
    return 0


def _read_pid(pid_file: str) -> int | None:
    try:
        with open(pid_file) as f:
            return int(f.read().strip() or 0) or None
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CLIError(f"cannot read pid file {pid_file}: {exc}") from None


def _is_master(pid: int, pid_file: str) -> bool:
    """True if the control socket next to ``pid_file`` answers for ``pid``."""
    try:
        return _control.request(config.socket_path(pid_file), timeout=5.0).get("master_pid") == pid
    except (ConnectionError, OSError, ValueError):
        return False


def _running_master(pid_file: str) -> int:
    """The pid of the running master of ``pid_file``.

    Raises:
        CLIError: no pid file, or its process is not a live taskmw master.
    """
    pid = _read_pid(pid_file)
    if pid is None:
        raise CLIError(f"no pid file at {pid_file}: is taskmw running (started from this directory)? "
                       "Give --pid-file or TASKMW_PID_FILE")  # fmt: skip
    if not _is_master(pid, pid_file):
        raise CLIError(f"pid file {pid_file} names pid {pid}, which is not a running taskmw master "
                       f"(nothing answers on {config.socket_path(pid_file)}); remove the stale pid file")  # fmt: skip
    return pid


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] in "ZX"
    except OSError:
        return True


def cmd_stop(args: argparse.Namespace) -> int:
    pid_file = config.pid_file_from(args.pid_file)
    pid = _running_master(pid_file)
    os.kill(pid, signal.SIGTERM)
    print(f"taskmw: stopping master {pid} (requests finish, then queued tasks run)...", flush=True)
    deadline = time.monotonic() + args.timeout
    while not _gone(pid):
        if time.monotonic() > deadline:
            raise CLIError(f"master {pid} still runs after {args.timeout}s (it keeps draining; `kill -9 {pid}` "
                           "would drop queued tasks)")  # fmt: skip
        time.sleep(0.1)
    print(f"taskmw: stopped (pid {pid})")
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    pid_file = config.pid_file_from(args.pid_file)
    socket = config.socket_path(pid_file)
    pid = _running_master(pid_file)
    before = _control.request(socket)
    old_http = {w["pid"] for w in before["http_workers"]}
    old_tasks = {w["pid"] for w in before["pool"]["workers"]} if before["reload_task_workers"] else set()
    if args.num_workers is not None:
        _control.request(socket, "reload", num_workers=args.num_workers)  # new settings, then SIGHUP
    else:
        os.kill(pid, signal.SIGHUP)
    print(f"taskmw: reloading master {pid}: new HTTP workers"
          + (" and task workers" if old_tasks else " (task workers keep their code: the pool cannot reload)"),
          flush=True)  # fmt: skip
    if args.no_wait:
        return 0
    deadline = time.monotonic() + args.timeout
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
    socket = args.socket or os.environ.get(_control.STATUS_SOCKET_ENV)
    if not socket:
        pid_file = config.pid_file_from(args.pid_file)
        socket = config.socket_path(pid_file)
        _running_master(pid_file)
    interval = max(args.interval, 0.2)
    shown = 0
    try:
        while True:
            reply = _control.request(socket)
            reply.pop("ok", None)
            if args.json:
                print(json.dumps(reply, indent=None if args.watch else 2), flush=True)
            else:
                text = render_status(reply)
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


# -- rendering status -------------------------------------------------------------------------


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / (1 << 20):.1f}M"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def render_status(s: dict[str, Any]) -> str:
    """The text of ``taskmw status``."""
    pool = s["pool"]
    now = s["now"]
    rate = s.get("tasks_per_second")
    up = _duration(now - s["started"])
    if s["app"] is None:  # a pool built outside `taskmw start`: only the pool is known
        lines = [f"taskmw pool  built by pid {s['master_pid']}  up {up}"]
    else:
        lines = [
            f"taskmw  {s['app']} ({s['interface']})  {s['bind']}  master pid {s['master_pid']}  up {up}",
            "",
            f"HTTP workers: {len(s['http_workers'])} of {s['num_workers']}",
            f"  {'PID':>8}  {'MEM':>8}",
        ]
        lines += [f"  {w['pid']:>8}  {_mib(w['rss_bytes']):>8}" for w in s["http_workers"]]
    lines += [
        "",
        f"Task workers: {len(pool['workers'])} of {pool['task_workers']}   supervisor pid {pool['supervisor_pid']}   "
        f"queue depth {pool['queue_depth']}   tasks/s {'-' if rate is None else f'{rate:.1f}'}",
        f"  {'ID':>3}  {'PID':>8}  {'STATE':<8}  {'TASK':>8}  {'FOR':>6}  {'DONE':>7}  {'MEM':>8}  {'RESTARTS':>8}",
    ]
    for w in pool["workers"]:
        running = "-" if w.get("task_started") is None else f"{now - w['task_started']:.1f}s"
        lines.append(
            f"  {_opt(w.get('worker_id')):>3}  {w['pid']:>8}  {w['state']:<8}  {_opt(w.get('task_id')):>8}  "
            f"{running:>6}  {_opt(w.get('tasks_done')):>7}  {_mib(w.get('rss_bytes')):>8}  "
            f"{_opt(w.get('restarts')):>8}"
        )
    totals = pool["totals"]
    lines.append("")
    lines.append("Totals: " + "  ".join(f"{k} {v}" for k, v in totals.items()) + f"  (all {sum(totals.values())})")
    return "\n".join(lines)


def _opt(value: Any) -> str:
    return "-" if value is None else str(value)


# -- the parser --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskmw",
        description="Serve a WSGI or ASGI app with a shared pool of task workers, and manage it.",
        epilog="Every start option also reads an environment variable (TASKMW_<NAME>); see docs/configuration.md.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    start = sub.add_parser(
        "start",
        help="serve MODULE:APP with HTTP workers and a shared task pool",
        description="Serve MODULE:APP (WSGI on gunicorn, ASGI on uvicorn workers) with one task pool shared by every "
        "HTTP worker. APP may be a plain app (taskmw wraps it) or a TaskMiddleware (its settings are used; flags and "
        "environment variables win). Runs in the foreground unless --daemonize.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    start.add_argument("app", metavar="MODULE:APP", help="the app to serve, e.g. examples.demo:app")
    for opt in config.OPTIONS:
        kwargs: dict[str, Any] = {"dest": opt.name, "default": None, "help": f"{opt.help} [{opt.env}; {opt.default}]"}
        if opt.is_flag:
            kwargs["action"] = "store_const"
            kwargs["const"] = True
        else:
            kwargs["type"] = opt.parse
            kwargs["metavar"] = opt.metavar or opt.name.upper()
        start.add_argument(*opt.flags, **kwargs)
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
    return parser


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
