"""The ASGI application: Django's handler in TaskMiddleware(**settings.TASKMW)."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")

from taskmw.contrib.django import get_asgi_application  # noqa: E402

application = get_asgi_application()
