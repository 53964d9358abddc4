"""The Django app ``taskmw.contrib.django`` (label ``taskmw``): the
``manage.py taskmw`` command and a system check of ``settings.TASKMW``."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig  # type: ignore[import-untyped]
from django.core import checks  # type: ignore[import-untyped]


class TaskmwConfig(AppConfig):  # type: ignore[misc]
    name = "taskmw.contrib.django"
    label = "taskmw"
    verbose_name = "taskmw"

    def ready(self) -> None:
        checks.register(check_settings)


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """``manage.py check``: ``TASKMW`` must be a dict whose dotted paths import."""
    from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]

    from taskmw.contrib.django import pool_settings

    try:
        pool_settings()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="taskmw.E001")]
    return []
