"""What the ring hands back and raises: its errors, :class:`Batch`,
:class:`Held` and :class:`RingStats` (plain Python; :mod:`taskmw.ring`, which
re-exports them, is the only module touching the C core)."""

from __future__ import annotations

import queue
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple


class RingError(Exception):
    """Base class of the ring's errors."""


class RingFull(RingError, queue.Full):
    """A push timed out on a full ring.

    ``accepted`` says how many of the records given to this call went in
    (a prefix of them, in order) before the timeout: those are in the ring
    and will be delivered; the rest were not taken.
    """

    def __init__(self, message: str, accepted: int = 0) -> None:
        super().__init__(message)
        self.accepted = accepted


class RecordTooLarge(RingError, ValueError):
    """A record is larger than the ring's ``max_record``."""


class RingCorrupt(RingError):
    """The shared region failed a consistency check (it was overwritten)."""


class Batch(NamedTuple):
    """Records taken by one pop, oldest first.

    Their sequence numbers are ``first_seq``, ``first_seq + 1``, … in order;
    ``auxs[i]`` is the aux word record ``i`` was pushed with, ``stamps[i]``
    the wall-clock time of its push (``time.time_ns()``'s clock).
    """

    first_seq: int
    records: list[bytes]
    auxs: list[int]
    stamps: Sequence[int] = ()


class Peeked(NamedTuple):
    """A record still queued, as :meth:`taskmw.Ring.peek` sees it."""

    seq: int
    aux: int
    stamp_ns: int
    """When it was pushed (``time.time_ns()``'s clock)."""
    length: int
    """Its whole payload's length."""
    head: bytes
    """The first bytes of its payload (as many as asked for)."""


class Held(NamedTuple):
    """A record held by a consumer: its sequence number and aux word."""

    seq: int
    aux: int


@dataclass(frozen=True)
class RingStats:
    """A snapshot of the ring's shared counters (see csrc/ring.h)."""

    capacity: int
    max_record: int
    used_bytes: int
    records: int
    pushed: int
    popped: int
    next_seq: int
    wakeups: int
    push_waits: int
    pop_waits: int
    recoveries: int
    nslots: int
    max_held: int
    woken: int = 0
    """Sleeps in push or pop ended by a wake-up (not a timeout): with one
    record, one sleeper is woken."""
    lingering: bool = False
    """True while a consumer lingers in :meth:`~taskmw.Ring.pop_many`
    (``linger=``; at most one does at a time)."""
