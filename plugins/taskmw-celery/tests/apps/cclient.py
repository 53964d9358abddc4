"""The web side's Celery app: only where the broker is (no worker code, no
``install()``): ``TASKMW_CELERY_APP=cclient:capp``."""

import os

import cjobs

capp = cjobs.make_app(os.environ["TASKMW_CELERY_URL"])
