import os

import taskmw
from orders.models import Event, Order


@taskmw.task
def ship_order(ref: str) -> int:
    """Runs in a task worker. Queued with ``delay_on_commit``: the order is
    committed by then (queued with ``delay`` inside the transaction, this
    could run first and raise ``Order.DoesNotExist``)."""
    Event.objects.create(ref=ref, kind="ship", pid=os.getpid())
    order = Order.objects.get(ref=ref)
    order.status = "shipped"
    order.shipped_by = os.getpid()
    order.save(update_fields=["status", "shipped_by"])
    return order.pk
