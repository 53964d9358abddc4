"""gunicorn's own settings under ``taskmw start``: a ``gunicorn.conf.py``
(``./gunicorn.conf.py`` where ``taskmw`` runs, or ``--config PATH``),
``GUNICORN_CMD_ARGS``, and ``--gunicorn-arg ARG`` for anything else.

Later sources win: the file, then ``GUNICORN_CMD_ARGS``, then
``--gunicorn-arg``; a taskmw flag or ``TASKMW_*`` variable wins over all of
them (``-w`` over ``workers = 4``), and over taskmw's own defaults they win.
The settings taskmw must own are refused, each with its reason (:data:`OWNED`).
"""

from __future__ import annotations

import os
import runpy
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from taskmw import config
from taskmw.cli.errors import CLIError

DEFAULT_CONFIG = "gunicorn.conf.py"
"""Read from the directory ``taskmw start`` runs in when it is there (as gunicorn does)."""
CMD_ARGS_ENV = "GUNICORN_CMD_ARGS"

_HOOK = "taskmw's master runs its own hook there (it builds, hands down and stops the pool)"
OWNED: dict[str, str] = {
    "worker_class": "taskmw picks the worker: sync for a WSGI app, uvicorn's gunicorn worker for an ASGI app",
    "preload_app": "the master must not import the app, or taskmw reload could not load new code "
    "(docs/operations.md, 'Why it is built this way'); the pool is shared without it",
    "daemon": "use --daemonize (start waits until the daemon listens)",
    "pidfile": "use --pid-file (taskmw's control socket sits next to it)",
    "bind": "use --host and --port (start checks the address before it builds the pool)",
    "chdir": "use --chdir",
    "config": "use taskmw start --config PATH",
    **{hook: _HOOK for hook in ("on_starting", "when_ready", "post_fork", "on_reload", "on_exit")},
}
"""gunicorn settings ``taskmw start`` refuses: name -> why, and what to use instead."""

OPTION_OF: dict[str, str] = {
    "workers": "num_workers",
    "errorlog": "log_file",
    "loglevel": "log_level",
    "graceful_timeout": "graceful_timeout",
    "timeout": "http_timeout",
    "accesslog": "access_logfile",
}
"""gunicorn settings that are also taskmw options: gunicorn name -> option name."""


def user_settings(
    config_file: str | None, environ: Mapping[str, str], extra_args: Sequence[str] = ()
) -> dict[str, Any]:
    """gunicorn settings given by the user: {gunicorn name: value}.

    Raises:
        CLIError: a settings file that is missing or fails, an argument
            gunicorn does not know, a bad value, or a setting taskmw owns
            (the message names the setting, where it came from and why).
    """
    from gunicorn.config import Config

    cfg = Config()
    found: dict[str, tuple[Any, str]] = {}
    path = config_file or (DEFAULT_CONFIG if os.path.isfile(DEFAULT_CONFIG) else None)
    if path is not None:
        if not os.path.isfile(path):
            raise CLIError(f"--config {path}: no such file")
        try:
            namespace = runpy.run_path(path)
        except BaseException as exc:  # noqa: B036 - whatever the file raised, name it
            raise CLIError(f"reading gunicorn settings from {path} failed: {type(exc).__name__}: {exc}") from None
        for name, value in namespace.items():
            if name in cfg.settings:
                found[name] = (value, path)
    parser = cfg.parser()
    for source, text in ((CMD_ARGS_ENV, environ.get(CMD_ARGS_ENV, "")), ("--gunicorn-arg", " ".join(extra_args))):
        args = shlex.split(text)
        try:
            parsed, unknown = parser.parse_known_args(args)
        except SystemExit:
            raise CLIError(f"{source}: gunicorn cannot parse {text!r} (its message is above)") from None
        if unknown or parsed.args:
            raise CLIError(f"{source}: not a gunicorn option: {' '.join(unknown + parsed.args)}")
        for name, value in vars(parsed).items():
            if value is not None and name != "args":
                found[name] = (value, source)
    out = {}
    for name, (value, source) in found.items():
        if name in OWNED:
            raise CLIError(f"{source} sets gunicorn's {name}, which taskmw start owns: {OWNED[name]}")
        try:
            cfg.set(name, value)
        except Exception as exc:
            raise CLIError(f"{source}: gunicorn's {name} = {value!r}: {exc}") from None
        out[name] = value
    return out


def apply(settings: config.Resolved, gunicorn: Mapping[str, Any]) -> dict[str, Any]:
    """Take the gunicorn settings that are taskmw options into ``settings``
    where no flag or ``TASKMW_*`` variable gave them (their source becomes
    ``"gunicorn"``); returns the others, for gunicorn alone."""
    rest = dict(gunicorn)
    for name, option in OPTION_OF.items():
        if name in rest:
            value = rest.pop(name)
            if settings.sources[option] == "default":
                settings.values[option], settings.sources[option] = value, "gunicorn"
    return rest
