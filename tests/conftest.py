"""Fixtures shared by the test modules of ``tests/``; the helpers they
import (``WAIT``, ``wait_until``, the tasks, ...) are in ``helpers.py``.

Nothing here is autouse: the folders below (``e2e``, ``cli``, ``plugins``,
...) see these fixtures but only get them by asking.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import FinishLog, pids_gone, pool_processes, wait_until, zombies_of

from taskmw import TaskServer


@pytest.fixture
def finishes() -> FinishLog:
    """A finish recorder to register with a pool (``plugins=[finishes]``)."""
    return FinishLog()


@pytest.fixture
def pool(finishes: FinishLog) -> Iterator[TaskServer]:
    """A 2-worker pool reporting to ``finishes``; checked to leave no process."""
    server = TaskServer(2, plugins=[finishes], queue_timeout=5.0, shutdown_timeout=10.0)
    pids = pool_processes(server)
    try:
        yield server
    finally:
        server.close()
        assert pids_gone(pids | pool_processes(server)), "pool processes left behind"


def descendants() -> set[int]:
    """Every living process below this one (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        if fields[0] != b"Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    found: set[int] = set()
    todo = [os.getpid()]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


_PR_SET_CHILD_SUBREAPER = 36


@pytest.fixture
def no_process_left() -> Iterator[None]:
    """No process may outlive the test: orphans (workers whose supervisor was
    killed) are re-parented to this process, so they count too. For fault
    injection tests: ``pytest.mark.usefixtures("no_process_left")``."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    before = descendants()
    yield
    wait_until(lambda: not descendants() - before, 10, interval=0.05)
    left = descendants() - before
    for pid in zombies_of(os.getpid()):
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:  # reaped meanwhile by a pool's builder (this process, a subreaper)
            pass
    assert left == set(), "the test left processes behind"


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[str]:
    """A 2 MiB tmpfs (a full /dev/shm in miniature: writes past it fail with ENOSPC)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "shm"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        yield str(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)
