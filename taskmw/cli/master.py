"""The gunicorn master of ``taskmw start``: :class:`Master` holds the
settings, the pool and the control socket, and runs gunicorn's arbiter."""

from __future__ import annotations

import contextlib
import errno
import importlib
import logging
import os
import signal
import socket
import time
import warnings
from typing import Any, Literal

from taskmw import _control, _proc, _title, config, middleware, worker
from taskmw._address import join_address, parse_address
from taskmw.cli.app import IMPORT_TIMEOUT, import_in_task_worker, inspect_app, load_app
from taskmw.cli.errors import CLIError
from taskmw.cli.pidfile import unlink_own_pid_file
from taskmw.middleware import TaskMiddleware
from taskmw.server import TaskServer

log = logging.getLogger(__name__)


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


def check_can_listen(host: str, port: int) -> None:
    """Bind ``host:port`` once, as gunicorn will (``SO_REUSEADDR``), and let go.

    Raises:
        CLIError: it cannot be bound (in use, no such address, a privileged
            port); the message names the address.
    """
    address = join_address(host, port)
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        hint = (
            "; another process listens there: stop it or give another --port" if exc.errno == errno.EADDRINUSE else ""
        )
        raise CLIError(f"cannot listen on {address}: {exc.strerror or exc}{hint}") from None


def start_dashboard(server: TaskServer, address: str, allow_cancel: bool) -> Any:
    """``--dashboard``: the dashboard of ``server`` on ``address``, bound now
    (it serves once :meth:`~taskmw.web.serve.DashboardServer.start` is called).

    Raises:
        CLIError: the address cannot be bound.
    """
    from taskmw.web.serve import DashboardServer

    host, port = parse_address(address)
    try:
        return DashboardServer(server, host, port, allow_cancel=allow_cancel)
    except OSError as exc:
        raise CLIError(f"cannot serve the dashboard on {address}: {exc.strerror or exc}") from None


def _gunicorn_base() -> type:
    try:
        from gunicorn.app.base import BaseApplication
    except ImportError:
        raise CLIError("taskmw start needs gunicorn: pip install gunicorn") from None
    return BaseApplication  # type: ignore[no-any-return]


