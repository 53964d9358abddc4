"""The WSGI app of the HTTP benchmark (``bench/test_http.py``).

Served by ``gunicorn --preload -w 2 --chdir bench/apps wsgi_app:application``,
so one task pool (2 task workers) serves both HTTP workers. Three routes,
identical but for one line:

* ``/plain`` answers ``ok``;
* ``/queue`` first queues one trivial task (:func:`trivial`, 100 bytes of
  argument) with ``environ["taskmw.server"].task(...)``;
* ``/mpqueue`` first puts the same call on a hand-made
  ``multiprocessing.Queue``, read by 2 consumer processes that run it
  (:func:`_consume`): what an app does without taskmw. The queue and its
  consumers are made when the module is imported, in gunicorn's master
  (``--preload``), before it forks the HTTP workers, as the task pool is.

Each HTTP worker counts the taskmw finishes it receives (:class:`common.FinishCounter`);
the gunicorn config's ``worker_exit`` hook logs the counts; its ``on_exit``
hook stops the consumers (:func:`stop_consumers`), which log what they ran,
so the benchmark can check that every queued task finished.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from common import PAYLOAD, FinishCounter, trivial
from setproctitle import setproctitle

from taskmw import TaskMiddleware

BODY = b"ok\n"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]
CONSUMERS = 2
"""Consumer processes of the hand-made queue (as many as task workers)."""
CONSUMER_TITLE = "taskmw-bench: mpqueue consumer"
"""The consumers' process title: how the benchmark tells their CPU apart."""


def _consume(calls: multiprocessing.Queue, parent: int) -> None:
    """A consumer process: run each ``(fn, args)`` taken from the queue until
    ``None`` (or its parent is gone); then log how many ran."""
    setproctitle(CONSUMER_TITLE)
    done = 0
    while True:
        try:
            call = calls.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:
                break
            continue
        if call is None:
            break
        fn, args = call
        fn(*args)
        done += 1
    print(f"taskmw-bench mpqueue pid={os.getpid()} done={done}", file=sys.stderr, flush=True)


def _fork_consumer() -> int:
    """Fork one consumer (a bare ``os.fork``: the HTTP workers, forked later
    from the same process, must not take it for a child of theirs, as
    ``multiprocessing.Process`` would make them at exit); its pid."""
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            _consume(_calls, parent)
            code = 0
        finally:
            os._exit(code)
    return pid


def stop_consumers(timeout: float = 10.0) -> None:
    """Tell the consumers to stop once the queue is drained, and reap them
    (bounded; gunicorn's master may have reaped them already)."""
    for _ in _consumers:
        _calls.put(None)
    deadline = time.monotonic() + timeout
    left = set(_consumers)
    while left and time.monotonic() < deadline:
        for pid in list(left):
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == 0:
                    continue
            except ChildProcessError:
                pass
            left.discard(pid)
        time.sleep(0.05)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


finishes = FinishCounter()
mpqueue_puts = [0]
"""Calls this HTTP worker put on the hand-made queue."""
_calls: multiprocessing.Queue = multiprocessing.get_context("fork").Queue()
_consumers = [_fork_consumer() for _ in range(CONSUMERS)]


def routes(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    if path == "/queue":
        environ["taskmw.server"].task(trivial, PAYLOAD)
        finishes.queued += 1
    elif path == "/mpqueue":
        _calls.put((trivial, (PAYLOAD,)))
        mpqueue_puts[0] += 1
    elif path != "/plain":
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "0")])
        return [b""]
    start_response("200 OK", HEADERS)
    return [BODY]


application = TaskMiddleware(routes, task_workers=2, plugins=[finishes], entrypoints=False)
