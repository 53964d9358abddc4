"""taskmw-logging: every task in the logs, with no code change.

Installed (``pip install taskmw-logging``), it registers itself in every
taskmw pool through the entry point ``logging`` of the group ``taskmw`` and
logs, with :mod:`logging`:

- one line when it finishes, in the process that queued it: its id, status,
  what ran, duration, worker and, unless ``ok``, the error's type and
  message, followed by the task's traceback when it raised (text format;
  the ``error.traceback`` field in JSON). A ``lost`` or ``timeout`` finish
  comes from the supervisor, which knows no names: the plugin shows the
  name the task worker's ``on_task`` noted when the task started (in a
  small table of shared memory the pool's processes inherit); ``?`` for a
  task no worker started (``cancelled``, or lost with its worker before it
  began);
- one line when a task worker starts and one when it stops. A worker that
  died is reported by taskmw's supervisor (logger ``taskmw.supervisor``, a
  warning naming the worker, its pid and the signal); the replacement then
  logs ``started`` with the same worker id and a new pid;
- at ``DEBUG`` (``TASKMW_LOGGING_START_LEVEL``), one line when a task
  starts, in the task worker: its id, what runs (the callable's
  ``module.qualname``, ``service:<name>`` for a :class:`~taskmw.ServiceTask`,
  or the data object's type) and the worker. The finish line says all of it
  but the moment the task began; at ``INFO`` the start lines would double
  what logging costs per task.

A line costs what :mod:`logging` costs: the plugin hands the logger a record
whose message is formatted by the handler, only if a handler takes it (no
text is built for a level nobody logs, no JSON unless ``json``), and skips
``logging``'s look-up of the calling frame (the caller is always this
plugin; ``pathname`` is ``"(unknown file)"``, as with ``logging._srcfile =
None``).

Settings (read from the environment when the plugin is loaded, as the first
pool is built, not when the module is imported; or set in code with
``taskmw_logging.plugin.configure(...)``):

===============================  =================  ==================================
variable                         default            meaning
===============================  =================  ==================================
``TASKMW_LOGGING_LOGGER``        ``taskmw.tasks``   logger the lines go to
``TASKMW_LOGGING_LEVEL``         ``INFO``           level of the finish and worker
                                                    lines (failures are logged at
                                                    ``WARNING`` at least)
``TASKMW_LOGGING_START_LEVEL``   ``DEBUG``          level of the start lines
``TASKMW_LOGGING_FORMAT``        ``text``           ``text`` or ``json`` (JSON lines)
===============================  =================  ==================================

If nothing has configured :mod:`logging` when the plugin loads (as the first
pool is built: no handler on the root logger or on the plugin's logger), it
adds a handler writing to stderr on the ``taskmw`` logger (and on its own
logger if that is not under ``taskmw``), which the pool's processes inherit,
so the lines show with no setup at all; an app that configures logging
before it builds its pool decides itself where they go.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

import taskmw
from taskmw import TaskEvent, TaskFinishEvent
from taskmw.pipeline import task_name

__all__ = ["JsonFormatter", "TaskLogger", "plugin"]

FORMATS = ("text", "json")
HANDLER_NAME = "taskmw_logging.stderr"
TEXT_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"
"""The stderr handler's format in ``text`` mode."""
FIELDS = "taskmw"
"""The attribute of a log record holding the line's fields (a dict), for structured handlers."""


class JsonFormatter(logging.Formatter):
    """Formats every record as one JSON object: ``time``, ``level``,
    ``logger``, then the plugin's fields (``event``, ``task_id``, …) or
    ``message`` for other records."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": round(record.created, 6),
            "level": record.levelname,
            "logger": record.name,
        }
        fields = getattr(record, FIELDS, None)
        if isinstance(fields, dict):
            out.update(fields)
        else:
            out["message"] = record.getMessage()
            if record.exc_info:
                out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, default=repr)


class _JsonMessage:
    """A record's message in ``json`` format: the fields as a JSON object,
    made only when a handler formats the record."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    def __str__(self) -> str:
        return json.dumps(self.fields, default=repr)


