"""The shared-memory ring: the Python face of the C core in ``csrc/``.

A :class:`Ring` is a bounded multi-producer, multi-consumer queue of byte
records living in one anonymous shared-memory region (a memfd, never a file
in any directory). Create it before ``fork()``; parent and children then
push and pop the same ring. Waits sleep on a futex in the shared region,
after a short spin, with the GIL released; a record wakes one sleeping
consumer (not all of them), and a producer makes a system call only when a
consumer is actually asleep.

Every record gets a sequence number, unique and increasing per ring, and
carries a 32-bit ``aux`` word chosen by its producer. A consumer that pops
with ``hold=True`` has the records it took written into its process's slot
of the region in the same step, and they stay there until it calls
:meth:`Ring.release`; if it is killed at any instant, :meth:`Ring.reclaim`
(called by a supervisor with the dead pid) lists exactly what it held.

Example::

    ring = Ring(1 << 20)
    if os.fork() == 0:
        batch = ring.pop_many(timeout=5)
        ...
    ring.push(b"hello")

Threads of one process share its slot (held records belong to the
process, not to the thread that popped them), and may call any method at
once, except :meth:`Ring.close`: csrc/ring.h gives the details.

No other module touches ``ffi`` or ``lib``.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from array import array
from collections.abc import Iterable, Sequence
from typing import Any

from taskmw._ring import ffi, lib
from taskmw.ringtypes import Batch, Held, Peeked, RecordTooLarge, RingCorrupt, RingError, RingFull, RingStats

__all__ = [
    "Batch",
    "Held",
    "Peeked",
    "RecordTooLarge",
    "Ring",
    "RingCorrupt",
    "RingError",
    "RingFull",
    "RingStats",
]


# Return codes of the C core (see csrc/ring.h), as module constants for speed.
_EAGAIN: int = lib.TMW_EAGAIN
_EBUFSMALL: int = lib.TMW_EBUFSMALL
_ECORRUPT: int = lib.TMW_ECORRUPT
_EHELDFULL: int = lib.TMW_EHELDFULL
_EINTR: int = lib.TMW_EINTR
_EINVAL: int = lib.TMW_EINVAL
_ENOSLOT: int = lib.TMW_ENOSLOT
_ESYS: int = lib.TMW_ESYS
_ETIMEDOUT: int = lib.TMW_ETIMEDOUT
_ETOOBIG: int = lib.TMW_ETOOBIG
_WAKE_NOW: int = lib.TMW_WAKE_NOW
_WAKE_SOON: int = lib.TMW_WAKE_SOON
_OK: int = lib.TMW_OK

# One message per code in csrc/ring.h (tests check that none is missing).
_ERRORS = {
    _EAGAIN: "ring empty (pop) or full (push)",
    _ETIMEDOUT: "timed out",
    _EINTR: "interrupted by a signal",
    _ETOOBIG: "record larger than the ring's max_record",
    _EBUFSMALL: "the first record does not fit the pop buffer",
    _ECORRUPT: "shared ring memory is corrupt",
    _EHELDFULL: "this process already holds max_held records: release() some first",
    _ENOSLOT: "no free slot in the ring: raise `slots` or reclaim dead processes",
    _EINVAL: "invalid argument",
    _ESYS: "a system call failed",
}

_POP_BUFFER = 1 << 20  # bytes a pop can take at once (grows for larger records)
_SLICE_BELOW = 1024  # records smaller than this on average are sliced from one copy
_monotonic = time.monotonic
_new_batch = tuple.__new__  # builds a Batch without NamedTuple's slower __new__


class _Buffers:
    """One thread's pop buffer and C out-parameters (reused across calls)."""

    __slots__ = ("size", "nrec", "out", "view", "cout", "lens", "auxs", "stamps", "pb", "count", "seq")

    def __init__(self, size: int, nrec: int) -> None:
        self.size = size
        self.nrec = nrec
        self.out = bytearray(size)
        self.view = memoryview(self.out)
        self.cout = ffi.from_buffer(self.out)
        self.lens = ffi.new("uint32_t[]", nrec)
        self.auxs = ffi.new("uint32_t[]", nrec)
        self.stamps = ffi.new("uint64_t[]", nrec)
        self.pb = ffi.new("tmw_pop_buf *", (self.cout, size, self.lens, self.auxs))
        self.pb.stamps = self.stamps
        self.count = ffi.new("size_t *")  # push's out-parameters
        self.seq = ffi.new("uint64_t *")


