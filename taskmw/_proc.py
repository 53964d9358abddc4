"""Facts about other processes (through psutil): one place for every
``/proc`` look-up taskmw makes."""

from __future__ import annotations

import psutil


def alive(pid: int) -> bool:
    """True if a process ``pid`` exists and is not a zombie (one owned by
    another user counts as alive)."""
    if pid <= 0:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def rss_bytes(pid: int) -> int | None:
    """Resident memory of ``pid`` in bytes (``None`` if it is gone or hidden)."""
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def children(pid: int) -> set[int]:
    """The pids of ``pid``'s children (empty if it is gone)."""
    try:
        return {child.pid for child in psutil.Process(pid).children()}
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return set()


def maps_inode(pid: int, inode: int) -> bool:
    """True if ``pid`` has a file with inode number ``inode`` mapped (a memfd
    of the pool: then it is one of the pool's processes, not a stranger that
    got a dead one's pid)."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return any(len(fields) > 4 and fields[4] == str(inode) for fields in map(str.split, f))
    except OSError:
        return False
