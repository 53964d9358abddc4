"""A Celery app with a taskmw periodic task, for ``celery -A cbeat:capp
worker`` and ``celery -A cbeat:capp beat``: ``beat_tick`` runs every second
(through beat) and appends a line to ``$TASKMW_E2E_DIR/beat-runs.txt``."""

import os
import time

import cjobs
import taskmw_celery

import taskmw

capp = cjobs.make_app(os.environ["TASKMW_CELERY_URL"])


@taskmw.periodic(every=1)
def beat_tick() -> None:
    with open(os.path.join(os.environ["TASKMW_E2E_DIR"], "beat-runs.txt"), "a") as f:
        f.write(f"{time.time()} {os.getpid()}\n")


taskmw_celery.install(capp, time_limit=120.0)
