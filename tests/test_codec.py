"""How a task is pickled (:mod:`taskmw._codec`): module functions by
reference with plain pickle, lambdas, closures and ``__main__`` by value,
and what cannot be pickled named.
"""

from __future__ import annotations

import gc
import importlib
import pickle
import sys
import threading
import weakref
from pathlib import Path
from types import ModuleType
from typing import Any

import cloudpickle
import pytest
from helpers import WAIT, module_function

from taskmw import ServiceTask, TaskServer, _codec


def test_module_functions_travel_by_reference_with_plain_pickle() -> None:
    payload = _codec.encode_call(module_function, (1,), {})
    assert payload == pickle.dumps((module_function, (1,), None), 5)
    fn, args, kwargs = _codec.decode(payload)
    assert fn is module_function and args == (1,) and kwargs is None


def test_a_plain_function_call_keeps_the_function_pickled_once() -> None:
    """task()'s fast path: the function's reference, pickled once and kept,
    then the arguments; it decodes to the same call (repeated arguments
    too: each part has its own memo), and the record's repr reads it."""
    shared = [1, 2]
    payload = _codec.encode_function_call(module_function, (shared, shared, "x"), {"k": shared})
    assert payload == _codec.encode_function_call(module_function, (shared, shared, "x"), {"k": shared})
    assert _codec.decode_parts(payload) is not None
    fn, args, kwargs = _codec.decode(payload)
    assert fn is module_function and args == ([1, 2], [1, 2], "x") and kwargs == {"k": [1, 2]}
    assert args[0] is args[1] is kwargs["k"]
    assert _codec.decode_parts(_codec.encode_call(module_function, (1,), {})) is None
    for size in (_codec._COPY_BELOW - 60, _codec._COPY_BELOW, 1 << 20):  # arguments copied, then viewed
        big = b"b" * size
        assert _codec.decode(_codec.encode_function_call(module_function, (big,), {"k": 1})) == (
            module_function,
            (big,),
            {"k": 1},
        )


def test_a_plain_function_call_falls_back_when_it_cannot_go_by_reference() -> None:
    """A function of ``__main__``, or an argument of ``__main__``, goes by
    value as a one-part payload; unpicklable arguments are still named."""
    ns: dict[str, Any] = {"__name__": "__main__"}
    exec("def f(x):\n    return x\nclass C:\n    pass\n", ns)
    for fn, args in ((ns["f"], (1,)), (module_function, (ns["C"](),))):
        payload = _codec.encode_function_call(fn, args, {})
        assert _codec.decode_parts(payload) is None and b"cloudpickle" in payload
        got_fn, got_args, _ = _codec.decode(payload)
        assert type(got_args[0]).__name__ == type(args[0]).__name__
    with pytest.raises(TypeError, match=r"task argument 0 cannot be pickled: _thread.lock"):
        _codec.encode_function_call(module_function, (threading.Lock(),), {})


def test_lambdas_and_closures_travel_by_value() -> None:
    n = 41
    payload = _codec.encode_call(lambda x: x + n, (1,), {"y": 2})
    with pytest.raises(Exception):  # noqa: B017 - plain pickle cannot carry it
        pickle.dumps(lambda x: x + n)
    fn, args, kwargs = _codec.decode(payload)
    assert fn(*args) == 42 and kwargs == {"y": 2}


def test_objects_of_main_go_by_value() -> None:
    ns: dict[str, Any] = {"__name__": "__main__"}
    exec("def f():\n    return 'from main'\n", ns)
    payload = _codec.dumps(ns["f"])
    assert b"cloudpickle" in payload  # by value, not as a reference to __main__.f
    assert cloudpickle.loads(payload)() == "from main"


def test_unpicklable_parts_are_named() -> None:
    lock = threading.Lock()
    with pytest.raises(TypeError, match=r"task argument 0 cannot be pickled: _thread.lock"):
        _codec.encode_call(module_function, (lock,), {})
    with pytest.raises(TypeError, match=r"task keyword argument 'conn'"):
        _codec.encode_call(module_function, (), {"conn": lock})
    with pytest.raises(TypeError, match=r"task argument 1"):
        _codec.encode_data(ServiceTask("svc", 1, lock))
    with pytest.raises(TypeError, match=r"the task data cannot be pickled"):
        _codec.encode_data(lock)


class _Holder:
    @staticmethod
    def a_rather_long_method_name_so_that_the_name_is_cut_at_forty_eight_bytes() -> None:
        """A function pickled by reference under a dotted qualname."""


