"""Pickling of tasks and their outcomes (the record layout is :mod:`taskmw.records`).

Plain pickle is the fast path. Whatever it cannot carry by reference
(lambdas, closures, objects of ``__main__``, which a task worker forked
before they were defined would not have) goes by value with cloudpickle.

A call of a plain module-level function (``task()``'s fast path) is two
pickles: the function's reference, pickled once per function and kept, then
``(args, kwargs)``, behind a 3-byte prefix (:data:`SPLIT_BYTE` and the first
one's length); :func:`decode` and :func:`decode_parts` read both forms.
Looking a function up by name costs more than pickling small arguments.
"""

from __future__ import annotations

import pickle
import sys
from types import FunctionType
from typing import Any

import cloudpickle  # type: ignore[import-untyped]

_PROTOCOL = 5
_MAIN = b"__main__"
_dumps = pickle.dumps
_loads = pickle.loads
_PICKLE_ERRORS = (pickle.PicklingError, TypeError, AttributeError, RecursionError, ValueError)
SPLIT_BYTE = b"\x01"
"""The first byte of a two-part call payload (a pickle starts with 0x80)."""
_refs: dict[FunctionType, bytes] = {}
"""Per plain function that is not nested: the prefix and pickled reference of
a two-part call (``b""``: it cannot go by reference; bounded: cleared when full)."""
_functions: dict[bytes, tuple[FunctionType, str, object, dict[str, Any], str]] = {}
"""Per reference pickle of a two-part call read here: the plain
module-level function it named, its module's name, the module, its
namespace and the function's name there (a hit counts only while that
module is still imported under that name and that name still holds that
function; bounded: cleared when full)."""
_modules = sys.modules
_MAX_FUNCTIONS = 256
_COPY_BELOW = 4096  # bytes of payload under which decode() copies the arguments' pickle rather than view it


def dumps(obj: Any) -> bytes:
    """Pickle ``obj``: plain pickle when it carries everything by reference,
    else cloudpickle. Raises what cloudpickle raises if neither can."""
    try:
        data = _dumps(obj, _PROTOCOL)
    except _PICKLE_ERRORS:
        return cloudpickle.dumps(obj, _PROTOCOL)  # type: ignore[no-any-return]
    if _MAIN in data:  # defined in the main script: send by value
        return cloudpickle.dumps(obj, _PROTOCOL)  # type: ignore[no-any-return]
    return data


PLAIN_VALUES = frozenset({type(None), bool, int, float, str, bytes})
"""Types whose pickle refers to no class or function (so to nothing of
``__main__``): a tuple of them is :func:`dumps_plain`'s to pickle."""


def dumps_plain(obj: Any) -> bytes:
    """Plain pickle, for what holds only :data:`PLAIN_VALUES` (what
    :func:`dumps` would make of it, without looking for ``__main__`` in it)."""
    return _dumps(obj, _PROTOCOL)


def unpicklable_message(what: str, obj: Any, exc: BaseException) -> str:
    """Why ``obj`` (``what`` it is) could not be pickled, naming its type."""
    cause = safe_str(exc)
    return f"{what} cannot be pickled: {type(obj).__module__}.{type(obj).__qualname__} {_short(obj)} ({cause})"


def safe_str(exc: BaseException) -> str:
    """``str(exc)``, or what went wrong if its ``__str__`` raises (an
    outcome must always be describable: a worker must not die of it)."""
    try:
        return str(exc)
    except BaseException as inner:  # noqa: B036 - __str__ may raise anything, SystemExit too
        return f"<{type(exc).__qualname__}.__str__ raised {type(inner).__qualname__}>"


def _unpicklable(what: str, obj: Any, exc: BaseException) -> TypeError:
    return TypeError(unpicklable_message(what, obj, exc))


def _short(obj: Any) -> str:
    try:
        r = repr(obj)
    except Exception:  # a broken __repr__ must not hide the real error
        r = "<unrepresentable>"
    return r if len(r) <= 80 else r[:77] + "..."


