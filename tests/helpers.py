"""What the test modules of ``tests/`` share: the wait bound, a bounded
polling wait, the processes of a pool, a finish recorder that keeps every
delivery, and the tasks several modules queue. The fixtures are in
``conftest.py``.

Import as ``from helpers import ...`` (one way, everywhere): ``tests/`` is
not a package, so pytest puts it on ``sys.path`` (its default ``prepend``
import mode), as it does for every test module and ``conftest.py`` here.

Tasks are module-level functions: they travel by reference
(``helpers.add``), and the workers, forked from the test process, have this
module already.
"""

from __future__ import annotations

import ctypes
import faulthandler
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import taskmw
from taskmw import TaskServer, hookimpl
from taskmw._proc import alive
from taskmw.events import TaskFinishEvent
from taskmw.local import LocalTransport
from taskmw.pool import Pool
from taskmw.testing import Finishes, pool_processes

__all__ = [
    "WAIT",
    "FinishLog",
    "Finishes",
    "Signup",
    "VipSignup",
    "add",
    "alive",
    "boom",
    "die",
    "double",
    "fork_call",
    "in_child",
    "local_pool",
    "module_function",
    "pids_gone",
    "pool_processes",
    "reap",
    "sleep_then",
    "wait_for_file",
    "wait_until",
    "welcome",
    "whoami",
    "worker_pids",
    "zombies_of",
]

WAIT = 20.0
"""Seconds any single wait of a test may take."""


# -- waiting ---------------------------------------------------------------------------


def wait_until(predicate: Callable[[], object], timeout: float = WAIT, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true (returns True) or ``timeout``
    seconds have passed (returns False): a bounded wait for something to
    happen, instead of sleeping and hoping it did."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def pids_gone(pids: set[int], timeout: float = 10.0) -> bool:
    """Wait until none of ``pids`` is running (gone or a zombie)."""
    return wait_until(lambda: not any(alive(p) for p in pids), timeout)


# -- a pool's processes ------------------------------------------------------------------


def worker_pids(server: TaskServer) -> list[int]:
    """The pids of the pool's workers, once every one has started."""
    assert wait_until(lambda: all(w["state"] == "idle" for w in server.stats()["workers"]))
    return [w["pid"] for w in server.stats()["workers"]]


def zombies_of(parent: int) -> list[int]:
    """The pids of the zombies whose parent is ``parent`` (from /proc)."""
    out = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == b"Z" and int(fields[1]) == parent:
            out.append(int(entry))
    return out


def local_pool(server: TaskServer) -> Pool:
    """The shared state of a local pool."""
    assert isinstance(server.transport, LocalTransport)
    return server.transport.pool


# -- forked children -------------------------------------------------------------------


def fork_call(fn: Callable[[], None]) -> int:
    """Run ``fn`` in a forked child (exit code 0 if it returned); returns its pid."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn()
            code = 0
        finally:
            os._exit(code)
    return pid


def reap(pid: int, timeout: float = WAIT) -> int:
    """The exit code of child ``pid`` (SIGKILLed if it runs past ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return -9
        time.sleep(0.01)


def in_child(fn: Callable[[], None], timeout: float = WAIT) -> int:
    """Run ``fn`` in a forked child and return its exit code (SIGKILLed
    after ``timeout`` seconds: -9)."""
    return reap(fork_call(fn), timeout)


# -- finishes ----------------------------------------------------------------------------


class FinishLog(Finishes):
    """:class:`taskmw.testing.Finishes` that also keeps every delivery of each
    task (``deliveries[task_id]``, to check that each came exactly once) and
    the threads and processes they arrived on."""

    def __init__(self) -> None:
        super().__init__()
        self.deliveries: dict[int, list[TaskFinishEvent]] = {}
        self.threads: set[int] = set()
        self.pids: set[int] = set()
        self._lock = threading.Lock()

    @hookimpl
    def on_finish(self, event: TaskFinishEvent) -> None:
        with self._lock:
            self.deliveries.setdefault(event.task_id, []).append(event)
            self.threads.add(threading.get_ident())
            self.pids.add(os.getpid())
        super().on_finish(event)  # last: it wakes the waiters


# -- tasks (module level: they travel by reference) ------------------------------------


def module_function(x: int) -> int:
    return x + 1


def add(a: int, b: int) -> int:
    return a + b


def whoami() -> tuple[int, int]:
    return os.getpid(), os.getppid()


def boom(message: str) -> None:
    raise ValueError(message)


def sleep_then(seconds: float, value: Any = None) -> Any:
    time.sleep(seconds)
    return value


def wait_for_file(path: str, timeout: float = WAIT) -> str:
    """A task that runs until ``path`` exists (a gate the test opens)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.005)
    return path


def die(how: str) -> None:
    """Kill the worker running it: ``sigkill``, ``exit`` or ``segfault``."""
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "exit":
        os._exit(3)
    elif how == "segfault":
        faulthandler.disable()  # pytest's would print this process's stack
        ctypes.string_at(0)


class Signup:
    def __init__(self, email: str) -> None:
        self.email = email


class VipSignup(Signup):
    pass


def welcome(signup: Signup) -> str:
    return f"welcome {signup.email}"


@taskmw.task
def double(x: int) -> int:
    return 2 * x
