"""The Celery app module of the tests' worker: ``celery -A cworker:capp worker``.

``TASKMW_CELERY_URL`` is the Redis URL; ``TASKMW_ACKS_LATE=0`` makes a task
whose pool process dies finish ``lost`` instead of running again;
``TASKMW_TIME_LIMIT`` is the tasks' hard time limit (seconds).
"""

import os

import cjobs
import taskmw_celery

capp = cjobs.make_app(os.environ["TASKMW_CELERY_URL"])
taskmw_celery.install(
    capp,
    plugins=[cjobs.Recorder(), cjobs.Services()],
    listeners=cjobs.LISTENERS,
    acks_late=os.environ.get("TASKMW_ACKS_LATE", "1") == "1",
    time_limit=float(os.environ.get("TASKMW_TIME_LIMIT", "120")),
)
