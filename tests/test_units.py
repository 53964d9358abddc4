"""Unit tests without a pool: serialization, events, listeners' validation,
middleware detection."""

from __future__ import annotations

import pickle
import threading
from typing import Any

import cloudpickle
import pytest

import taskmw
from taskmw import (
    ASGITaskMiddleware,
    ServiceTask,
    Task,
    TaskError,
    TaskFailed,
    TaskFinishEvent,
    TaskMiddleware,
    WSGITaskMiddleware,
    _codec,
    deferred,
    records,
)
from taskmw.listeners import Dispatcher
from taskmw.records import FinishRecord


def module_function(x: int) -> int:
    return x + 1


def test_module_functions_travel_by_reference_with_plain_pickle() -> None:
    payload = _codec.encode_call(module_function, (1,), {})
    assert payload == pickle.dumps((module_function, (1,), None), 5)
    fn, args, kwargs = _codec.decode(payload)
    assert fn is module_function and args == (1,) and kwargs is None


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


def test_finish_records_round_trip_and_bad_return_values_become_errors() -> None:
    err = TaskError("ValueError", "bad", "Traceback ...")
    ev = FinishRecord.decode(FinishRecord(7, 7, records.ERROR, None, err, 0.5, 1).encode())
    assert ev == FinishRecord(7, 7, records.ERROR, None, err, 0.5, 1)
    ok = FinishRecord.decode(FinishRecord(8, 3, records.OK, {"a": 1}, None, 0.1, 0).encode())
    assert ok.seq == 8 and ok.task_id == 3 and ok.value == {"a": 1} and ok.error is None
    bad = FinishRecord.decode(FinishRecord(9, 9, records.OK, threading.Lock(), None, 0.1, 0).encode())
    assert bad.status == records.ERROR and bad.error is not None
    assert "the return value cannot be pickled: _thread.lock" in bad.error.message
    with pytest.raises(AttributeError):
        ok.status = records.ERROR  # type: ignore[misc]


def test_task_failed_carries_the_event() -> None:
    ev = TaskFinishEvent(3, "error", None, TaskError("KeyError", "'k'", "Traceback: here"), 0.0, 0)
    exc = TaskFailed(ev)
    assert exc.event is ev and "task 3 finished 'error': KeyError: 'k'" in str(exc) and "Traceback: here" in str(exc)


def test_task_and_service_task_pickle_and_validate() -> None:
    t = pickle.loads(pickle.dumps(Task(module_function, 1)))
    assert t() == 2
    s = pickle.loads(pickle.dumps(ServiceTask("mailer", "to", subject="x")))
    assert (s.name, s.args, s.kwargs) == ("mailer", ("to",), {"subject": "x"})
    with pytest.raises(TypeError, match="needs a callable"):
        Task(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="non-empty str"):
        ServiceTask("")
    with pytest.raises(TypeError, match="needs a service name"):
        deferred(module_function, "")


def test_dispatcher_validates_its_map() -> None:
    with pytest.raises(TypeError, match="keys must be classes"):
        Dispatcher({"Signup": [module_function]})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="must be a list"):
        Dispatcher({int: "svc"})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="neither callable nor a service name"):
        Dispatcher({int: [3]})  # type: ignore[list-item]


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    return [b""]


async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
    pass


class AsgiClass:
    config = {"debug": True}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        pass


def test_middleware_detects_the_interface_and_shares_a_given_pool() -> None:
    w = TaskMiddleware(wsgi_app, task_workers=1, entrypoints=False)
    try:
        assert isinstance(w, WSGITaskMiddleware) and not isinstance(w, ASGITaskMiddleware)
        a = TaskMiddleware(asgi_app, server=w.server)
        c = TaskMiddleware(AsgiClass(), server=w.server)
        assert isinstance(a, ASGITaskMiddleware) and isinstance(c, ASGITaskMiddleware)
        assert a.server is w.server and c.config == {"debug": True}  # attributes of the wrapped app
        import inspect

        assert inspect.iscoroutinefunction(type(a).__call__)  # what uvicorn checks for ASGI 3
        with pytest.raises(TypeError):
            a()  # type: ignore[call-arg]  # uvicorn's factory probe must fail, so it uses the app as is
        with pytest.raises(ValueError, match="interface must be"):
            TaskMiddleware(wsgi_app, interface="cgi")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="either server= or the settings"):
            TaskMiddleware(wsgi_app, server=w.server, queue_timeout=1)
    finally:
        w.close()


def test_unknown_backend_names_the_installed_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"backend must be one of 'local'.*got 'nope'"):
        taskmw.TaskServer(1, backend="nope")
    monkeypatch.setenv("TASKMW_BACKEND", "from-env")
    with pytest.raises(ValueError, match="got 'from-env'"):
        taskmw.TaskServer(1)


def test_the_cli_table_and_every_backend_share_one_settings_type() -> None:
    """``taskmw start``'s pool options default to the pool's own defaults,
    and every backend checks settings the same way (taskmw.settings)."""
    from taskmw import config
    from taskmw.settings import Settings

    for opt in config.OPTIONS:
        if opt.pool:
            assert opt.default == Settings.default(config.pool_name(opt)), opt.name
    for backend in ("local", "eager"):
        with pytest.raises(ValueError, match="queue_timeout must be a number of seconds >= 0, got -1"):
            taskmw.create_server(1, backend=backend, queue_timeout=-1)
