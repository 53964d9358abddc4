"""Tasks queued inside a transaction run after it commits, never after a
rollback: ``fn.delay_on_commit`` and ``task_on_commit``; signal receivers
made by ``taskmw.contrib.django.receiver`` run in a task worker."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection, transaction
from django.dispatch import Signal
from helpers import wait_until
from orders.models import Event, Order
from orders.tasks import ship_order

from taskmw import Task, TaskServer
from taskmw.contrib.django import connect, task_on_commit
from taskmw.testing import Finishes, close_pool


class Rollback(Exception):
    pass


def noop() -> None:
    return None


@pytest.fixture
def pool(db: Path) -> Iterator[tuple[TaskServer, Finishes]]:
    """One task worker (tasks run in the order queued), reporting to a Finishes."""
    finishes = Finishes()
    server = TaskServer(1, backend="local", plugins=[finishes], queue_timeout=10, shutdown_timeout=10)
    try:
        yield server, finishes
    finally:
        close_pool(server)


def names(finishes: Finishes) -> list[str]:
    return [e.name for _, e in sorted(finishes.events.items())]


def test_a_task_queued_in_a_transaction_runs_after_commit(pool: tuple[TaskServer, Finishes]) -> None:
    server, finishes = pool
    with transaction.atomic():
        Order.objects.create(ref="t1", item="book")  # post_save: the shop's receiver, on commit too
        ship_order.delay_on_commit("t1")
        # One worker, in order: had anything been queued, it would have run before this.
        sentinel = server.task(noop)
        finishes.wait([sentinel])
        assert names(finishes) == ["test_django_on_commit.noop"]
    assert wait_until(lambda: len(finishes.events) == 3), finishes.events
    by_name = {e.name: e for e in finishes.events.values()}
    assert by_name["orders.tasks.ship_order"].ok, by_name["orders.tasks.ship_order"].error
    assert by_name["service:django.signal:orders.receivers.order_saved"].ok
    order = Order.objects.get(ref="t1")
    assert order.status == "shipped" and order.shipped_by not in (None, os.getpid())
    assert wait_until(lambda: Event.objects.filter(ref="t1", kind="created").exists())


def test_a_task_queued_in_a_rolled_back_transaction_never_runs(pool: tuple[TaskServer, Finishes]) -> None:
    server, finishes = pool
    with pytest.raises(Rollback), transaction.atomic():
        Order.objects.create(ref="t2", item="book")
        ship_order.delay_on_commit("t2")
        task_on_commit(ship_order, "t2")
        raise Rollback
    with transaction.atomic():  # an outer transaction that commits, an inner one that rolls back
        with pytest.raises(Rollback), transaction.atomic():
            ship_order.delay_on_commit("t2")
            raise Rollback
    sentinel = server.task(noop)
    finishes.wait([sentinel])
    assert names(finishes) == ["test_django_on_commit.noop"]
    assert not Event.objects.filter(ref="t2").exists()


def test_outside_a_transaction_it_is_queued_at_once_with_any_task_options(pool: tuple[TaskServer, Finishes]) -> None:
    server, finishes = pool
    assert connection.get_autocommit()
    task_on_commit(Task(pow, 2, 10), task_timeout=10, retries=1)
    assert wait_until(lambda: len(finishes.events) == 1)
    (event,) = finishes.events.values()
    assert event.ok and event.return_value == 1024


def test_eager_mode_runs_it_at_commit_and_leaves_the_callers_transaction_alone(db: Path, taskmw_eager: Any) -> None:
    with transaction.atomic():
        Order.objects.create(ref="e1", item="book")
        ship_order.delay_on_commit("e1")
        assert Order.objects.get(ref="e1").status == "new"  # not yet
        assert taskmw_eager.taskwait(Order.objects.count) == 1  # inline, in this transaction
        assert connection.in_atomic_block  # the django plugin did not close it
    order = Order.objects.get(ref="e1")
    assert order.status == "shipped" and order.shipped_by == os.getpid()
    assert list(Event.objects.filter(ref="e1").values_list("kind", flat=True).order_by("pk")) == ["created", "ship"]


order_shipped = Signal()
"""A signal of this module's own (a ``Signal`` cannot be pickled either)."""


def record_signal(**kwargs: Any) -> dict[str, Any]:
    """A listener: what it was called with."""
    return {"keys": sorted(kwargs), "sender": kwargs["sender"].__name__, "ref": kwargs["instance"].ref,
            "pid": os.getpid()}  # fmt: skip


# Connected at import, as an app does: before any pool is forked.
RECEIVER = connect(order_shipped, record_signal, "test.record_signal", sender=Order, on_commit=False)


def test_a_signal_receiver_runs_in_a_task_worker_without_the_signal(pool: tuple[TaskServer, Finishes]) -> None:
    server, finishes = pool
    order = Order.objects.create(ref="s1", item="book")
    responses = order_shipped.send(sender=Order, instance=order, using="default")
    (task_id,) = [r for fn, r in responses if fn is RECEIVER]
    event = finishes.wait([task_id])[task_id]
    assert event.ok, event.error
    assert event.return_value["keys"] == ["instance", "sender", "using"]  # no "signal"
    assert event.return_value["sender"] == "Order" and event.return_value["ref"] == "s1"
    assert event.return_value["pid"] != os.getpid()


def test_a_signal_receiver_waits_for_the_commit(pool: tuple[TaskServer, Finishes]) -> None:
    """The shop's post_save receiver (taskmw.contrib.django.receiver) in a
    transaction: nothing before commit, nothing after a rollback."""
    server, finishes = pool
    with pytest.raises(Rollback), transaction.atomic():
        Order.objects.create(ref="s2", item="book")
        raise Rollback
    with transaction.atomic():
        Order.objects.create(ref="s3", item="book")
        sentinel = server.task(noop)
        finishes.wait([sentinel])
        assert names(finishes) == ["test_django_on_commit.noop"]
    assert wait_until(lambda: len(finishes.events) == 2)
    assert wait_until(lambda: Event.objects.filter(kind="created").exists())
    assert list(Event.objects.values_list("ref", "kind")) == [("s3", "created")]
