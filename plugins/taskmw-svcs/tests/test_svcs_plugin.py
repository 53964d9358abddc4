"""taskmw-svcs, installed with pip: services built in each task worker for
``ServiceTask`` and ``deferred`` listeners, and closed when the worker stops;
with an svcs registry and with a plain dict of factories."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from taskmw import ServiceTask, TaskServer, deferred
from taskmw.testing import Finishes, close_pool

WAIT = 20.0


def welcome(email: str, db: Any = None) -> tuple[str, int | None]:
    """A listener; with the plugin, it gets the worker's database."""
    return f"welcome {email}", db.pid if db is not None else None


send_welcome = deferred(welcome, "svcs.welcome")  # calling it queues ServiceTask("svcs.welcome", ...)


class Connection:
    """Stands for a database connection: records its opening and closing."""

    def __init__(self, journal: Path) -> None:
        self.journal = journal
        self.pid = os.getpid()
        self._write("open")

    def close(self) -> None:
        self._write("close")

    def _write(self, what: str) -> None:
        with open(self.journal, "a") as f:
            f.write(f"{what} {os.getpid()}\n")


def svcs_plugin(journal: Path) -> Any:
    import svcs

    from taskmw_svcs import SvcsServices

    def connect() -> Iterator[Connection]:
        conn = Connection(journal)
        yield conn
        conn.close()  # svcs runs this when the worker's container closes

    def make_welcome(container: svcs.Container) -> Callable[..., Any]:
        return functools.partial(welcome, db=container.get("db"))

    registry = svcs.Registry()
    registry.register_factory("db", connect)
    registry.register_factory("svcs.welcome", make_welcome)
    return SvcsServices(registry)


def dict_plugin(journal: Path) -> Any:
    from taskmw_svcs import DictServices

    return DictServices(
        {
            "db": lambda: Connection(journal),
            "svcs.welcome": lambda services: functools.partial(welcome, db=services.get("db")),
        }
    )


@pytest.mark.parametrize("make_plugin", [svcs_plugin, dict_plugin], ids=["svcs", "dict"])
def test_services_are_built_in_the_worker_and_closed_when_it_stops(
    tmp_path: Path, make_plugin: Callable[[Path], Any]
) -> None:
    journal = tmp_path / "journal"
    finishes = Finishes()
    pool = TaskServer(1, backend="local", plugins=[make_plugin(journal), finishes])
    try:
        worker = pool.taskwait(os.getpid, timeout=WAIT)
        # a ServiceTask names the service; the plugin builds it with the worker's database
        assert pool.taskwait(ServiceTask("svcs.welcome", "a@example.com"), timeout=WAIT) == (
            "welcome a@example.com",
            worker,
        )
        # a deferred listener, called here, runs in the worker with the same database
        task_id = send_welcome("b@example.com")
        event = finishes.wait([task_id])[task_id]
        assert event.ok and event.return_value == ("welcome b@example.com", worker), event
        assert journal.read_text() == f"open {worker}\n"  # built once in the worker, not closed yet
    finally:
        close_pool(pool)
    assert journal.read_text() == f"open {worker}\nclose {worker}\n"  # closed on worker stop


def test_without_the_plugin_the_listener_runs_bare(tmp_path: Path) -> None:
    with TaskServer(1, backend="eager") as eager:  # (eager: the same hooks, in this process)
        assert eager.taskwait(ServiceTask("svcs.welcome", "c@example.com")) == ("welcome c@example.com", None)


def test_dict_services_reject_bad_factories_and_name_what_is_missing() -> None:
    from taskmw_svcs import DictServices

    with pytest.raises(TypeError, match="the factory of 'db' is not callable"):
        DictServices({"db": 3})  # type: ignore[dict-item]
    services = DictServices({"db": dict})
    with pytest.raises(RuntimeError, match="outside a task worker"):
        services.get("db")
    with TaskServer(1, backend="eager", plugins=[services]):
        assert services.get("db") == {}
        with pytest.raises(KeyError, match="no service called 'cache'; known: db"):
            services.get("cache")
