"""The Celery settings that keep taskmw's promise (every task gets exactly one
finish, and a task lost with its worker is re-delivered or reported), and the
checks of what the backend needs from a Celery app.

Applied by :func:`taskmw_celery.install` (see README's Celery section for why
each one):

- ``acks_late`` and ``reject_on_worker_lost`` on the taskmw task: the message
  is acknowledged after the task ran, and put back on the queue if the pool
  process running it dies (``acks_late=False``: it finishes ``lost``);
- ``worker_prefetch_multiplier = 1``: a worker reserves no more tasks than it
  has processes, so a dying worker takes few with it and a slow task does not
  hold others back;
- ``broker_transport_options["visibility_timeout"]`` longer than the task's
  hard ``time_limit``: Redis re-delivers an unacknowledged message after the
  visibility timeout, which must never happen to a task that is still running;
- ``"pickle"`` in ``accept_content``: task messages are pickled, like the
  payloads inside them.
"""

from __future__ import annotations

import contextvars
from typing import Any

from taskmw.settings import check_seconds

TASK_NAME = "taskmw.run"
"""The one Celery task that runs every taskmw task, sent by name."""
IDS_KEY = "taskmw:ids"
"""The Redis counter that gives task ids (in the result backend's Redis)."""
DEFAULT_TIME_LIMIT = 3600.0
"""Seconds a taskmw task may run on Celery when neither ``install(time_limit=)``
nor Celery's ``task_time_limit`` says otherwise."""
VISIBILITY_MARGIN = 60.0
"""Seconds the broker's visibility timeout is set above the time limit."""
IN_WORKER: contextvars.ContextVar[bool] = contextvars.ContextVar("taskmw_celery_in_worker", default=False)
"""True while a Celery pool process builds its server (from ``install()``'s settings)."""


def configure(celery_app: Any, time_limit: float | None = None) -> float:
    """Apply the app-wide settings to ``celery_app.conf``; returns the hard
    time limit of the taskmw task (seconds).

    Raises:
        ValueError: ``time_limit`` is not a positive number, or the app's
            ``visibility_timeout`` is not longer than the time limit.
    """
    conf = celery_app.conf
    limit = time_limit if time_limit is not None else conf.task_time_limit or DEFAULT_TIME_LIMIT
    check_seconds("time_limit", limit)
    if not limit:
        raise ValueError("time_limit must be > 0 seconds: a task without a limit could outlive the visibility timeout")
    accept = list(conf.accept_content or ["json"])
    if "pickle" not in accept and "application/x-python-serialize" not in accept:
        conf.accept_content = [*accept, "pickle"]
    conf.worker_prefetch_multiplier = 1
    options = dict(conf.broker_transport_options or {})
    visibility = options.get("visibility_timeout")
    if visibility is None:
        options["visibility_timeout"] = limit + VISIBILITY_MARGIN
        conf.broker_transport_options = options
    elif visibility <= limit:
        raise ValueError(
            f"broker_transport_options['visibility_timeout'] ({visibility}s) must be longer than the taskmw task's "
            f"time_limit ({limit}s): Redis would re-deliver tasks that are still running"
        )
    return float(limit)


def redis_backend(celery_app: Any) -> Any:
    """The app's result backend, which must be Redis (finishes are read from it).

    Raises:
        ValueError: it is not a Redis result backend.
    """
    from celery.backends.redis import RedisBackend

    backend = celery_app.backend
    if not isinstance(backend, RedisBackend):
        raise ValueError(
            "taskmw's celery backend needs a Redis result backend (result_backend='redis://...'), "
            f"got {type(backend).__name__} from result_backend={celery_app.conf.result_backend!r}"
        )
    return backend
