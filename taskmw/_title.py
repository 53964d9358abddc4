"""Process titles: each process of a pool names its role, and under
``taskmw start`` its app (``ps``, ``top``, ``/proc/<pid>/cmdline``)::

    taskmw: master [myapp:app]
    taskmw: HTTP worker [myapp:app]
    taskmw: supervisor [myapp:app]
    taskmw: task worker 0 [myapp:app]

Through :mod:`setproctitle` (a dependency of taskmw); without it, nothing
changes. The label in brackets is gunicorn's ``proc_name`` when one is given,
else the app (:func:`set_label`, called by ``taskmw start``'s master before it
builds the pool, so that every process forked from it inherits it).
"""

from __future__ import annotations

from typing import Any

_label: str | None = None


def set_label(label: str | None) -> None:
    """The label of the titles of this process and of those forked from it."""
    global _label
    _label = label


def title(role: str) -> str:
    """The title of a process with ``role`` (``"supervisor"``, ``"task worker 3"``, …)."""
    return f"taskmw: {role} [{_label}]" if _label else f"taskmw: {role}"


def set_title(role: str) -> None:
    """Name this process for its ``role`` (a no-op without setproctitle)."""
    try:
        from setproctitle import setproctitle
    except ImportError:  # pragma: no cover - a dependency; a broken install only loses the titles
        return
    setproctitle(title(role))


_GUNICORN_ROLES = {"master": "master", "worker": "HTTP worker"}


def gunicorn_title(text: str, *_: Any) -> None:
    """Stands in for gunicorn's ``util._setproctitle`` in ``taskmw start``'s
    master, which gunicorn calls with ``"master [proc_name]"`` and, in each
    new HTTP worker, ``"worker [proc_name]"``."""
    role = text.partition(" [")[0]
    set_title(_GUNICORN_ROLES.get(role, role))
