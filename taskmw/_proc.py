"""Facts about other processes (through psutil): one place for every
``/proc`` look-up taskmw makes."""

from __future__ import annotations

import ctypes
import os

import psutil

_PR_SET_DUMPABLE = 4


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


def maps_inode(pid: int, inode: int) -> bool | None:
    """True if ``pid`` has a file with inode number ``inode`` mapped (a memfd
    of the pool: then it is one of the pool's processes, not a stranger that
    got a dead one's pid); ``None`` if this process may not read its maps (a
    process that is not dumpable, see :func:`make_undumpable`, unless this
    one is privileged)."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return any(len(fields) > 4 and fields[4] == str(inode) for fields in map(str.split, f))
    except PermissionError:
        return None
    except OSError:
        return False


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (``/proc/<pid>/stat``,
    readable for any process: with the pid, it names one process for good);
    ``None`` if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def make_undumpable() -> None:
    """``prctl(PR_SET_DUMPABLE, 0)`` for this process (and the children it
    forks from now on; ``execve`` resets it): another process of the same
    user, unless privileged (``CAP_SYS_PTRACE``, root), can no longer open
    its files through ``/proc/<pid>/fd``, read its memory, attach a debugger
    or read ``/proc/<pid>/environ``, and it leaves no core dump.

    Raises:
        OSError: the kernel refused (it does not on Linux).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def batch_scheduling() -> None:
    """Put the calling process under ``SCHED_BATCH`` (Linux) if it runs
    under the normal ``SCHED_OTHER``: the kernel then never lets it preempt
    a running process when it wakes (a task worker woken by a task waits for
    the request in progress on its core to yield, instead of cutting in),
    with the same share of the CPU (nice value) as before. Nothing elsewhere."""
    try:
        if os.sched_getscheduler(0) == os.SCHED_OTHER:
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux, or a sandbox that forbids it
        pass