def encode_call(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """The payload of a call ``fn(*args, **kwargs)``.

    Raises:
        TypeError: something cannot be pickled; the message names which
            argument (or the callable) and its type.
    """
    try:
        return dumps((fn, args, kwargs or None))
    except Exception as exc:
        raise _explain(fn, args, kwargs, exc) from exc


def encode_function_call(fn: FunctionType, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """:func:`encode_call` for a plain function: the same call, as a
    two-part payload when ``fn`` goes by reference (the fast path of
    ``task()``)."""
    ref = _refs.get(fn)
    if ref is None:
        ref = _ref_of(fn)
    if ref:
        try:
            data = _dumps((args, kwargs or None), _PROTOCOL)
        except _PICKLE_ERRORS:
            data = b""
        if data and _MAIN not in data:
            return ref + data
    return encode_call(fn, args, kwargs)


def _ref_of(fn: FunctionType) -> bytes:
    """The kept prefix and reference of ``fn`` (``b""`` if it goes by value).
    A nested function (made per call, a closure) is never kept: it goes by
    value, and keeping it would keep what it holds alive."""
    if "<locals>" in fn.__qualname__:
        return b""
    try:
        data = _dumps(fn, _PROTOCOL)
    except _PICKLE_ERRORS:
        data = b""
    if _MAIN in data or len(data) > 0xFFFF:
        data = b""
    if len(_refs) >= 4096:
        _refs.clear()
    ref = _refs[fn] = SPLIT_BYTE + len(data).to_bytes(2, "little") + data if data else b""
    return ref


def decode_parts(payload: bytes) -> tuple[memoryview, memoryview] | None:
    """A two-part call payload's two pickles (the function's, the
    arguments'); None for a payload of one pickle."""
    if payload[:1] != SPLIT_BYTE:
        return None
    n = int.from_bytes(payload[1:3], "little")
    view = memoryview(payload)
    return view[3 : 3 + n], view[3 + n :]


_PROTO, _FRAME, _MEMOIZE, _STACK_GLOBAL = 0x80, 0x95, 0x94, 0x93
_SHORT_STR, _STR, _STR8 = 0x8C, 0x58, 0x8D  # SHORT_BINUNICODE, BINUNICODE, BINUNICODE8


def call_name(head: bytes, limit: int = 48) -> str | None:
    """``"module.qualname"`` of a two-part call payload's function, read from
    the first bytes of the payload (``head``) without unpickling anything
    (its reference pickle is ``PROTO, FRAME, module, MEMOIZE, qualname,
    MEMOIZE, STACK_GLOBAL``); when ``head`` stops inside the strings, what it
    holds if that is at least ``limit`` UTF-8 bytes (the name is cut there
    anyway). None for any other payload, or a reference it cannot read."""
    if head[:1] != SPLIT_BYTE or len(head) < 3:  # noqa: PLR2004 - the prefix
        return None
    end = 3 + int.from_bytes(head[1:3], "little")
    at, parts, got = 3, [], 0
    while at < end and len(parts) < 2:  # noqa: PLR2004 - module and qualname
        op = head[at] if at < len(head) else -1
        if op == _PROTO:
            at += 2
        elif op == _FRAME:
            at += 9
        elif op == _MEMOIZE:
            at += 1
        elif op in (_SHORT_STR, _STR, _STR8):
            width = 1 if op == _SHORT_STR else 4 if op == _STR else 8
            n = int.from_bytes(head[at + 1 : at + 1 + width], "little")
            text = head[at + 1 + width : at + 1 + width + n]
            parts.append(text.decode("utf-8", "ignore"))
            got += len(text)
            if len(text) < n:  # the head stops inside it
                return ".".join(parts) if got >= limit else None
            at += 1 + width + n
        else:
            return ".".join(parts) if got >= limit else None  # the head ended (-1), or not a reference
    return ".".join(parts) if len(parts) == 2 else None  # noqa: PLR2004


def encode_data(obj: Any) -> bytes:
    """The payload of a data object (or a :class:`~taskmw.ServiceTask`)."""
    try:
        return dumps(obj)
    except Exception as exc:
        if hasattr(obj, "args") and hasattr(obj, "kwargs"):  # ServiceTask: name the argument
            raise _explain(None, obj.args, obj.kwargs, exc) from exc
        raise _unpicklable("the task data", obj, exc) from exc


def _explain(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], exc: BaseException) -> TypeError:
    """Find the first part of a call that cannot be pickled and say which."""
    parts: list[tuple[str, Any]] = []
    if fn is not None:
        parts.append((f"the task callable {getattr(fn, '__qualname__', '')}".rstrip(), fn))
    parts += [(f"task argument {i}", a) for i, a in enumerate(args)]
    parts += [(f"task keyword argument {k!r}", v) for k, v in kwargs.items()]
    for what, obj in parts:
        try:
            dumps(obj)
        except Exception as part_exc:
            return _unpicklable(what, obj, part_exc)
    return TypeError(f"the task cannot be pickled: {exc}")


def decode(payload: bytes) -> Any:
    """Unpickle a payload written by this module."""
    if payload[:1] != SPLIT_BYTE:
        return _loads(payload)
    end = 3 + (payload[1] | payload[2] << 8)  # decode_parts(), inlined: a hot path
    args, kwargs = _loads(payload[end:] if len(payload) < _COPY_BELOW else memoryview(payload)[end:])
    return _function(payload[:end]), args, kwargs


def _function(ref: bytes) -> Any:
    """What the first part of a two-part call (``ref``: its 3-byte prefix
    and the function's reference pickle) names. A plain
    module-level function is looked up once and kept (looking it up again
    costs more than the task's arguments): the kept one is used while its
    module's attribute of its name still is that function (a module
    reloaded or imported anew, or a name rebound, is looked up afresh)."""
    kept = _functions.get(ref)
    if kept is not None:
        fn, module_name, module, namespace, name = kept
        if _modules.get(module_name) is module and namespace.get(name) is fn:
            return fn
    fn = _loads(ref[3:])
    if type(fn) is FunctionType and isinstance(fn.__module__, str):
        module = _modules.get(fn.__module__)
        namespace = getattr(module, "__dict__", None)
        if namespace is not None and namespace.get(fn.__qualname__) is fn:  # a dotted qualname never is
            if len(_functions) >= _MAX_FUNCTIONS:
                _functions.clear()
            _functions[ref] = fn, fn.__module__, module, namespace, fn.__qualname__
    return fn
