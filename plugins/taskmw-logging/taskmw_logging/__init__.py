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
None``). And ``ok`` finishes that come close together share one record: a
finish less than :data:`FLUSH_DELAY` (0.1 s) after the plugin's last record
waits at most that long for others, and up to ``TASKMW_LOGGING_BATCH`` (256)
go to the handlers at once (a :class:`Finishes` message, one line per
finish; :class:`TextFormatter`, which the stderr handler uses, and
:class:`JsonFormatter` write each as its own line). A finish now and then is
logged at once; a failure always is, in its own record, after the lines
before it. A thread of the plugin's writes the pending lines in time, and
they are written at exit; a forked child forgets its parent's.

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
``TASKMW_LOGGING_BATCH``         ``256``            most ``ok`` finish lines in one
                                                    record (``1``: one record per
                                                    finish, at once)
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

import atexit
import json
import logging
import os
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

import taskmw
from taskmw import TaskEvent, TaskFinishEvent
from taskmw.pipeline import task_name

__all__ = ["Finishes", "JsonFormatter", "TaskLogger", "TextFormatter", "plugin"]

FORMATS = ("text", "json")
HANDLER_NAME = "taskmw_logging.stderr"
TEXT_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"
"""The stderr handler's format in ``text`` mode."""
FIELDS = "taskmw"
"""The attribute of a log record holding the line's fields (a dict), for
structured handlers; a record of several ``ok`` finishes holds a
:class:`Finishes` there instead (its ``fields()``: one dict per finish)."""
FLUSH_DELAY = 0.1
"""Seconds an ``ok`` finish line waits, at most, for others to share its record."""


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
        if isinstance(fields, Finishes):  # one JSON object per finish, one per line
            return "\n".join(json.dumps({**out, **f}, default=repr) for f in fields.fields())
        if isinstance(fields, dict):
            out.update(fields)
        else:
            out["message"] = record.getMessage()
            if record.exc_info:
                out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, default=repr)


class TextFormatter(logging.Formatter):
    """A :class:`logging.Formatter` that writes a record of several finishes
    as one line per finish, each with the record's prefix (what the format
    puts before and after ``%(message)s``). The plugin's stderr handler
    uses it with :data:`TEXT_FORMAT`; give it to your own handler
    (``TextFormatter(your_format)``) for the same."""

    def format(self, record: logging.LogRecord) -> str:
        finishes = getattr(record, FIELDS, None)
        if not isinstance(finishes, Finishes):
            return super().format(record)
        record.msg, record.args = "\0", ()
        head, _, tail = super().format(record).partition("\0")
        record.msg = finishes
        return "\n".join(f"{head}{line}{tail}" for line in finishes.lines())


class Finishes:
    """The message (and ``record.taskmw``) of one record carrying several
    ``ok`` finish lines, in the order the finishes came; the text is made
    only when a handler formats the record.

    ``str()`` is the lines joined with newlines: a handler with a plain
    :class:`logging.Formatter` writes the first after its prefix and the
    others on their own lines (the plugin's own stderr handler puts the
    prefix on every line; ``batch=1`` logs one record per finish).
    """

    __slots__ = ("events", "json")

    def __init__(self, events: list[TaskFinishEvent], json: bool) -> None:
        self.events = events
        self.json = json

    def fields(self) -> list[dict[str, Any]]:
        """One dict per finish, as a single finish's record has in ``record.taskmw``."""
        return [_finish_fields(e) for e in self.events]

    def lines(self) -> list[str]:
        """One line per finish: the text line, or its fields as JSON."""
        if self.json:
            return [json.dumps(f, default=repr) for f in self.fields()]
        return [_FINISH % _finish_args(e) for e in self.events]

    def __str__(self) -> str:
        return "\n".join(self.lines())


def _finish_fields(event: TaskFinishEvent) -> dict[str, Any]:
    """A finish line's fields (more for a retried or failed task: see ``on_finish``)."""
    return {
        "event": "task.finish",
        "task_id": event.task_id,
        "name": event.name,  # taskmw fills it from the pool's record for the finishes no worker sent
        "status": event.status,
        "duration": round(event.duration, 6),
        "worker_id": event.worker_id,
    }


