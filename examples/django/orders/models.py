from django.db import models


class Order(models.Model):
    ref = models.CharField(max_length=64, unique=True)
    item = models.CharField(max_length=100)
    status = models.CharField(max_length=20, default="new")
    shipped_by = models.IntegerField(null=True, blank=True)  # pid of the task worker that shipped it
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.ref} ({self.status})"


class Event(models.Model):
    """What a task did, written by the task worker that ran it."""

    ref = models.CharField(max_length=64, db_index=True)
    kind = models.CharField(max_length=20)
    pid = models.IntegerField()
    at = models.DateTimeField(auto_now_add=True)
