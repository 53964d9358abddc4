"""Running one task through the hooks, shared by every backend.

A backend that runs tasks (the local pool's workers in :mod:`taskmw.worker`,
the eager backend in :mod:`taskmw.eager`, a remote one) takes a task's
payload (as :mod:`taskmw._codec` wrote it) and calls :func:`run_task`, which
decodes it, makes the :class:`~taskmw.TaskEvent` and calls the ``on_task``
implementations until one completes it. The outcome comes back as a status
code of :mod:`taskmw.records`, a return value and a
:class:`~taskmw.TaskError`, ready for a :class:`taskmw.records.FinishRecord`.
"""

from __future__ import annotations

import logging
import os
import traceback
from types import FunctionType
from typing import Any

from taskmw import _codec
from taskmw.events import TaskError, TaskEvent
from taskmw.interfaces import Server
from taskmw.listeners import Invoker
from taskmw.plugins import Impl
from taskmw.records import ERROR, OK, Kind
from taskmw.tasks import ServiceTask, Task, _make_task

log = logging.getLogger(__name__)
_CALL = int(Kind.CALL)
_INVOKE = Invoker.on_task


def run_task(
    calls: list[Impl], server: Server, task_id: int, worker_id: int, payload: bytes, kind: int, attempt: int = 1
) -> tuple[int, Any, TaskError | None, str]:
    """Decode a task's payload (a call if ``kind`` is ``Kind.CALL``, else a
    data object; without the options header) and run it through ``calls``
    (the ``on_task`` implementations, see :func:`taskmw.plugins.implementations`),
    as attempt ``attempt`` (1 the first time).

    Returns ``(status, value, error, name)``: ``(OK, return value,
    None, name)``, or ``(ERROR, None, TaskError, name)`` if decoding
    or a hook raised, or nothing completed the task; ``name`` is
    :func:`task_name` of what ran ("" if it could not be decoded). The value may be a coroutine (an ``async
    def`` task): the caller awaits it.

    When the built-in invoker comes first in ``calls`` (no plugin
    implements ``on_task``), a call is made here as the invoker would make
    it (it completes the task: nothing after it runs), without building its
    :class:`~taskmw.Task` and :class:`~taskmw.TaskEvent`.
    """
    name = ""
    try:
        data = _codec.decode(payload)
        if kind == _CALL:
            fn, args, kwargs = data
            name = _callable_name(fn)
            if calls and getattr(calls[0][0], "__func__", None) is _INVOKE:  # the invoker first: nothing else runs
                return OK, fn(*args, **kwargs) if kwargs else fn(*args), None, name
            data = _make_task(fn, args, kwargs)
        else:
            name = task_name(data)
        event = TaskEvent(task_id, worker_id, data, server, attempt)
        for fn, argnames, _ in calls:
            if argnames:
                fn(event)
            else:
                fn()
            if event.completed:
                return OK, event.return_value, None, name
        raise LookupError(
            f"nothing handled the task: no on_task hook completed it, and no listener is registered "
            f"for {type(data).__module__}.{type(data).__qualname__}"
        )
    except BaseException as exc:  # noqa: B036 - a task's SystemExit is its failure, not ours
        return ERROR, None, error_of(exc), name


def task_name(data: Any) -> str:
    """What a task runs: ``module.qualname`` of its callable,
    ``service:<name>`` of a service task, or the type of a data object."""
    if isinstance(data, Task):
        return _callable_name(data.fn)
    if isinstance(data, ServiceTask):
        return f"service:{data.name}"
    cls = type(data)
    return f"{cls.__module__}.{cls.__qualname__}"


def _callable_name(fn: Any) -> str:
    """``module.qualname`` of a task's callable (of its type if it has none)."""
    if type(fn) is FunctionType and fn.__module__ and fn.__qualname__:
        return f"{fn.__module__}.{fn.__qualname__}"
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    module = getattr(fn, "__module__", None) or type(fn).__module__
    return f"{module}.{qualname}"


def error_of(exc: BaseException) -> TaskError:
    """The :class:`TaskError` describing ``exc`` (type, message, traceback text)."""
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        tb = tb.tb_next  # start the traceback at the task's own code
    try:
        text = "".join(traceback.format_exception(cls, exc, tb or exc.__traceback__))
    except BaseException:  # noqa: B036 - a broken exception (its notes, its chain) must still be reported
        text = ""
    return TaskError(name, _codec.safe_str(exc), text)


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
