"""Django for the tests of ``taskmw.contrib.django``: the example shop
(``examples/django``) with its settings, on an SQLite file in a temporary
directory, migrated once. Configured when this folder is collected (the test
modules import the shop's models).

No ``__init__.py`` here, on purpose: a package named ``django`` would hide
the real one.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("django")

import django  # noqa: E402
from django.conf import settings  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "django"
if str(EXAMPLE) not in sys.path:
    sys.path.insert(0, str(EXAMPLE))

_DB_DIR = tempfile.mkdtemp(prefix="taskmw-django-tests-")
atexit.register(shutil.rmtree, _DB_DIR, True)

if not settings.configured:
    import shop.settings as shop_settings

    values = {k: getattr(shop_settings, k) for k in dir(shop_settings) if k.isupper()}
    db = dict(values["DATABASES"]["default"], NAME=os.path.join(_DB_DIR, "db.sqlite3"))
    values["DATABASES"] = {"default": db}
    settings.configure(**values)
    django.setup()


@pytest.fixture(scope="session")
def django_db() -> Path:
    """The migrated database file."""
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return Path(settings.DATABASES["default"]["NAME"])


@pytest.fixture
def db(django_db: Path) -> Iterator[Path]:
    """An empty shop, with an eager server as this process's pool until the
    test builds its own (saving an order queues the shop's ``post_save``
    receiver on the current pool); this process's connections are closed
    after the test (so no pool built later inherits an open one)."""
    from django.db import connections
    from orders.models import Event, Order

    from taskmw import TaskServer

    with TaskServer(1, backend="eager"):
        Order.objects.all().delete()
        Event.objects.all().delete()
        yield django_db
    connections.close_all()
