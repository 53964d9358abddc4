"""The pytest-django recipe for a project that queues tasks (run in
examples/django: ``python -m pytest``).

- Eager (``taskmw_eager``): tasks run inline, in the test's transaction. A
  ``django_db`` test never commits, so callbacks of ``delay_on_commit`` need
  ``django_capture_on_commit_callbacks(execute=True)``.
- A real pool (``taskmw_pool``): its worker has a connection of its own, so
  it sees only committed data: use ``django_db(transaction=True)`` and an
  SQLite *file* as test database (``DATABASES[...]["TEST"]["NAME"]``; an
  in-memory one is not shared with other processes).
"""

import os
import time

import pytest

from orders.models import Event, Order


@pytest.mark.django_db
def test_an_order_is_shipped_eagerly(taskmw_eager, client, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post("/orders", {"ref": "e1"}).status_code == 201
    order = Order.objects.get(ref="e1")
    assert order.status == "shipped" and order.shipped_by == os.getpid()
    assert set(Event.objects.filter(ref="e1").values_list("kind", flat=True)) == {"created", "ship"}


@pytest.mark.django_db
def test_a_rolled_back_order_is_never_shipped(taskmw_eager, client, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        assert client.post("/orders", {"ref": "e2", "fail": "1"}).status_code == 409
    assert callbacks == [] and not Order.objects.exists() and not Event.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_an_order_is_shipped_by_a_real_task_worker(taskmw_pool, client):
    assert client.post("/orders", {"ref": "r1"}).status_code == 201
    deadline = time.monotonic() + 20
    while Order.objects.get(ref="r1").status != "shipped":
        assert time.monotonic() < deadline, "not shipped within 20s"
        time.sleep(0.05)
    assert Order.objects.get(ref="r1").shipped_by != os.getpid()
