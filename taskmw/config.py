"""Settings of ``taskmw start``: one table, read from flags, environment
variables and the app module's ``TaskMiddleware(...)``.

Every option has a command-line flag and an environment variable
(``TASKMW_`` + its name in capitals). The first of these that gives a value
wins: the flag, the environment variable, the app module's own
``TaskMiddleware(app, ...)`` arguments (pool options only), the default.
``docs/configuration.md`` lists the same table.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

from taskmw._address import join_address, parse_address
from taskmw.schedule import MISSED_RUNS, Periodic
from taskmw.settings import Settings, parse_size

ENV_PREFIX = "TASKMW_"
_DEFAULT = Settings()
"""The pool options' defaults are the pool's own (:class:`taskmw.settings.Settings`)."""
DEFAULT_PID_FILE = "taskmw.pid"
"""The pid file, relative to the directory ``taskmw`` runs in."""


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def _seconds_or_none(text: str) -> float | None:
    return None if text.strip().lower() in ("", "none", "off") else float(text)


def _int_or_none(text: str) -> int | None:
    return None if text.strip().lower() in ("", "none", "off") else int(text)


def _address(text: str) -> str:
    """``HOST:PORT`` (a bare ``PORT``: on 127.0.0.1), checked."""
    return join_address(*parse_address(text))


def _size(text: str) -> int:
    """Bytes, with an optional K, M, G or T suffix (powers of 1024: ``64M``, ``1.5GiB``)."""
    return parse_size("a size", text)


def _size_or_none(text: str) -> int | None:
    return None if text.strip().lower() in ("", "none", "off") else _size(text)


def _missed_runs(text: str) -> str:
    value = text.strip().lower()
    if value not in MISSED_RUNS:
        raise ValueError(f"expected one of {', '.join(MISSED_RUNS)}, got {text!r}")
    return value


def _size_text(value: int) -> str:
    for suffix, factor in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if value >= factor and value % factor == 0:
            return f"{value // factor}{suffix}"
    return str(value)


@dataclasses.dataclass(frozen=True)
class Option:
    """One setting of ``taskmw start``."""

    name: str
    flags: tuple[str, ...]
    parse: Callable[[str], Any]
    default: Any
    help: str
    pool: bool = False
    """A :class:`~taskmw.TaskServer` setting (given to the pool built by the
    master); otherwise a setting of the HTTP side or of the CLI."""
    metavar: str | None = None
    shown: str | None = None
    """The default as ``--help`` shows it, when ``str(default)`` would not say it."""

    @property
    def env(self) -> str:
        """The environment variable of this option."""
        return ENV_PREFIX + self.name.upper()

    @property
    def default_text(self) -> str:
        """The default, as ``--help`` and docs/configuration.md say it."""
        if self.shown is not None:
            return self.shown
        if self.parse in (_size, _size_or_none) and self.default is not None:
            return _size_text(self.default)
        if self.default is None:
            return "none"
        if self.default is False:
            return "off"
        return str(self.default)

    @property
    def is_flag(self) -> bool:
        """True for an on/off switch (no value on the command line)."""
        return self.parse is _bool


OPTIONS: tuple[Option, ...] = (
    Option("num_workers", ("-w", "--num-workers"), int, 2, "HTTP worker processes", metavar="N"),
    Option("num_task_workers", ("-t", "--num-task-workers"), int, _DEFAULT.task_workers,
           "task worker processes (the pool's task_workers)",
           pool=True, metavar="N"),
    Option("host", ("--host",), str, "127.0.0.1", "address to listen on"),
    Option("port", ("--port",), int, 8000, "TCP port to listen on"),
    Option("pid_file", ("--pid-file",), str, DEFAULT_PID_FILE,
           "pid file of the master; its control socket is this path + '.sock'", metavar="PATH"),
    Option("daemonize", ("--daemonize",), _bool, False, "detach from the terminal and run in the background"),
    Option("chdir", ("--chdir",), str, ".", "directory to run in (and import the app from)", metavar="DIR"),
    Option("log_file", ("--log-file",), str, "-", "where the server logs go ('-': stderr)", metavar="PATH",
           shown="- (stderr); with --daemonize: the pid file's name with .log"),
    Option("log_level", ("--log-level",), str, "info", "debug, info, warning, error or critical"),
    Option("access_logfile", ("--access-logfile",), str, None,
           "where gunicorn's access log goes ('-': stderr); none by default", metavar="PATH"),
    Option("gunicorn_config", ("--config",), str, None,
           "a gunicorn settings file (worker_connections = 100, ...); --gunicorn-arg and GUNICORN_CMD_ARGS win over it",
           metavar="PATH", shown="./gunicorn.conf.py if there"),
    Option("graceful_timeout", ("--graceful-timeout",), int, 30,
           "seconds HTTP workers get to finish their requests on stop and reload", metavar="SECONDS"),
    Option("http_timeout", ("--http-timeout",), int, 30,
           "an HTTP worker silent for this many seconds is killed and replaced (gunicorn's --timeout)",
           metavar="SECONDS"),
    Option("queue_bytes", ("--queue-bytes",), _size, _DEFAULT.queue_bytes, "size of the task queue (K, M, G suffixes)",
           pool=True, metavar="SIZE"),
    Option("queue_timeout", ("--queue-timeout",), float, _DEFAULT.queue_timeout,
           "seconds task() waits for room in a full queue before raising QueueFull", pool=True, metavar="SECONDS"),
    Option("task_concurrency", ("--task-concurrency",), int, _DEFAULT.task_concurrency,
           "async def tasks one task worker runs at once",
           pool=True, metavar="N"),
    Option("shutdown_timeout", ("--shutdown-timeout",), float, _DEFAULT.shutdown_timeout,
           "seconds queued tasks may run on stop before the rest finish 'cancelled'", pool=True, metavar="SECONDS"),
    Option("max_dispatchers", ("--max-dispatchers",), int, _DEFAULT.max_dispatchers,
           "processes that may queue tasks at once (each claims a completion channel)", pool=True, metavar="N"),
    Option("channel_bytes", ("--channel-bytes",), _size, _DEFAULT.channel_bytes,
           "size of each process's completion channel", pool=True, metavar="SIZE"),
    Option("task_records", ("--task-records",), int, _DEFAULT.task_records,
           "tasks the pool's record keeps (the last N ids: status(), result())", pool=True, metavar="N"),
    Option("result_bytes", ("--result-bytes",), _size, _DEFAULT.result_bytes,
           "memory for kept results, the whole pool (oldest evicted first)", pool=True, metavar="SIZE"),
    Option("result_ttl", ("--result-ttl",), float, _DEFAULT.result_ttl,
           "seconds a finished task's record and result are kept", pool=True, metavar="SECONDS"),
    Option("finish_delay", ("--finish-delay",), float, _DEFAULT.finish_delay,
           "seconds the finish of a task nobody waits for may wait, to deliver finishes in batches (0: at once)",
           pool=True, metavar="SECONDS"),
    Option("start_delay", ("--start-delay",), float, _DEFAULT.start_delay,
           "seconds a task nobody waits for may wait for a lingering worker, so busy workers are not woken per task "
           "(0: at once)", pool=True, metavar="SECONDS"),
    Option("wait_spin", ("--wait-spin",), float, _DEFAULT.wait_spin,
           "seconds a thread blocked in taskwait polls for its finish before it sleeps (0: sleeps at once)",
           pool=True, metavar="SECONDS"),
    Option("task_timeout", ("--task-timeout",), _seconds_or_none, _DEFAULT.task_timeout,
           "seconds a task may run before it is stopped (status 'timeout'); 'none': no limit", pool=True,
           metavar="SECONDS"),
    Option("retries", ("--retries",), int, _DEFAULT.retries,
           "times a task that finished error, lost or timeout is run again (idempotent work only)", pool=True,
           metavar="N"),
    Option("retry_backoff", ("--retry-backoff",), float, _DEFAULT.retry_backoff,
           "seconds before the first retry (doubling)",
           pool=True, metavar="SECONDS"),
    Option("max_tasks_per_worker", ("--max-tasks-per-worker",), _int_or_none, _DEFAULT.max_tasks_per_worker,
           "a task worker is replaced after this many tasks; 'none': never", pool=True, metavar="N"),
    Option("max_worker_memory", ("--max-worker-memory",), _size_or_none, _DEFAULT.max_worker_memory,
           "after a task, a task worker whose resident memory is over this (500M, 1.5G) is replaced; 'none': never",
           pool=True, metavar="SIZE"),
    Option("missed_runs", ("--missed-runs",), _missed_runs, _DEFAULT.missed_runs,
           "periodic runs due while no supervisor ran (it was replaced; with --schedule-file, the pool was stopped): "
           "'once' (run once at once) or 'skip'",
           pool=True, metavar="once|skip"),
    Option("schedule_file", ("--schedule-file",), str, _DEFAULT.schedule_file,
           "file in which the pool keeps its periodic tasks' last runs, so that a restart goes on from them",
           pool=True, metavar="PATH"),
    Option("max_payload_bytes", ("--max-payload-bytes",), _size, _DEFAULT.max_payload_bytes,
           "largest task (pickled) that task() accepts", pool=True, metavar="SIZE"),
    Option("spill_dir", ("--spill-dir",), str, _DEFAULT.spill_dir,
           "directory in which the pool makes its private directory for payloads too large for the rings",
           pool=True, metavar="DIR", shown="/dev/shm (else the temp directory)"),
    Option("spill_bytes", ("--spill-bytes",), _size, _DEFAULT.spill_bytes,
           "bound on the queued tasks' files in the spill directory; past it task() waits, then QueueFull",
           pool=True, metavar="SIZE"),
    Option("record_arguments", ("--record-arguments",), _bool, _DEFAULT.record_arguments,
           "keep each task's arguments in the record (status(), the dashboard show their repr)", pool=True),
    Option("builder_dumpable", ("--builder-dumpable",), _bool, _DEFAULT.builder_dumpable,
           "leave the master and HTTP workers dumpable (debuggers, core dumps) at the cost of letting "
           "processes of the same user reach the pool through them", pool=True),
    Option("share", ("--share",), str, _DEFAULT.share,
           "auto, never or a group name: which processes that did not fork from one another share one pool "
           "(under taskmw start the master builds the pool: auto does not share)", pool=True, metavar="GROUP"),
    Option("dashboard", ("--dashboard",), _address, None,
           "serve the live dashboard (taskmw.web) from the master on HOST:PORT (a bare PORT: on 127.0.0.1); "
           "read-only unless --dashboard-cancel; it has no access check: keep it on 127.0.0.1",
           metavar="HOST:PORT"),
    Option("dashboard_cancel", ("--dashboard-cancel",), _bool, False,
           "the dashboard's cancel and stop buttons work (POSTs from its own pages only)"),
)  # fmt: skip

BY_NAME: dict[str, Option] = {opt.name: opt for opt in OPTIONS}
APP_ONLY = ("entrypoints", "backend", "disable_plugins", "schedule")
"""TaskServer settings taken from the app's ``TaskMiddleware(...)`` that have no option."""
POOL_SETTING = {"num_task_workers": "task_workers"}
"""Options whose TaskServer argument has another name."""