def test_the_name_of_a_queued_call_is_read_from_its_payload_without_unpickling() -> None:
    """What status() shows for a queued task whose name only its record in
    the queue holds: the same name task() would record, from the payload's
    first bytes, for two-part payloads only."""
    from taskmw.tasktable import task_name_field

    long_one = _Holder.a_rather_long_method_name_so_that_the_name_is_cut_at_forty_eight_bytes
    for fn in (module_function, long_one, pickle.dumps):
        payload = _codec.encode_function_call(fn, (b"x" * 100,), {"k": 1})
        name = _codec.call_name(payload[:128])
        assert name is not None and task_name_field(fn).decode() == name.encode()[:48].decode()
        assert _codec.call_name(payload) == name
    assert _codec.call_name(_codec.encode_function_call(long_one, (), {})[:40]) is None  # cut before 48 bytes of it
    assert _codec.call_name(_codec.encode_call(module_function, (1,), {})) is None  # one pickle: not this form
    assert _codec.call_name(_codec.encode_function_call(lambda: 1, (), {})) is None  # by value
    assert _codec.call_name(b"\x01\x05\x00\x80\x05(garbage") is None
    assert _codec.call_name(b"") is None


def _write_module(directory: Path, name: str, body: str) -> ModuleType:
    (directory / f"{name}.py").write_text(body)
    importlib.invalidate_caches()
    return importlib.import_module(name)


def test_a_function_read_from_a_call_is_kept_only_while_its_module_still_holds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The function of a two-part call is looked up once and kept; a name
    rebound, a module reloaded or imported anew, is looked up again (as
    unpickling it would), and what is kept stays bounded."""
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("taskmw_kept_fn", "taskmw_many_fns"):  # none left imported after the test
        monkeypatch.setitem(sys.modules, name, None)
        monkeypatch.delitem(sys.modules, name)
    mod = _write_module(tmp_path, "taskmw_kept_fn", "def f():\n    return 'first'\n")
    payload = _codec.encode_function_call(mod.f, (), {})
    first = mod.f
    assert _codec.decode(payload)[0] is first and _codec.decode(payload)[0] is first

    def other() -> str:
        return "rebound"

    monkeypatch.setattr(mod, "f", other)
    assert _codec.decode(payload)[0] is other
    monkeypatch.setattr(mod, "f", first)
    assert _codec.decode(payload)[0] is first

    (tmp_path / "taskmw_kept_fn.py").write_text("def f():\n    return 'reloaded'\n")
    importlib.reload(mod)
    assert _codec.decode(payload)[0]() == "reloaded"

    (tmp_path / "taskmw_kept_fn.py").write_text("def f():\n    return 'anew'\n")
    del sys.modules["taskmw_kept_fn"]
    importlib.invalidate_caches()
    assert _codec.decode(payload)[0]() == "anew"  # a new module object, its own namespace

    many = _write_module(tmp_path, "taskmw_many_fns", "".join(f"def f{i}():\n    return {i}\n" for i in range(600)))
    for i in range(600):
        fn = getattr(many, f"f{i}")
        assert _codec.decode(_codec.encode_function_call(fn, (), {}))[0] is fn
        assert len(_codec._functions) <= _codec._MAX_FUNCTIONS
    for i in (0, 599):
        fn = getattr(many, f"f{i}")
        assert _codec.decode(_codec.encode_function_call(fn, (), {}))[0]() == i


class _Captured:
    """Something a closure captures (weakly referenceable)."""


def test_a_closure_queued_by_task_or_taskwait_is_not_kept_by_the_queuing_process() -> None:
    """A nested function (a closure made per request) goes by value and is
    not remembered as such: once its task finished and the caller dropped
    it, it and what it captured are freed (it was kept, with what it held,
    until 4096 others had been queued)."""
    with TaskServer(1, entrypoints=False) as server:
        held: list[weakref.ref[_Captured]] = []
        for waits in (False, True):
            captured = _Captured()
            held.append(weakref.ref(captured))

            def work(value: _Captured = captured) -> str:
                return type(value).__name__

            if waits:
                assert server.taskwait(work, timeout=WAIT) == "_Captured"
            else:
                assert server.result(server.task(work), timeout=WAIT) == "_Captured"
            del work, captured
        gc.collect()
    assert [ref() for ref in held] == [None, None]
