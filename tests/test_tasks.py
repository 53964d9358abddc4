"""What a user queues (:mod:`taskmw.tasks`): ``Task`` and ``ServiceTask``,
``deferred`` listeners, ``@task`` functions and ``current_server()``.
"""

from __future__ import annotations

import pickle

import pytest
from helpers import FinishLog, double, in_child, module_function, welcome

from taskmw import ServiceTask, Task, TaskServer, current_server, deferred


@deferred("mail.send")
def send_mail(to: str) -> tuple[str, int | None]:
    return f"sent to {to}", current_server().worker_id


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


def test_deferred_listener_runs_in_the_worker_once(pool: TaskServer, finishes: FinishLog) -> None:
    task_id = send_mail("bob")  # queues a ServiceTask on current_server()
    ev = finishes.wait([task_id])[task_id]
    assert ev.status == "ok" and ev.return_value[0] == "sent to bob" and ev.return_value[1] in (0, 1)
    assert send_mail.listener("x") == ("sent to x", None)  # the real listener, run here
    with pytest.raises(ValueError, match="already deferred"):
        deferred(welcome, "mail.send")


def test_task_delay_uses_the_current_server(pool: TaskServer, finishes: FinishLog) -> None:
    task_id = double.delay(4)
    assert finishes.wait([task_id])[task_id].return_value == 8
    assert double(5) == 10


def test_no_server_means_a_clear_error() -> None:
    code = in_child(lambda: _no_server_message())
    assert code == 0


def _no_server_message() -> None:
    from taskmw import tasks

    tasks._set_default(None)
    with pytest.raises(RuntimeError, match="no taskmw pool in this process"):
        current_server()