class Master:
    """What the gunicorn master holds: the settings, the pool, the control
    socket. :meth:`run` builds the pool and runs gunicorn's arbiter."""

    def __init__(
        self,
        spec: str,
        settings: config.Resolved,
        interface: Literal["wsgi", "asgi"],
        import_timeout: float = IMPORT_TIMEOUT,
        gunicorn: dict[str, Any] | None = None,
    ) -> None:
        self.spec = spec
        self.gunicorn = gunicorn or {}
        """The user's other gunicorn settings (a gunicorn.conf.py, GUNICORN_CMD_ARGS, --gunicorn-arg)."""
        self.import_timeout = import_timeout
        self.last_reload: dict[str, Any] | None = None  # {"number", "at", "error"}: the last reload's check
        self.pending_workers: int | None = None  # `reload -w N`: applied if the new code imports
        self.settings = settings
        self.interface = interface
        self.server: TaskServer | None = None
        self.control: _control.ControlServer | None = None
        self.dashboard: Any = None  # a taskmw.web.serve.DashboardServer with --dashboard
        self.arbiter: Any = None
        self.started = time.time()
        self.ready_fd: int | None = None  # `start --daemonize`: written once listening
        self.listening = False
        self.worker_class = asgi_worker_class() if interface == "asgi" else "sync"

    # gunicorn's settings and hooks

    def gunicorn_settings(self) -> dict[str, Any]:
        """gunicorn's settings (read again on every reload), hooks included."""
        s = self.settings
        out: dict[str, Any] = {
            "bind": [join_address(s.host, s.port)],
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
        if s.access_logfile is not None:
            out["accesslog"] = s.access_logfile
        out.update(self.gunicorn)  # none of taskmw's own: refused by gunicorn_cfg.user_settings
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
        _title.set_label(self.gunicorn.get("proc_name") or self.spec)  # before the pool's processes are forked
        _title.set_title("master")
        worker.before_run.append(import_in_task_worker(self.spec))
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
        if self.settings.dashboard is not None:
            self.dashboard = start_dashboard(self.server, self.settings.dashboard, self.settings.dashboard_cancel)

    def when_ready(self, arbiter: Any) -> None:
        """Serve the control socket and tell ``start --daemonize`` the server
        listens."""
        assert self.control is not None
        self.listening = True
        self.control.start()
        if self.dashboard is not None:
            self.dashboard.start()
        log.info("taskmw: serving %s (%s) on http://%s:%s", self.spec, self.interface, self.settings.host,
                 self.settings.port)  # fmt: skip
        if self.ready_fd is not None:
            with contextlib.suppress(OSError):
                os.write(self.ready_fd, b"ready\n")
                os.close(self.ready_fd)
            self.ready_fd = None

    def post_fork(self, arbiter: Any, http_worker: Any) -> None:
        """In a new HTTP worker: the control socket and the ready pipe are the master's."""
        control, self.control = self.control, None
        if control is not None:
            control.forget()
        if self.ready_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.ready_fd)

    def on_reload(self, arbiter: Any) -> None:
        """On SIGHUP: replace the task workers too."""
        server = self.server
        reload = getattr(server, "reload", None)
        if reload is None:
            log.warning("taskmw: this pool cannot replace its task workers (no TaskServer.reload): "
                        "HTTP workers get the new code, task workers keep the old")  # fmt: skip
            return
        log.info("taskmw: replacing the task workers (queued tasks stay queued)")
        reload()

    def on_exit(self, arbiter: Any) -> None:
        """Close the control socket, then drain and stop the pool."""
        control, self.control = self.control, None
        if control is not None:
            control.close()
        dashboard, self.dashboard = self.dashboard, None
        if dashboard is not None:
            dashboard.close()
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
            http = [{"pid": pid, "age": age, "rss_bytes": _proc.rss_bytes(pid)} for age, pid in workers]
        answer.update(
            app=self.spec,
            interface=self.interface,
            bind=f"http://{self.settings.host}:{self.settings.port}",
            num_workers=self.settings.num_workers,
            http_workers=http,
            last_reload=self.last_reload,
            dashboard=self.dashboard.url if self.dashboard is not None else None,
        )
        return answer

    def reload(self, num_workers: int | None = None) -> dict[str, Any]:
        """The ``reload`` command: note a new HTTP worker count (if given),
        then reload as on SIGHUP (which checks the new code first: see
        :meth:`check_new_code`; ``last_reload`` in the status tells how it went)."""
        if num_workers is not None:
            if not isinstance(num_workers, int) or not 1 <= num_workers <= 1024:
                raise ValueError(f"num_workers must be an int in 1..1024, got {num_workers!r}")
            self.pending_workers = num_workers
        os.kill(os.getpid(), signal.SIGHUP)
        return {"num_workers": num_workers or self.settings.num_workers}

    def check_new_code(self) -> bool:
        """On SIGHUP, in the arbiter, before anything is replaced: import the
        app in a short-lived child, as at start. True if it imports (as the
        same kind of app); else the old workers keep serving, and the error
        is logged and kept in ``last_reload``."""
        number = self.last_reload["number"] + 1 if self.last_reload else 1
        error = None
        try:
            interface, _ = inspect_app(self.spec, self.import_timeout)
            if interface != self.interface:
                error = f"{self.spec} is an {interface} app now, this server runs {self.interface}: restart for that"
        except CLIError as exc:
            error = str(exc)
        self.last_reload = {"number": number, "at": time.time(), "error": error}
        if error is not None:
            log.error("taskmw: reload refused, the old workers keep serving: %s", error)
            return False
        if self.pending_workers is not None:
            self.settings.values["num_workers"], self.pending_workers = self.pending_workers, None
        return True

    # running

    def run(self) -> None:
        """Run gunicorn's arbiter until it stops; the pool is built as it
        starts (:meth:`on_starting`)."""
        base = _gunicorn_base()
        master = self

        from gunicorn.arbiter import Arbiter

        class CheckingArbiter(Arbiter):  # type: ignore[misc]
            def handle_hup(self) -> None:
                if master.check_new_code():  # a reload to code that does not import would stop the server
                    super().handle_hup()

        class Application(base):  # type: ignore[misc,valid-type]
            def run(self) -> None:
                try:
                    CheckingArbiter(self).run()
                except RuntimeError as exc:  # as gunicorn's BaseApplication.run does
                    raise CLIError(str(exc)) from None

            def load_config(self) -> None:
                for key, value in master.gunicorn_settings().items():
                    self.cfg.set(key, value)

            def load(self) -> Any:
                app = load_app(master.spec)  # in an HTTP worker, after the fork: fresh code
                if not isinstance(app, TaskMiddleware):
                    app = TaskMiddleware(app, interface=master.interface)  # joins the master's pool
                return app

        from gunicorn import util

        if hasattr(util, "_setproctitle"):
            util._setproctitle = _title.gunicorn_title  # noqa: SLF001 - gunicorn's titles, taskmw's words
        pid = os.getpid()
        try:
            Application().run()
        except SystemExit as exc:
            if os.getpid() == pid and not self.listening and exc.code:  # gunicorn gave up while starting
                raise CLIError(f"gunicorn stopped before it listened on {self.settings.host}:{self.settings.port} "
                               f"(exit status {exc.code}); its log above says why") from None  # fmt: skip
            raise
        finally:
            if os.getpid() == pid:  # not in an HTTP worker leaving gunicorn's stack (SystemExit)
                self.on_exit(None)
                unlink_own_pid_file(self.settings.pid_file)
