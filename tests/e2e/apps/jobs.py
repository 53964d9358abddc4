"""The tasks the e2e apps queue. Module-level functions, in their own module,
so that they travel to the task workers by reference (``jobs.add``).

Each run appends one JSON line to ``$TASKMW_E2E_DIR/run-<pid>.jsonl`` (the
pid of the task worker running it), so the tests can count runs and see in
which process each one happened.
"""

from __future__ import annotations

import json
import os
import time


def record(prefix: str, line: dict) -> None:
    """Append ``line`` as one JSON line to ``$TASKMW_E2E_DIR/<prefix>-<pid>.jsonl``.

    One ``open(..., "a")`` per line: O_APPEND writes of a few hundred bytes
    are atomic, and the line is on disk when this returns.
    """
    path = os.path.join(os.environ["TASKMW_E2E_DIR"], f"{prefix}-{os.getpid()}.jsonl")
    data = json.dumps(line, default=repr) + "\n"
    assert len(data) < 4096, "keep e2e record lines short (atomic appends)"
    with open(path, "a", encoding="utf-8") as f:
        f.write(data)
        f.flush()


def add(a: int, b: int, delay: float = 0.0) -> dict:
    pid, ppid = os.getpid(), os.getppid()
    record("run", {"fn": "add", "args": [a, b], "pid": pid, "ppid": ppid, "time": time.time()})
    if delay:
        time.sleep(delay)
    return {"sum": a + b, "pid": pid, "ppid": ppid}


def boom(msg: str) -> None:
    record("run", {"fn": "boom", "args": [msg], "pid": os.getpid(), "ppid": os.getppid(), "time": time.time()})
    raise ValueError(msg)
