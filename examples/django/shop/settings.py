"""Settings of the example shop (not for production: the secret key is public).

``SHOP_DB`` (a path) chooses the SQLite database, ``SHOP_TEST_DB`` the one
pytest-django creates for tests; ``SHOP_TASK_WORKERS`` the task workers.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("SHOP_SECRET_KEY", "example-only-not-a-secret")
DEBUG = os.environ.get("SHOP_DEBUG", "") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "taskmw.contrib.django",  # manage.py taskmw, the check of TASKMW
    "orders",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "taskmw.contrib.django.middleware.TaskServerMiddleware",  # request.taskmw
]

ROOT_URLCONF = "shop.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "shop.wsgi.application"  # manage.py taskmw start
ASGI_APPLICATION = "shop.asgi.application"  # manage.py taskmw start --asgi

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("SHOP_DB", str(BASE_DIR / "db.sqlite3")),
        "OPTIONS": {"timeout": 20},  # HTTP and task workers write to the same file
        "TEST": {"NAME": os.environ.get("SHOP_TEST_DB", str(BASE_DIR / "test_db.sqlite3"))},  # a file: see README
    }
}

TASKMW = {  # what TaskMiddleware(app, **TASKMW) takes
    "task_workers": int(os.environ.get("SHOP_TASK_WORKERS", "2")),
    "task_timeout": 60,
    "shutdown_timeout": 10,
}

USE_TZ = True
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