_live_rings: weakref.WeakSet[Ring] = weakref.WeakSet()


def _forget_slots_after_fork() -> None:
    # This module's own class: the child has no slot of its own yet.
    for ring in list(_live_rings):
        ring._slot = -1  # noqa: SLF001
        ring._claim_lock = threading.Lock()  # noqa: SLF001 - another thread may have held it at the fork


os.register_at_fork(after_in_child=_forget_slots_after_fork)


def _raise_for(rc: int, what: str) -> None:
    if rc == _ECORRUPT:
        raise RingCorrupt(f"{what}: {_ERRORS[rc]}")
    if rc == _ETOOBIG:
        raise RecordTooLarge(f"{what}: {_ERRORS[rc]}")
    if rc == _ESYS:
        err = ffi.errno
        raise OSError(err, f"{what}: {os.strerror(err)}")
    if rc == _EINVAL:
        raise ValueError(f"{what}: {_ERRORS[rc]}")
    raise RingError(f"{what}: {_ERRORS.get(rc, f'error {rc}')}")


def _timeouts(timeout: float | None) -> tuple[float, float | None]:
    """A wait of ``timeout`` seconds as (the C layer's timeout, deadline):
    ``None`` waits forever (-1 in C), ``<= 0`` not at all (0)."""
    if timeout is None:
        return -1.0, None
    if timeout > 0:
        return timeout, _monotonic() + timeout
    return 0.0, None


def _remaining(ctimeout: float, deadline: float | None) -> float:
    """The C timeout for a wait resumed after a signal: what is left of it."""
    return ctimeout if deadline is None else max(0.0, deadline - _monotonic())


