"""taskmw-celery: taskmw tasks run by Celery workers instead of the local pool.

In the module that defines the Celery app (imported by the workers, and by
the web processes if they like)::

    from celery import Celery
    import taskmw_celery

    capp = Celery("myapp", broker="redis://127.0.0.1:6379/0", backend="redis://127.0.0.1:6379/0")
    taskmw_celery.install(capp)                 # then: celery -A myapp.worker:capp worker

In the web app, one setting changes::

    app = TaskMiddleware(app, backend="celery", celery_app=capp)

``server.task(...)`` then sends the task to Celery (by name: the web side
imports no worker code), returns an int id at once, and its finish comes
back, from Celery's Redis result backend, to the ``on_finish`` hooks of the
process that sent it. See README's Celery section for the guarantees.
"""

from taskmw_celery.server import CeleryTransport
from taskmw_celery.settings import TASK_NAME, configure
from taskmw_celery.worker import install

__all__ = ["TASK_NAME", "CeleryTransport", "configure", "install"]
