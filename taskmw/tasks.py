"""What a user queues: :class:`Task`, :class:`ServiceTask`, ``deferred``
listeners and ``@task`` functions, and :func:`current_server`, which finds the
pool for code that has no ``environ`` at hand."""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, overload

from taskmw.interfaces import Server

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class Task:
    """A callable and its arguments, run by the built-in invoker in a task worker.

    ``server.task(fn, *args, **kwargs)`` queues ``Task(fn, *args, **kwargs)``.
    Module-level functions travel by reference; lambdas, closures and
    functions of ``__main__`` travel by value (cloudpickle).
    """

    __slots__ = ("fn", "args", "kwargs")

    def __init__(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> None:
        if not callable(fn):
            raise TypeError(f"Task needs a callable, got {type(fn).__name__}: {fn!r}")
        self.fn = fn
        self.args = args
        self.kwargs = kwargs

    def __call__(self) -> Any:
        """Run the callable with its arguments (what the task worker does)."""
        return self.fn(*self.args, **self.kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_make_task, (self.fn, self.args, self.kwargs))

    def __repr__(self) -> str:
        name = getattr(self.fn, "__qualname__", None) or repr(self.fn)
        return f"Task({name}, args={self.args!r}, kwargs={self.kwargs!r})"


def _make_task(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> Task:
    t = Task.__new__(Task)
    t.fn, t.args, t.kwargs = fn, args, kwargs or {}
    return t


class ServiceTask:
    """A task naming a service instead of carrying a callable: the task worker
    asks the ``resolve_service`` hook for ``name`` and calls the service with
    the arguments (mezzio-swoole's ``ServiceBasedTask``)."""

    __slots__ = ("name", "args", "kwargs")

    def __init__(self, name: str, /, *args: Any, **kwargs: Any) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"ServiceTask needs a service name (a non-empty str), got {name!r}")
        self.name = name
        self.args = args
        self.kwargs = kwargs

    def __reduce__(self) -> tuple[Any, ...]:
        return (_make_service_task, (self.name, self.args, self.kwargs))

    def __repr__(self) -> str:
        return f"ServiceTask({self.name!r}, args={self.args!r}, kwargs={self.kwargs!r})"


def _make_service_task(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> ServiceTask:
    t = ServiceTask.__new__(ServiceTask)
    t.name, t.args, t.kwargs = name, args, kwargs
    return t


# -- finding the pool ----------------------------------------------------------

_current: contextvars.ContextVar[Server | None] = contextvars.ContextVar("taskmw_current_server", default=None)
_default: list[Server] = []  # the pool this process uses when no request set one


def current_server() -> Server:
    """The pool serving this request or process: the one ``TaskMiddleware``
    handles the current request with, else the last pool built (or, in a task
    worker, joined) by this process.

    Raises:
        RuntimeError: no pool exists in this process.
    """
    server = _current.get()
    if server is None:
        if not _default:
            raise RuntimeError(
                "no taskmw pool in this process: wrap the app with TaskMiddleware(app) "
                "or create a TaskServer() before queuing tasks"
            )
        server = _default[-1]
    return server


def _set_default(server: Server | None) -> None:
    """Make ``server`` this process's default pool (``None``: forget it)."""
    _default.clear()
    if server is not None:
        _default.append(server)


# -- progress -----------------------------------------------------------------------

_reporter: contextvars.ContextVar[Callable[[float, str | None], None] | None] = contextvars.ContextVar(
    "taskmw_progress", default=None
)
"""Set by whatever runs a task (a worker, the eager backend) to record its progress."""


def progress(fraction: float, message: str | None = None) -> None:
    """Report how far the running task has got: ``fraction`` from 0 to 1 and
    an optional short message, shown at once by ``server.status(task_id)``
    (and ``taskmw status``) in every process of the pool. Outside a task it
    does nothing.

    Raises:
        ValueError: ``fraction`` is not a number from 0 to 1.
    """
    report = _reporter.get()
    if report is None:
        return
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0 <= fraction <= 1:
        raise ValueError(f"progress fraction must be a number from 0 to 1, got {fraction!r}")
    report(float(fraction), None if message is None else str(message))


# -- deferred listeners ----------------------------------------------------------

_deferred_listeners: dict[str, Callable[..., Any]] = {}
"""Service name -> the real listener, for the built-in resolver (see listeners.py)."""


class DeferredListener(Generic[P]):
    """A listener that, when called, queues itself as a :class:`ServiceTask`.

    Made by :func:`deferred`. In the task worker the service name resolves to
    the real listener, which runs there and is never queued again.
    """

    def __init__(self, listener: Callable[P, Any], name: str) -> None:
        self.listener = listener
        self.name = name
        functools.update_wrapper(self, listener)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> int:
        """Queue the real listener on :func:`current_server`; returns the task id."""
        return current_server().task(ServiceTask(self.name, *args, **kwargs))

    def __repr__(self) -> str:
        return f"<deferred {self.name!r} -> {self.listener!r}>"


@overload
def deferred(listener: Callable[P, Any], name: str) -> DeferredListener[P]: ...
@overload
def deferred(listener: str) -> Callable[[Callable[P, Any]], DeferredListener[P]]: ...
def deferred(listener: Any, name: str | None = None) -> Any:
    """Make a listener run in a task worker instead of where it is called.

    ``deferred(send_welcome, "mail.welcome")`` returns a callable that queues
    ``ServiceTask("mail.welcome", *args)``; as a decorator,
    ``@deferred("mail.welcome")``. In the task worker, ``resolve_service``
    plugins may supply the listener for the name (built with its
    dependencies); otherwise the function given here runs.
    """
    if isinstance(listener, str):
        service = listener
        return lambda fn: deferred(fn, service)
    if name is None or not isinstance(name, str) or not name:
        raise TypeError("deferred(listener, name) needs a service name: a non-empty str")
    if not callable(listener):
        raise TypeError(f"deferred() needs a callable listener, got {listener!r}")
    real = listener.listener if isinstance(listener, DeferredListener) else listener
    known = _deferred_listeners.get(name)
    if known is not None and known is not real and _qualname(known) != _qualname(real):
        raise ValueError(f"service name {name!r} is already deferred to {_qualname(known)}")
    _deferred_listeners[name] = real
    return DeferredListener(real, name)


def _qualname(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


# -- @task functions ---------------------------------------------------------------

OPTION_NAMES = ("delay", "eta", "task_timeout", "retries", "retry_backoff")
"""The per-task options: given with a :class:`Task` to ``server.task()``
(never among a plain callable's arguments, which all go to the callable),
as ``@task(...)`` defaults, or to ``fn.options(...)`` / ``fn.apply(...)``."""
OPTIONS_ATTR = "_taskmw_options"
"""The attribute of a ``@task(...)`` function holding its default options."""


def check_option_names(options: dict[str, Any], where: str) -> dict[str, Any]:
    """``options`` checked, with ``timeout=`` read as ``task_timeout=``.

    Where a call does not wait (``@task(...)``, ``.options()``, ``.apply()``,
    ``server.task(Task(...), ...)``) ``timeout=`` is the task's time limit, as
    ``task_timeout=`` is everywhere; on the calls that wait (``taskwait``,
    ``taskwait_multi``, ``task_async``, ``result``) ``timeout=`` is the wait,
    which those calls take before the options are read.

    Raises:
        TypeError: a name that is not an option, or both ``timeout=`` and ``task_timeout=``.
    """
    if "timeout" in options:
        if "task_timeout" in options:
            raise TypeError(f"{where} got both timeout= and task_timeout= (the same option): give one")
        options = {("task_timeout" if k == "timeout" else k): v for k, v in options.items()}
    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
        raise TypeError(
            f"{where} got unexpected keyword arguments {unknown}: the options are "
            f"{', '.join(n + '=' for n in OPTION_NAMES)} (timeout= for task_timeout=; "
            "a Task's own arguments go in the Task)"
        )
    return options


class TaskFunction(Protocol[P, R_co]):
    """A function decorated with :func:`task`: call it to run it here, or
    ``.delay(...)`` to queue it."""

    __name__: str

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> int: ...

    def delay_on_commit(self, *args: P.args, **kwargs: P.kwargs) -> None: ...

    def apply(self, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None, **options: Any) -> int: ...

    def options(self, **options: Any) -> TaskOptions[P]: ...


_RESERVED = frozenset(OPTION_NAMES) | {"timeout"}


def check_not_options(
    fn: Callable[..., Any], kwargs: dict[str, Any], decorated: bool = False, call: str = "task"
) -> None:
    """Refuse keyword arguments of a plain callable that name a per-task
    option (or ``timeout``) while ``fn`` has no such parameter: they were
    meant as options, which go with a :class:`~taskmw.Task` (or, for
    ``fn.delay()`` of a ``@taskmw.task`` function, ``decorated``, with
    ``fn.options()``); ``call`` is the server's method it was given to
    (``task``, ``taskwait``, ``task_async``), named in the message. Costs a
    signature look-up only when such a name is there.

    Raises:
        TypeError: naming the keyword and what to write instead.
    """
    given = _RESERVED.intersection(kwargs)
    if not given:
        return
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # no signature to read (a builtin): pass them on as given
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(k for k in given if k not in params)
    if unknown:
        name = getattr(fn, "__qualname__", None) or repr(fn)
        if decorated:
            raise TypeError(
                f"{name}.delay() got {', '.join(k + '=' for k in unknown)}, which {name} has no parameter for: "
                f"every argument of delay() goes to {name}; options go with options(): "
                f"{name}.options({', '.join(k + '=...' for k in unknown)}).delay(*args, **kwargs)"
            )
        opts = ", ".join(f"{'task_timeout' if k == 'timeout' else k}=..." for k in unknown)
        raise TypeError(
            f"{call}() got {', '.join(k + '=' for k in unknown)} for {name}, which has no such parameter: "
            f"a plain callable's keyword arguments all go to it; per-task options go with a Task: "
            f"server.{call}(Task({name}, *args, **kwargs), {opts})"
        )


class TaskOptions(Generic[P]):
    """A ``@task`` function with options set (``fn.options(timeout=10,
    retries=3)``; ``timeout=`` is ``task_timeout=`` here): ``.delay(*args, **kwargs)`` queues it with them (its
    arguments all go to the function), ``.apply(args, kwargs, **more)`` too."""

    def __init__(self, fn: Callable[P, Any], options: dict[str, Any]) -> None:
        options = check_option_names(options, f"{getattr(fn, '__qualname__', fn)}.options()")
        self.fn = fn
        self.given = options

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> int:
        """Queue the function on :func:`current_server` with these options; returns the task id.

        Raises:
            TypeError: a keyword argument names an option (``delay=``,
                ``timeout=``, …) that the function has no parameter for:
                options go with :meth:`options`.
        """
        if kwargs:
            check_not_options(self.fn, kwargs, decorated=True)
        if not self.given:  # as server.task(fn, ...) (its fast path)
            return current_server().task(self.fn, *args, **kwargs)
        return current_server().task(Task(self.fn, *args, **kwargs), **self.given)

    def apply(self, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None, **options: Any) -> int:
        """Queue ``fn(*args, **kwargs)`` with these options and ``options`` (which win).

        Raises:
            TypeError: ``args`` is not a tuple or list, or ``kwargs`` not a dict
                (``fn.apply("a")`` would otherwise call ``fn("a")`` as ``fn(*"a")``).
        """
        name = getattr(self.fn, "__qualname__", self.fn)
        if not isinstance(args, (tuple, list)):
            raise TypeError(
                f"{name}.apply(args, kwargs): args must be a tuple or list, got {args!r}: write apply(({args!r},))"
            )
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise TypeError(f"{name}.apply(args, kwargs): kwargs must be a dict, got {kwargs!r}")
        return self.options(**options).delay(*args, **(kwargs or {}))

    def delay_on_commit(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Queue it with these options once the Django transaction commits."""
        if kwargs:
            check_not_options(self.fn, kwargs, decorated=True)
        from taskmw.contrib.django import task_on_commit  # needs Django, imported only when used

        task_on_commit(Task(self.fn, *args, **kwargs), **self.given)

    def options(self, **options: Any) -> TaskOptions[P]:
        """These options with ``options`` added (they win)."""
        more = check_option_names(options, f"{getattr(self.fn, '__qualname__', self.fn)}.options()")
        return TaskOptions(self.fn, {**self.given, **more})

    def __repr__(self) -> str:
        return f"<TaskOptions {getattr(self.fn, '__qualname__', self.fn)} {self.given!r}>"


@overload
def task(fn: Callable[P, R], /) -> TaskFunction[P, R]: ...
@overload
def task(**options: Any) -> Callable[[Callable[P, R]], TaskFunction[P, R]]: ...
def task(fn: Any = None, /, **options: Any) -> Any:
    """Make ``fn`` a task function: ``@taskmw.task`` or, with default
    options, ``@taskmw.task(retries=3, timeout=10, retry_backoff=2)``
    (``delay=`` too; see :data:`OPTION_NAMES`).

    It gains ``.delay(*args, **kwargs)``, which queues it on
    :func:`current_server` and returns the task id (every argument goes to
    ``fn``); ``.options(**options).delay(...)`` and ``.apply(args, kwargs,
    **options)``, which queue it with options (over its defaults); and
    (for Django, as Celery has it) ``.delay_on_commit(*args, **kwargs)``,
    which queues it once the current database transaction commits, never if
    it rolls back (:func:`taskmw.contrib.django.task_on_commit`). The
    defaults also apply to ``server.task(fn, ...)`` and
    ``server.task(Task(fn, ...))`` (options given there win). ``fn`` itself
    is unchanged (and still travels by reference).

    Raises:
        TypeError: an unknown option (see :func:`check_option_names`).
    """
    options = check_option_names(options, "@taskmw.task()")
    if fn is None:
        return lambda f: task(f, **options)
    if not callable(fn):
        raise TypeError(f"@taskmw.task needs a function, got {fn!r}")
    if "eta" in options:
        raise TypeError("@taskmw.task() got eta=: a default due time makes no sense; give delay= (seconds)")
    if options:
        setattr(fn, OPTIONS_ATTR, dict(options))
    defaults = TaskOptions(fn, options)
    fn.delay = defaults.delay
    fn.delay_on_commit = defaults.delay_on_commit
    fn.apply = defaults.apply
    fn.options = defaults.options
    return fn
