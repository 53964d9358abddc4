"""A script that uses a pool and knows nothing of logging: the logging
plugin's tests run it in a subprocess and read its stderr.

It runs a task that succeeds, one that raises, one that kills its worker
(the worker is replaced) and one more, then prints (stdout, one JSON line)
its pid, the task ids and statuses, and the pids of its pool's processes.
"""

from __future__ import annotations

import json
import os
import signal

import taskmw
from taskmw.testing import pool_processes


def add(a: int, b: int) -> int:
    return a + b


def boom() -> None:
    raise ValueError("bad input")


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    with taskmw.TaskServer(1) as server:
        pids = pool_processes(server)
        events = server.taskwait_multi([taskmw.Task(add, 1, 2)], timeout=20)
        events += server.taskwait_multi([boom], timeout=20)
        events += server.taskwait_multi([die], timeout=20)
        events += server.taskwait_multi([taskmw.Task(add, 3, 4)], timeout=20)
        pids |= pool_processes(server)
    out = {
        "pid": os.getpid(),
        "tasks": [[e.task_id, e.status] if e else None for e in events],
        "pool": sorted(pids),
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