class Ring:
    """A bounded MPMC queue of byte records in shared memory.

    Args:
        capacity: bytes of record storage (each record also uses a 32-byte
            header and is padded to 16 bytes). Rounded up to a multiple of 16.
        slots: how many processes may use the ring over its life at once
            (each using process takes one slot; :meth:`reclaim` frees a dead
            one's).
        max_held: how many records one process may hold (see ``hold``).
        spin_us: microseconds a waiter polls the ring before sleeping on
            its futex; lowers latency at the cost of a little CPU.

    Raises:
        ValueError: a size is out of range.
        OSError: the region or its eventfd could not be created.
    """

    def __init__(
        self,
        capacity: int = 4 << 20,
        *,
        slots: int = 64,
        max_held: int = 256,
        spin_us: float = 50.0,
    ) -> None:
        if not isinstance(capacity, int) or capacity < 64:
            raise ValueError(f"capacity must be an int >= 64 bytes, got {capacity!r}")
        if capacity > 1 << 40:
            raise ValueError(f"capacity must be at most 1 TiB, got {capacity!r}")
        if not isinstance(slots, int) or not 1 <= slots <= 65536:
            raise ValueError(f"slots must be an int in 1..65536, got {slots!r}")
        if not isinstance(max_held, int) or not 1 <= max_held <= 1 << 20:
            raise ValueError(f"max_held must be an int in 1..1048576, got {max_held!r}")
        if spin_us < 0:
            raise ValueError(f"spin_us must be >= 0, got {spin_us!r}")
        out = ffi.new("tmw_ring **")
        rc = lib.tmw_ring_create(capacity, slots, max_held, int(spin_us * 1000), out)
        if rc != _OK:
            _raise_for(rc, "cannot create ring")
        self._setup(out[0])

    @classmethod
    def attach(cls, fds: Sequence[int], *, spin_us: float = 50.0) -> Ring:
        """Open a ring another process made, from copies of its
        :meth:`fds` (received over a unix socket): the ring then owns them
        (:meth:`close` closes them; if this raises, they are still the
        caller's). Its geometry is read from the region.

        Raises:
            RingCorrupt: the memfd does not hold a ring.
            OSError: it could not be mapped.
        """
        memfd, data_fd = fds
        out = ffi.new("tmw_ring **")
        rc = lib.tmw_ring_open(memfd, data_fd, int(spin_us * 1000), out)
        if rc != _OK:
            _raise_for(rc, "cannot open ring")
        self = cls.__new__(cls)
        self._setup(out[0])
        return self

    def _setup(self, handle: Any) -> None:
        self._r = handle
        self._slot = -1
        self._claim_lock = threading.Lock()  # one slot per process, whichever thread claims it
        self._max_record: int = lib.tmw_ring_max_record(self._r)
        geometry = ffi.new("tmw_ring_stats *")
        lib.tmw_ring_get_stats(self._r, geometry)
        self._capacity: int = geometry.capacity  # after the C core's rounding up
        self._max_held: int = geometry.max_held
        self._pop_size = min(self._max_record, _POP_BUFFER)  # a pop buffer's smallest size
        self._local = threading.local()  # per-thread _Buffers: calls release the GIL
        _live_rings.add(self)

    # -- properties ---------------------------------------------------------

    # After close() these two still answer (constants of the ring, as a
    # closed file keeps its name); all other methods but close() raise
    # ValueError("ring is closed").

    @property
    def capacity(self) -> int:
        """Bytes of record storage."""
        return self._capacity

    @property
    def max_record(self) -> int:
        """Largest record payload, in bytes, that :meth:`push` accepts."""
        return self._max_record

    def fileno(self) -> int:
        """The eventfd written when records arrive for an armed consumer (see :meth:`arm`)."""
        return int(lib.tmw_ring_data_fd(self._handle()))

    def memfd(self) -> int:
        """The memfd holding the shared region (for diagnostics and tests)."""
        return int(lib.tmw_ring_memfd(self._handle()))

    def fds(self) -> tuple[int, int]:
        """The ring's memfd and data eventfd (borrowed: to send to a process
        that opens it with :meth:`attach`)."""
        r = self._handle()
        return int(lib.tmw_ring_memfd(r)), int(lib.tmw_ring_data_fd(r))

    def data_offset(self) -> int:
        """Offset of the record area inside the region (for tests)."""
        return int(lib.tmw_ring_data_offset(self._handle()))

    def __len__(self) -> int:
        """Records in the ring now (a lock-free read, cheap)."""
        return int(lib.tmw_ring_records(self._handle()))

    def stats(self) -> RingStats:
        """A snapshot of the shared counters."""
        s = ffi.new("tmw_ring_stats *")
        lib.tmw_ring_get_stats(self._handle(), s)
        return RingStats(
            capacity=s.capacity,
            max_record=s.max_record,
            used_bytes=s.used_bytes,
            records=s.records,
            pushed=s.pushed,
            popped=s.popped,
            next_seq=s.next_seq,
            wakeups=s.wakeups,
            push_waits=s.push_waits,
            pop_waits=s.pop_waits,
            recoveries=s.recoveries,
            woken=s.woken,
            lingering=bool(s.lingering),
            nslots=s.nslots,
            max_held=s.max_held,
        )

    # -- internals ----------------------------------------------------------

    def _handle(self) -> Any:
        """The C handle (a cffi pointer); raises if the ring is closed."""
        r = self._r
        if r is None:
            raise ValueError("ring is closed")
        return r

    def _my_slot(self) -> int:
        """This process's slot, claimed on first use. All threads share it
        (csrc/ring.h says which calls may share a slot); the lock makes
        threads whose first calls race claim one slot, not one each."""
        slot = self._slot
        if slot < 0:
            with self._claim_lock:
                slot = self._slot
                if slot < 0:
                    slot = lib.tmw_ring_slot_claim(self._handle(), os.getpid())
                    if slot < 0:
                        _raise_for(slot, "cannot use ring")
                    self._slot = slot
        return slot

    # -- push ---------------------------------------------------------------

    def _push(self, records: Sequence[bytes], aux: int, timeout: float | None, lazy: bool) -> tuple[int, int]:
        """Push records in order; returns (rc, how many went in)."""
        try:
            lens = array("I", map(len, records))
        except OverflowError:
            lens = array("Q", map(len, records))  # a record of 4 GiB or more
        if lens.typecode == "Q":
            self._too_large(lens)
        data = records[0] if len(records) == 1 else b"".join(records)
        cdata = ffi.from_buffer(data)
        clens = ffi.from_buffer("uint32_t[]", lens)
        r = self._handle()
        slot = self._my_slot()
        b = self._buffers()
        ctimeout, deadline = _timeouts(timeout)
        done = offset = 0
        n = len(records)
        while True:
            rc = lib.tmw_ring_push(r, slot, cdata + offset, clens + done, n - done, aux, ctimeout, lazy, b.count, b.seq)
            pushed = b.count[0]
            if rc == _ETOOBIG:  # the C core checks every length before pushing any
                self._too_large(lens)
            if rc != _EINTR:  # EINTR: a signal handler ran; go on
                return rc, done + pushed
            offset += sum(lens[done : done + pushed])
            done += pushed
            ctimeout = _remaining(ctimeout, deadline)

    def _too_large(self, lens: array) -> None:  # type: ignore[type-arg]
        big = max(range(len(lens)), key=lens.__getitem__)
        raise RecordTooLarge(
            f"record {big} is {lens[big]} bytes; this ring takes at most {self._max_record} bytes per record"
        )

    def push(self, data: bytes, *, aux: int = 0, timeout: float | None = None, soon: bool = False) -> int:
        """Push one record, waiting for space up to ``timeout`` seconds
        (``None``: forever). Returns its sequence number. ``soon=True``: a
        consumer lingering in :meth:`pop_many` is not woken (it takes the
        record when its linger ends); one asleep is woken as usual.

        Raises:
            RingFull: no space within the timeout (nothing was pushed).
            RecordTooLarge: ``len(data) > max_record``.
        """
        # The hot path of every task(), in one frame: a first try that does not
        # wait (no clock read); a full ring then waits, timed from there.
        r = self._r
        if r is None:
            raise ValueError("ring is closed")
        n = len(data)
        if n > self._max_record:
            raise RecordTooLarge(f"record is {n} bytes; this ring takes at most {self._max_record} bytes per record")
        if type(data) is not bytes:
            data = ffi.from_buffer(data)
        slot = self._slot
        if slot < 0:
            slot = self._my_slot()
        how = _WAKE_SOON if soon else _WAKE_NOW
        seq: int = lib.tmw_ring_push_one(r, slot, data, n, aux, 0.0, how)
        if seq > 0:
            return seq
        if seq == _EAGAIN and (timeout is None or timeout > 0):
            ctimeout, deadline = _timeouts(timeout)
            seq = self._push_waiting(r, slot, data, n, aux, ctimeout, deadline, how)
            if seq > 0:
                return seq
        if seq in (_ETIMEDOUT, _EAGAIN):
            raise RingFull(f"ring full: no space for {n} bytes within {timeout}s", 0)
        _raise_for(seq, "push")
        raise AssertionError("unreachable")

    def try_push(self, data: bytes, *, aux: int = 0) -> int | None:
        """Push one record if there is room now; its seq, or None if full."""
        try:
            return self.push(data, aux=aux, timeout=0)
        except RingFull:
            return None

    @staticmethod
    def _push_waiting(
        r: Any, slot: int, data: Any, n: int, aux: int, ctimeout: float, deadline: float | None, how: int
    ) -> int:
        """:meth:`push` on a full ring: the seq, or a negative TMW_E* code."""
        seq: int = lib.tmw_ring_push_one(r, slot, data, n, aux, ctimeout, how)
        while seq == _EINTR:  # a signal handler ran; go on waiting
            seq = lib.tmw_ring_push_one(r, slot, data, n, aux, _remaining(ctimeout, deadline), how)
        return seq

    def push_many(
        self, records: Sequence[bytes], *, aux: int = 0, timeout: float | None = None, lazy: bool = False
    ) -> None:
        """Push records in order, waiting for space as needed (up to
        ``timeout`` seconds in all; ``None``: forever). With ``lazy=True``
        no sleeping consumer is woken: call :meth:`wake` later (a consumer
        asleep in :meth:`pop_many` finds them within 100 ms anyway).

        Raises:
            RingFull: the timeout passed; ``.accepted`` records went in.
            RecordTooLarge: a record exceeds ``max_record`` (none pushed).
        """
        if not records:
            self._handle()  # a closed ring raises even when there is nothing to push
            return
        rc, done = self._push(records, aux, timeout, lazy)
        if rc == _OK:
            return
        if rc in (_ETIMEDOUT, _EAGAIN):
            raise RingFull(f"ring full: {done} of {len(records)} records pushed within {timeout}s", done)
        _raise_for(rc, "push_many")

    def try_push_many(self, records: Sequence[bytes], *, aux: int = 0, lazy: bool = False) -> int:
        """Push as many of records (a prefix, in order) as fit now; returns
        how many went in (``lazy``: as :meth:`push_many`)."""
        if not records:
            self._handle()
            return 0
        rc, done = self._push(records, aux, 0, lazy)
        if rc in (_OK, _EAGAIN):
            return done
        _raise_for(rc, "try_push_many")
        raise AssertionError("unreachable")

    # -- pop ----------------------------------------------------------------

    def _buffers(self, nrec: int = 1, size: int = 0) -> _Buffers:
        """This thread's C out-parameters and pop buffer, grown to hold nrec
        records and size bytes (pushing threads never need a pop buffer)."""
        b: _Buffers | None = getattr(self._local, "bufs", None)
        if b is None or b.nrec < nrec or b.size < size:
            b = self._local.bufs = _Buffers(max(size, b.size if b else 0), max(nrec, b.nrec if b else 1))
        return b

    def pop_many(
        self,
        max_records: int = 256,
        *,
        timeout: float | None = None,
        hold: bool = False,
        alone: int = 0,
        linger: float = 0.0,
        spin: float = 0.0,
    ) -> Batch:
        """Take up to ``max_records`` records, oldest first, waiting up to
        ``timeout`` seconds (``None``: forever; 0: not at all) while the ring
        is empty.

        Returns a :class:`Batch`; its ``records`` list is empty if the
        timeout passed. A pop takes the records that fit its buffer (1 MiB,
        grown for larger records). With ``hold=True`` the records are also
        recorded as held by this process, atomically with their removal from
        the ring, until :meth:`release`. A record whose aux word has any bit
        of ``alone`` is taken in a batch of its own. ``linger`` > 0: while
        the ring is empty, first linger up to that many seconds (within the
        timeout) as the ring's one lingering consumer, whom pushes made with
        ``soon=True`` do not wake (if another consumer lingers, sleep at once).
        ``spin`` > 0: while the ring is empty, poll it up to that many seconds
        before each sleep, if longer than the ring's ``spin_us`` (a waiter
        that expects a record soon; the CPU is spent with the GIL released).

        Raises:
            RingError: ``hold=True`` and this process holds ``max_held``
                records already.
            RingCorrupt: the shared region was overwritten.
            ValueError: ``linger`` or ``spin`` is negative, infinite or NaN.
        """
        r = self._r
        if r is None:
            raise ValueError("ring is closed")
        if max_records < 1:
            raise ValueError(f"max_records must be >= 1, got {max_records!r}")
        b: _Buffers | None = getattr(self._local, "bufs", None)
        if b is None or b.nrec < max_records or b.size < self._pop_size:
            b = self._buffers(max_records, self._pop_size)
        slot = self._slot
        if slot < 0:
            slot = self._my_slot()
        ctimeout, deadline = _timeouts(timeout)
        while True:
            pb = b.pb
            pb.alone_mask = alone
            try:
                pb.linger_ns = int(linger * 1e9)
                pb.spin_ns = int(spin * 1e9)
            except (OverflowError, ValueError):  # negative, infinite or NaN (no check on the hot path)
                raise ValueError(
                    f"linger and spin must be finite seconds >= 0, got linger={linger!r}, spin={spin!r}"
                ) from None
            rc = lib.tmw_ring_pop(r, slot, pb, max_records, hold, ctimeout)
            if rc == 0:
                n = pb.n
                sizes = ffi.unpack(b.lens, n)
                mv = b.view
                if n == 1:
                    records = [mv[: sizes[0]].tobytes()]
                else:
                    total = sum(sizes)
                    records = []
                    o = 0
                    if total >= n * _SLICE_BELOW:
                        # Large records: one copy each, no big temporary.
                        for size in sizes:
                            records.append(mv[o : o + size].tobytes())
                            o += size
                    else:
                        # Small records: one copy out, then cheap slices.
                        blob = mv[:total].tobytes()
                        for size in sizes:
                            records.append(blob[o : o + size])
                            o += size
                return _new_batch(Batch, (pb.first_seq, records, ffi.unpack(b.auxs, n), ffi.unpack(b.stamps, n)))
            if rc == _EBUFSMALL:
                b = self._buffers(max_records, max(pb.first_len, b.size))
                continue
            if rc == _EAGAIN or rc == _ETIMEDOUT:
                return _new_batch(Batch, (-1, [], [], []))
            if rc == _EINTR:  # a signal handler ran; go on waiting
                ctimeout = _remaining(ctimeout, deadline)
                continue
            if rc == _EHELDFULL:
                raise RingError(
                    f"pop with hold=True: this process already holds {self._max_held} "
                    "records (max_held); release() some first"
                )
            _raise_for(rc, "pop")

    def try_pop_many(self, max_records: int = 256, *, hold: bool = False) -> Batch:
        """Take up to ``max_records`` records that are there now (maybe none)."""
        return self.pop_many(max_records, timeout=0, hold=hold)

    # -- waiting in an event loop -----------------------------------------

    def arm(self) -> bool:
        """Ask producers to write :meth:`fileno` when records arrive, for a
        consumer that waits in an event loop instead of in :meth:`pop_many`.

        Returns True if records are already there: call :meth:`disarm` and
        pop them now. Otherwise wait until ``fileno()`` is readable, then
        :meth:`disarm` and pop. Each ``arm()`` needs one ``disarm()``.
        With asyncio::

            def on_readable():
                ring.disarm()
                while True:
                    for rec in ring.try_pop_many().records:
                        handle(rec)
                    if not ring.arm():
                        return          # armed and empty: wait for the eventfd
                    ring.disarm()       # records came meanwhile: go on

            loop.add_reader(ring.fileno(), on_readable)
            if ring.arm():
                loop.call_soon(on_readable)
        """
        rc = lib.tmw_ring_arm(self._handle(), self._my_slot())
        if rc < 0:
            _raise_for(rc, "arm")
        return bool(rc)

    def disarm(self) -> None:
        """Undo :meth:`arm`: drain the eventfd and stop asking for wake-ups."""
        rc = lib.tmw_ring_disarm(self._handle(), self._my_slot())
        if rc == _EINVAL:
            raise RingError("disarm() without a matching arm()")
        if rc != _OK:
            _raise_for(rc, "disarm")

    def wake(self) -> bool:
        """Wake a sleeping consumer (one asleep in :meth:`pop_many`, and
        the armed ones) if records are there: what lazy pushes left undone.
        Returns True if the ring holds records. Any process, any thread."""
        return bool(lib.tmw_ring_wake(self._handle()))

    def mark(self, seq: int, bits: int) -> bool:
        """OR ``bits`` into the aux word of record ``seq`` if it is still in
        the ring (not popped yet); True if it was. A consumer that pops it
        later sees the new aux. Costs a walk over the records queued before it.

        Raises:
            RingCorrupt: a record header failed its checks.
        """
        rc = lib.tmw_ring_mark(self._handle(), seq, bits)
        if rc == _EAGAIN:
            return False
        if rc != _OK:
            _raise_for(rc, "mark")
        return True

    def peek(self, first_seq: int, max_records: int, head: int = 0) -> list[Peeked]:
        """What is queued from record ``first_seq`` on (not popped yet),
        oldest first, without taking it: up to ``max_records`` records, each
        with the first ``head`` bytes of its payload. Records before
        ``first_seq`` are skipped (and walked over: the cost is that of the
        records queued before it, plus those listed). Any process, any thread.

        Raises:
            RingCorrupt: a record header failed its checks.
        """
        r = self._handle()
        if max_records < 1:
            return []
        recs = ffi.new("tmw_peeked[]", max_records)
        out = ffi.new("char[]", max_records * head) if head else ffi.NULL
        n = ffi.new("size_t *")
        rc = lib.tmw_ring_peek(r, max(0, first_seq), recs, max_records, out, head, n)
        if rc != _OK:
            _raise_for(rc, "peek")
        blob = ffi.buffer(out, n[0] * head)[:] if head else b""
        got = []
        for i in range(n[0]):
            rec = recs[i]
            got.append(Peeked(rec.seq, rec.aux, rec.stamp_ns, rec.len, blob[i * head : i * head + min(rec.len, head)]))
        return got

    # -- held records -------------------------------------------------------

    def release(self, seqs: Iterable[int] | None = None) -> None:
        """Stop holding records (by sequence number); ``None``: all of them."""
        r = self._handle()
        slot = self._my_slot()
        if seqs is None:
            rc = lib.tmw_ring_release(r, slot, ffi.NULL, 0)
        else:
            arr = array("Q", seqs)
            if not arr:
                return
            rc = lib.tmw_ring_release(r, slot, ffi.from_buffer("uint64_t[]", arr), len(arr))
        if rc != _OK:
            _raise_for(rc, "release")

    def held(self) -> list[Held]:
        """The records this process holds now."""
        return self._held_of(self._my_slot())

    def _held_of(self, slot: int) -> list[Held]:
        n = ffi.new("size_t *")
        cap = self._max_held
        out = ffi.new("tmw_held[]", cap)
        rc = lib.tmw_ring_held(self._handle(), slot, out, cap, n)
        if rc != _OK:
            _raise_for(rc, "held")
        return [Held(out[i].seq, out[i].aux) for i in range(min(n[0], cap))]

    def reclaim(self, pid: int) -> list[Held]:
        """For a supervisor: the records held by dead process ``pid``, whose
        slot is freed. Call it only after ``pid`` has exited."""
        r = self._handle()
        if pid == os.getpid():
            raise ValueError("reclaim() is for dead processes, not this one")
        n = ffi.new("size_t *")
        cap = self._max_held * 4
        while True:
            out = ffi.new("tmw_held[]", cap)
            rc = lib.tmw_ring_reclaim(r, pid, out, cap, n)
            if rc != _OK:
                _raise_for(rc, "reclaim")
            if n[0] <= cap:
                return [Held(out[i].seq, out[i].aux) for i in range(n[0])]
            cap = n[0]

    # -- lifetime -----------------------------------------------------------

    def close(self) -> None:
        """Unmap this process's view of the ring (others keep theirs).
        No other thread may be inside a call on the ring meanwhile. Closing
        twice is harmless; any other call afterwards raises ValueError
        (``capacity`` and ``max_record`` still answer)."""
        r, self._r = self._r, None
        if r is not None:
            lib.tmw_ring_close(r)

    def __enter__(self) -> Ring:
        self._handle()  # as a closed file: no second life
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
