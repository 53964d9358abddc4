import os

from django.db.models.signals import post_save

from orders.models import Event, Order
from taskmw.contrib.django import receiver


@receiver(post_save, sender=Order)
def order_saved(sender: type[Order], instance: Order, created: bool, **kwargs: object) -> None:
    """Runs in a task worker once the save's transaction commits (never if it
    rolls back); gets no ``signal`` argument (it cannot be pickled)."""
    if created:
        Event.objects.create(ref=instance.ref, kind="created", pid=os.getpid())