def _finish_args(event: TaskFinishEvent) -> tuple[Any, ...]:
    """The arguments of :data:`_FINISH`."""
    return (event.task_id, event.status, event.name or "?", event.duration, event.worker_id)


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
        batch: most ``ok`` finish lines in one record. A finish that comes
            less than :data:`FLUSH_DELAY` after the last record waits (at
            most that long) for others, and they go to the handlers as one
            record; what logging costs per record is then paid once per
            batch. ``1``: one record per finish, at once.

    Raises:
        ValueError: an unknown level or format, or a batch below 1.
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
        batch: int | str = 256,
    ) -> None:
        self.logger = logging.getLogger(logger)
        self.level = _level(level)
        self.start_level = _level(start_level)
        self.json = _format(format)
        self.stderr = stderr
        self.batch = _batch(batch)
        self._handler: logging.Handler | None = None
        self._forget()
        _LIVE.add(self)
        _register_process_hooks()
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
            batch=env.get("TASKMW_LOGGING_BATCH") or 256,
        )

    def configure(
        self,
        *,
        logger: str | None = None,
        level: int | str | None = None,
        format: str | None = None,
        stderr: bool | None = None,
        start_level: int | str | None = None,
        batch: int | str | None = None,
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
        if batch is not None:
            self.flush()
            self.batch = _batch(batch)
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
        ok, attempts = event.status == "ok", event.attempts
        if ok and attempts == 1:  # the usual line
            if self.logger.isEnabledFor(self.level):
                self._finished(event)
            return
        error = event.error
        level = self.level if ok else max(self.level, logging.WARNING)
        if not self.logger.isEnabledFor(level):
            return
        self.flush()  # the lines before it first
        fields = _finish_fields(event)
        text, args = _FINISH, _finish_args(event)
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

    def _finished(self, event: TaskFinishEvent) -> None:
        """An ``ok`` finish line: logged at once if the last record is older
        than :data:`FLUSH_DELAY` (one finish now and then), else kept for the
        batch's record, written when it is full or by the flusher thread
        (woken as the batch begins: at most :data:`FLUSH_DELAY` later)."""
        with self._lock:
            pending = self._pending
            if pending:
                pending.append(event)
                if len(pending) < self.batch:
                    return
                self._pending = []
                self._last = time.monotonic()
                self._emit(pending)
                return
            now = time.monotonic()
            if self.batch > 1 and now - self._last < FLUSH_DELAY:
                self._pending = [event]
                self._wake_flusher()
                return
            self._last = now
            self._emit([event])

    def flush(self) -> None:
        """Write the ``ok`` finish lines kept for a batch (the flusher thread
        does within :data:`FLUSH_DELAY`, and the process at exit)."""
        with self._lock:
            pending, self._pending = self._pending, []
            if pending:
                self._last = time.monotonic()
                self._emit(pending)

    def _emit(self, events: list[TaskFinishEvent]) -> None:
        """One record for these ``ok`` finishes (called holding the lock, so
        that records leave in the order of their finishes)."""
        if len(events) == 1:
            self._log(self.level, _finish_fields(events[0]), _FINISH, _finish_args(events[0]))
            return
        logger = self.logger
        finishes = Finishes(events, self.json)
        record = logger.makeRecord(logger.name, self.level, "(unknown file)", 0, finishes, (), None, None)
        setattr(record, FIELDS, finishes)
        logger.handle(record)

    def _wake_flusher(self) -> None:
        if self._flusher is None:
            self._flusher = threading.Thread(target=self._flush_later, name="taskmw-logging-flush", daemon=True)
            self._flusher.start()
        self._due.set()

    def _flush_later(self) -> None:
        """The flusher thread: a batch's record at most :data:`FLUSH_DELAY` after its first finish."""
        due = self._due
        while True:
            due.wait()
            due.clear()
            time.sleep(FLUSH_DELAY)
            self.flush()

    def _forget(self) -> None:
        """Start afresh: in a new instance and in a forked child (the lines
        kept in the parent are the parent's to write; its flusher thread is
        not in the child)."""
        self._lock = threading.Lock()
        self._pending: list[TaskFinishEvent] = []
        self._last = 0.0
        self._due = threading.Event()
        self._flusher: threading.Thread | None = None

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
        handler.setFormatter(JsonFormatter() if self.json else TextFormatter(TEXT_FORMAT))
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


_LIVE: weakref.WeakSet[TaskLogger] = weakref.WeakSet()
_hooks_registered = False


def _register_process_hooks() -> None:
    """Once per process, as the first TaskLogger is made: at exit, write the
    lines kept for a batch; in a forked child, forget the parent's."""
    global _hooks_registered
    if _hooks_registered:
        return
    _hooks_registered = True
    atexit.register(_flush_all)
    os.register_at_fork(after_in_child=_forget_all)


def _flush_all() -> None:
    for t in list(_LIVE):
        t.flush()


def _forget_all() -> None:
    for t in list(_LIVE):
        t._forget()


def _batch(batch: int | str) -> int:
    try:
        value = int(batch)
    except (TypeError, ValueError):
        value = 0
    if value < 1:
        raise ValueError(f"taskmw-logging: batch must be a whole number of lines, 1 or more, got {batch!r}")
    return value


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