def pool_name(option: Option) -> str:
    """The :class:`~taskmw.TaskServer` argument an option sets."""
    return POOL_SETTING.get(option.name, option.name)


@dataclasses.dataclass
class Resolved:
    """The settings of one ``taskmw start``: values and where each came from."""

    values: dict[str, Any]
    sources: dict[str, str]  # name -> "flag", "env", "app" or "default"
    app_only: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Pool settings the app gives that have no option (see :data:`APP_ONLY`)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    def pool_settings(self) -> dict[str, Any]:
        """Arguments for :class:`~taskmw.TaskServer`: the pool options that
        were given (by flag, environment or the app), leaving the rest to
        TaskServer's own defaults."""
        out = self.app_only | {
            pool_name(opt): self.values[opt.name]
            for opt in OPTIONS
            if opt.pool and (self.sources[opt.name] != "default" or opt.name == "num_task_workers")
        }
        if "schedule" in out:  # the app's, as the inspecting child sent it (the master does not import the app)
            out["schedule"] = [Periodic.from_wire(entry) for entry in out["schedule"]]
        return out


def resolve(
    flags: Mapping[str, Any], environ: Mapping[str, str], app_settings: Mapping[str, Any] | None = None
) -> Resolved:
    """Combine the sources: ``flags`` (``None`` where a flag was not given),
    ``environ`` and the app's ``TaskMiddleware`` pool settings (keyed by
    TaskServer argument name).

    Raises:
        ValueError: an environment variable does not parse (the message names it).
    """
    app_settings = app_settings or {}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for opt in OPTIONS:
        if flags.get(opt.name) is not None:
            values[opt.name], sources[opt.name] = flags[opt.name], "flag"
        elif environ.get(opt.env) is not None:
            try:
                values[opt.name] = opt.parse(environ[opt.env])
            except ValueError as exc:
                raise ValueError(f"{opt.env}={environ[opt.env]!r}: {exc}") from None
            sources[opt.name] = "env"
        elif opt.pool and pool_name(opt) in app_settings:
            values[opt.name], sources[opt.name] = app_settings[pool_name(opt)], "app"
        else:
            values[opt.name], sources[opt.name] = opt.default, "default"
    app_only = {name: app_settings[name] for name in APP_ONLY if name in app_settings}
    return Resolved(values, sources, app_only)


def pid_file_from(flag: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """The pid file that ``stop``, ``reload`` and ``status`` look for."""
    return flag or environ.get(BY_NAME["pid_file"].env) or DEFAULT_PID_FILE


def socket_path(pid_file: str) -> str:
    """The control socket of the master whose pid file is ``pid_file``."""
    return pid_file + ".sock"
