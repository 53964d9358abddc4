"""End-to-end tests: real gunicorn/uvicorn servers running the apps in ``apps/``."""
