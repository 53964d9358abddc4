"""Task workers never use a database connection of the process that built
the pool (the plugin ``django`` of :mod:`taskmw.contrib.django.plugin`)."""

from __future__ import annotations

import gc
import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest
from django.db import connection, connections, transaction
from helpers import WAIT, in_child
from orders.models import Order

from taskmw import TaskServer
from taskmw.contrib.django.plugin import close_inherited_connections


def connection_in_worker() -> dict[str, Any]:
    """A task: what the default connection looks like in the task worker."""
    conn = connections["default"]
    state: dict[str, Any] = {
        "wrapper": id(conn),
        "raw_before": None if conn.connection is None else id(conn.connection),
        "in_atomic_block": conn.in_atomic_block,
        "orders": Order.objects.count(),
    }
    state["raw"] = id(conn.connection)
    return state


def test_the_plugin_is_installed() -> None:
    with TaskServer(1, backend="eager") as server:
        assert server.plugins.has_plugin("django")


def test_a_task_worker_opens_its_own_connection_outside_the_parents_transaction(db: Path) -> None:
    Order.objects.create(ref="c1", item="committed")
    with transaction.atomic():
        assert Order.objects.count() == 1
        parent = {"wrapper": id(connections["default"]), "raw": id(connection.connection)}
        assert connection.in_atomic_block
        # Built while this process holds an open connection inside a transaction:
        with TaskServer(1, backend="local", shutdown_timeout=10) as server:
            state = server.taskwait(connection_in_worker, timeout=WAIT)
        # This process's connection and transaction are intact.
        assert connection.in_atomic_block and id(connection.connection) == parent["raw"]
        Order.objects.filter(ref="c1").update(item="after the pool")
    assert Order.objects.get(ref="c1").item == "after the pool"
    assert state["raw_before"] is None, "the worker still had the parent's DB-API connection"
    assert state["wrapper"] != parent["wrapper"]
    assert state["raw"] != parent["raw"]
    assert state["in_atomic_block"] is False
    assert state["orders"] == 1  # its own connection: sees what is committed, nothing else


def test_the_plugin_can_be_turned_off(db: Path) -> None:
    """The same pool without the plugin hands the worker the parent's connection
    (what the plugin prevents)."""
    Order.objects.count()
    with transaction.atomic():
        Order.objects.count()
        parent_raw = id(connection.connection)
        with TaskServer(1, backend="local", shutdown_timeout=10, disable_plugins=["django"]) as server:
            state = server.taskwait(connection_in_worker, timeout=WAIT)
    assert (state["raw_before"], state["in_atomic_block"]) == (parent_raw, True)


class FakeSocketConnection:
    """A DB-API connection over a socket whose ``close()`` sends a goodbye
    (as libpq's Terminate message does)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        os.write(self.sock.fileno(), b"goodbye")


def test_an_inherited_socket_is_detached_without_a_word_to_the_server(db: Path) -> None:
    """In a forked child, close_inherited_connections replaces the socket by
    /dev/null: nothing the child does (closing, finalizing) reaches the peer,
    and the parent's end still works."""
    ours, server_end = socket.socketpair()
    conn = connections["default"]
    conn.ensure_connection()
    real = conn.connection
    fake = conn.connection = FakeSocketConnection(ours)
    try:

        def child() -> None:
            fd = ours.fileno()
            assert close_inherited_connections() == 1
            assert stat.S_ISCHR(os.fstat(fd).st_mode), "the socket was not replaced by /dev/null"
            assert connections["default"] is not conn  # a fresh wrapper
            assert connections["default"].connection is None
            fake.close()  # what a driver's finalizer would do
            gc.collect()

        assert in_child(child) == 0
    finally:
        conn.connection = real
    ours.send(b"ping")
    assert server_end.recv(100) == b"ping"
    server_end.setblocking(False)
    with pytest.raises(BlockingIOError):
        server_end.recv(100)  # the child's "goodbye" never came
    ours.close()
    server_end.close()
