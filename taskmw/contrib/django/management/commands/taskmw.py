"""``python manage.py taskmw start|stop|reload|status [OPTIONS]``: the
``taskmw`` command, with the project's application.

``start`` serves ``settings.WSGI_APPLICATION`` (``--asgi``:
``settings.ASGI_APPLICATION``; or an explicit ``MODULE:APP`` first), as
``taskmw start MODULE:APP``: the process becomes ``python -m taskmw start``
(``exec``), with ``DJANGO_SETTINGS_MODULE`` and the project's directory on
``PYTHONPATH``, so that the master imports no project code and ``taskmw
reload`` loads new code everywhere. The other commands run ``taskmw.cli.main``
here. Every option after the command is ``taskmw``'s (``manage.py taskmw
start --help``); Django's own options (``--settings``) go before the command.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from typing import Any

from django.conf import settings  # type: ignore[import-untyped]
from django.core.management.base import BaseCommand, CommandError  # type: ignore[import-untyped]

COMMANDS = ("start", "stop", "reload", "status")


def app_spec(asgi: bool = False) -> str:
    """``MODULE:NAME`` of ``settings.WSGI_APPLICATION`` (``asgi``: ``ASGI_APPLICATION``).

    Raises:
        CommandError: the setting is not set.
    """
    name = "ASGI_APPLICATION" if asgi else "WSGI_APPLICATION"
    path = getattr(settings, name, None)
    if not isinstance(path, str) or "." not in path:
        raise CommandError(
            f"settings.{name} is not set (got {path!r}): set it, or give the app: "
            "manage.py taskmw start myproject.wsgi:application"
        )
    module, _, attr = path.rpartition(".")
    return f"{module}:{attr}"


def project_path(spec: str) -> list[str]:
    """Directories to put on ``PYTHONPATH`` so that ``spec``'s module imports
    from anywhere: the one holding its top-level package, and this script's."""
    top = spec.partition(":")[0].partition(".")[0]
    out = []
    found = importlib.util.find_spec(top)
    if found is not None:
        where = list(found.submodule_search_locations or []) or ([found.origin] if found.origin else [])
        out += [os.path.dirname(os.path.abspath(w)) for w in where]
    if sys.path and sys.path[0]:
        out.append(os.path.abspath(sys.path[0]))
    return list(dict.fromkeys(out))


class Command(BaseCommand):  # type: ignore[misc]
    help = "Serve the project with taskmw (start), or stop, reload or show (status) the running server."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("command", choices=COMMANDS, help="the taskmw command")
        parser.add_argument(
            "args",
            nargs=argparse.REMAINDER,
            help="start: [MODULE:APP] [--asgi] and taskmw start's options; the others: their taskmw options",
        )

    def handle(self, *args: str, **options: Any) -> None:
        command = options["command"]
        rest = list(args)
        if command != "start":
            from taskmw.cli import main

            code = main([command, *rest])
            if code:
                raise SystemExit(code)
            return
        asgi = "--asgi" in rest
        rest = [a for a in rest if a != "--asgi"]
        if rest and not rest[0].startswith("-"):
            spec = rest.pop(0)
        else:
            spec = app_spec(asgi)
        env = dict(os.environ)
        env.setdefault("DJANGO_SETTINGS_MODULE", settings.SETTINGS_MODULE or "")
        path = [*project_path(spec), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(path))
        argv = [sys.executable, "-m", "taskmw", "start", spec, *rest]
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os.execve(sys.executable, argv, env)
