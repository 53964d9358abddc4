"""The Celery app of the Celery benchmark (``bench/test_celery.py``), served
by ``celery -A celery_app:capp worker --pool prefork -c 2`` with ``bench/``
and ``bench/apps`` on ``PYTHONPATH``; ``TASKMW_CELERY_URL`` is the Redis URL.

The same app carries both ways of running :func:`tasks_harness.trivial`:
taskmw's generic task (``install``) and a plain Celery task (``plain``,
called with ``.delay()``), so both run on the same worker with the same
settings.
"""

import os

import taskmw_celery
from celery import Celery
from tasks_harness import trivial

capp = Celery("taskmw-bench", broker=os.environ["TASKMW_CELERY_URL"], backend=os.environ["TASKMW_CELERY_URL"],
              set_as_current=False)  # fmt: skip
capp.conf.update(broker_connection_retry_on_startup=True, result_expires=600, worker_hijack_root_logger=False)
taskmw_celery.install(capp, entrypoints=False)
plain = capp.task(name="bench.trivial")(trivial)
