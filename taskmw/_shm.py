"""Shared memory that can be handed to another process: a memfd, mapped
``MAP_SHARED``. Forked children share it as they would an anonymous
mapping; a process that did not fork from its maker gets it by receiving
the fd (see :mod:`taskmw._share`)."""

from __future__ import annotations

import mmap
import os
import weakref


def shared_map(name: str, size: int, fd: int | None = None) -> tuple[int, mmap.mmap]:
    """A new memfd of ``size`` bytes (touched as used) and its mapping; with
    ``fd``, the mapping of that memfd (received from another process). The
    fd stays open while the mapping lives (to be sent on), and is closed
    with it: a process that builds many pools keeps no memory of the
    closed ones."""
    if fd is None:
        fd = os.memfd_create(f"taskmw-{name}", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
        except OSError:
            os.close(fd)
            raise
    elif os.fstat(fd).st_size != size:
        raise ValueError(f"the received {name} memfd is {os.fstat(fd).st_size} bytes, not {size}")
    try:
        mapping = mmap.mmap(fd, size)
    except BaseException:
        os.close(fd)
        raise
    weakref.finalize(mapping, os.close, fd)
    return fd, mapping