_START = "task %d started: %s on worker %d"
_START_RETRY = "task %d started: %s on worker %d (attempt %d)"
_FINISH = "task %d %s: %s in %.4fs on worker %d"
_WORKER = "task worker %d %s (pid %d)"


class TaskLogger:
    """The plugin: logs task finishes, worker starts and stops and (at
    ``start_level``) task starts.

    Args:
        logger: name of the logger the lines go to.
        level: level of the finish and worker lines (a name such as
            ``"INFO"`` or a number); a finish that is not ``ok`` is logged
            at ``WARNING`` at least.
        format: ``"text"`` (one readable line) or ``"json"`` (the message is a
            JSON object; the stderr handler the plugin adds then writes JSON
            lines for every ``taskmw`` record).
        stderr: add a stderr handler when nothing configured logging.
        start_level: level of the line each task logs as it starts, in its
            task worker (``DEBUG``: shown only where the logger is enabled
            for it).

    Raises:
        ValueError: an unknown level or format.
    """

    taskmw_logs_finishes = True
    """taskmw's own line for a failed task nobody waited for is skipped: this plugin's finish line says it all."""

    def __init__(
        self,
        logger: str = "taskmw.tasks",
        level: int | str = "INFO",
        format: str = "text",
        stderr: bool = True,
        start_level: int | str = "DEBUG",
    ) -> None:
        self.logger = logging.getLogger(logger)
        self.level = _level(level)
        self.start_level = _level(start_level)
        self.json = _format(format)
        self.stderr = stderr
        self._handler: logging.Handler | None = None
        self._install_handler()

    @classmethod
    def from_env(cls) -> TaskLogger:
        """The plugin configured by the ``TASKMW_LOGGING_*`` environment variables."""
        env = os.environ
        return cls(
            env.get("TASKMW_LOGGING_LOGGER") or "taskmw.tasks",
            env.get("TASKMW_LOGGING_LEVEL") or "INFO",
            env.get("TASKMW_LOGGING_FORMAT") or "text",
            start_level=env.get("TASKMW_LOGGING_START_LEVEL") or "DEBUG",
        )

    def configure(
        self,
        *,
        logger: str | None = None,
        level: int | str | None = None,
        format: str | None = None,
        stderr: bool | None = None,
        start_level: int | str | None = None,
    ) -> None:
        """Change settings (those given); call it before the pool is built, so
        that its task workers are forked with them."""
        self._remove_handler()
        if logger is not None:
            self.logger = logging.getLogger(logger)
        if level is not None:
            self.level = _level(level)
        if start_level is not None:
            self.start_level = _level(start_level)
        if format is not None:
            self.json = _format(format)
        if stderr is not None:
            self.stderr = stderr
        self._install_handler()

    # -- hooks ------------------------------------------------------------------------

    @taskmw.hookimpl
    def on_worker_start(self, worker_id: int, server: Any) -> None:
        self._worker_line(worker_id, "start", "started")

    @taskmw.hookimpl
    def on_worker_stop(self, worker_id: int, server: Any) -> None:
        self._worker_line(worker_id, "stop", "stopped")

    @taskmw.hookimpl(tryfirst=True)
    def on_task(self, event: TaskEvent) -> None:
        level = self.start_level
        if not self.logger.isEnabledFor(level):
            return
        name = task_name(event.data)
        fields = {"event": "task.start", "task_id": event.task_id, "name": name, "worker_id": event.worker_id}
        if event.attempt > 1:
            fields["attempt"] = event.attempt
            self._log(level, fields, _START_RETRY, (event.task_id, name, event.worker_id, event.attempt))
        else:
            self._log(level, fields, _START, (event.task_id, name, event.worker_id))

    @taskmw.hookimpl
    def on_finish(self, event: TaskFinishEvent) -> None:
        task_id, status, _value, error, duration, worker_id, attempts, name = event
        level = self.level if status == "ok" else max(self.level, logging.WARNING)
        if not self.logger.isEnabledFor(level):
            return
        # name: taskmw fills it from the pool's record for the finishes no worker sent
        fields: dict[str, Any] = {
            "event": "task.finish",
            "task_id": task_id,
            "name": name,
            "status": status,
            "duration": round(duration, 6),
            "worker_id": worker_id,
        }
        args: tuple[Any, ...] = (task_id, status, name or "?", duration, worker_id)
        if attempts == 1 and error is None:  # the usual line: nothing more to add
            self._log(level, fields, _FINISH, args)
            return
        text = _FINISH
        if attempts > 1:
            fields["attempts"] = attempts
            text += " after %d attempts"
            args += (attempts,)
        if error is not None:
            fields["error"] = {"type": error.type, "message": error.message}
            text += ": %s: %s"
            args += (error.type, error.message)
            if error.traceback:
                fields["error"]["traceback"] = error.traceback
                text += "\n%s"
                args += (error.traceback.rstrip("\n"),)
        self._log(level, fields, text, args)

    # -- output -------------------------------------------------------------------------

    def _worker_line(self, worker_id: int, event: str, text: str) -> None:
        if self.logger.isEnabledFor(self.level):
            pid = os.getpid()
            fields = {"event": f"worker.{event}", "worker_id": worker_id, "pid": pid}
            self._log(self.level, fields, _WORKER, (worker_id, text, pid))

    def _log(self, level: int, fields: dict[str, Any], text: str, args: tuple[Any, ...]) -> None:
        """Hand the logger one record (the caller checked that it is enabled
        for ``level``): ``text % args``, formatted by the handler that writes
        it, or the fields as JSON; the fields ride along as ``record.taskmw``.
        Like ``Logger.log``, but without looking up the calling frame."""
        logger = self.logger
        if self.json:
            text, args = _JsonMessage(fields), ()  # type: ignore[assignment]
        record = logger.makeRecord(logger.name, level, "(unknown file)", 0, text, args, None, None, {FIELDS: fields})
        logger.handle(record)

    def _install_handler(self) -> None:
        """Add the stderr handler if nothing configured logging (the pool's
        processes, forked later, inherit it)."""
        taskmw_logger = logging.getLogger("taskmw")
        if not self.stderr or self.logger.hasHandlers() or any(h.name == HANDLER_NAME for h in taskmw_logger.handlers):
            return
        handler = logging.StreamHandler(sys.stderr)
        handler.set_name(HANDLER_NAME)
        handler.setFormatter(JsonFormatter() if self.json else logging.Formatter(TEXT_FORMAT))
        targets = [taskmw_logger]  # the supervisor's warnings (a worker died) too
        if not self.logger.name.startswith("taskmw."):
            targets.append(self.logger)
        for lg in targets:
            lg.addHandler(handler)
            if lg.getEffectiveLevel() > self.level:
                lg.setLevel(self.level)
        self._handler = handler

    def _remove_handler(self) -> None:
        handler, self._handler = self._handler, None
        if handler is not None:
            for lg in (logging.getLogger("taskmw"), self.logger):
                lg.removeHandler(handler)


def _level(level: int | str) -> int:
    if isinstance(level, int) and not isinstance(level, bool):
        return level
    value = logging.getLevelName(str(level).upper())
    if not isinstance(value, int):
        raise ValueError(f"taskmw-logging: level must be a logging level name such as INFO or DEBUG, got {level!r}")
    return value


def _format(fmt: str) -> bool:
    if fmt not in FORMATS:
        raise ValueError(f"taskmw-logging: format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return fmt == "json"


if TYPE_CHECKING:
    plugin: TaskLogger
    """The instance the entry point registers in every pool."""


def __getattr__(name: str) -> Any:
    """``plugin``, made from the environment when first asked for (the entry
    point, as the first pool is built, or ``taskmw_logging.plugin`` in code),
    not when the module is imported: its settings are read, and its stderr
    handler added, then."""
    if name == "plugin":
        value: Any = globals().setdefault("plugin", TaskLogger.from_env())
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
