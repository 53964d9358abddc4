"""One harness for every transport benchmarked in ``bench/``.

Each transport is wrapped in a small :class:`Channel` adapter (one direction,
parent to child or child to parent) built before ``fork()``. The benchmarks
drive every adapter through the same calls, so the transports differ
only in what those calls do:

* ``put(record)``: send one record (the "single" API, one call per record);
* ``put_batch(records)``: send many in one call (the "batch" API);
* ``get_batch(timeout)``: receive what is there (at least one record), or
  ``[]`` if nothing came within ``timeout`` seconds;
* ``close()``: release this process's handle;
* ``counters()``: the transport's own counters, if any (the ring's waits).

Children are forked by :class:`Harness` (a ``multiprocessing`` "fork"
Process), which always reaps them. Every wait in this module is bounded:
parent and child give up after :data:`WAIT` seconds, and a child whose parent
is gone exits by itself.
"""

from __future__ import annotations

import fcntl
import math
import multiprocessing
import os
import queue
import select
import struct
import time
from collections.abc import Callable
from typing import ClassVar

import faster_fifo

from taskmw import Ring

CAPACITY = 64 << 20
"""Bytes of buffer for the shared-memory transports (ring and faster-fifo)."""

BATCH = 256
"""Records per batched put, and most records per batched get."""

WAIT = 10.0
"""Longest any single wait may take, in seconds."""

POLL = 0.5
"""How long a child's idle get waits before it checks its parent is alive."""

_FRAME = struct.Struct("<I")
_PIPE_SIZE = 1 << 20  # Linux's default /proc/sys/fs/pipe-max-size


class Channel:
    """A one-way channel of byte records; subclasses adapt one transport."""

    name: ClassVar[str]

    def put(self, record: bytes) -> None:
        """Send one record (waits at most :data:`WAIT` seconds for room)."""
        raise NotImplementedError

    def put_batch(self, records: list[bytes]) -> None:
        """Send records with one call (waits at most :data:`WAIT` seconds)."""
        raise NotImplementedError(f"{self.name} has no batch put")

    def get_batch(self, timeout: float) -> list[bytes]:
        """Records received within ``timeout`` seconds, oldest first; ``[]`` if none."""
        raise NotImplementedError

    def counters(self) -> dict[str, int]:
        """The transport's own counters, if it keeps any (for diagnosis)."""
        return {}

    def close(self) -> None:
        """Release this process's handle (the peer keeps its own)."""


class RingChannel(Channel):
    """:class:`taskmw.Ring`: push / push_many, pop_many."""

    name = "ring"

    def __init__(self) -> None:
        self._ring = Ring(CAPACITY)

    def put(self, record: bytes) -> None:
        self._ring.push(record, timeout=WAIT)

    def put_batch(self, records: list[bytes]) -> None:
        self._ring.push_many(records, timeout=WAIT)

    def get_batch(self, timeout: float) -> list[bytes]:
        records: list[bytes] = self._ring.pop_many(BATCH, timeout=timeout).records
        return records

    def counters(self) -> dict[str, int]:
        s = self._ring.stats()
        return {"pushed": s.pushed, "push_waits": s.push_waits, "pop_waits": s.pop_waits, "wakeups": s.wakeups}

    def close(self) -> None:
        self._ring.close()


class FasterFifoChannel(Channel):
    """``faster_fifo.Queue`` (pickles every record): put / put_many, get_many."""

    name = "faster_fifo"

    def __init__(self) -> None:
        self._q = faster_fifo.Queue(max_size_bytes=CAPACITY)

    def put(self, record: bytes) -> None:
        self._q.put(record, timeout=WAIT)

    def put_batch(self, records: list[bytes]) -> None:
        self._q.put_many(records, timeout=WAIT)

    def get_batch(self, timeout: float) -> list[bytes]:
        try:
            records: list[bytes] = self._q.get_many(timeout=timeout, max_messages_to_get=BATCH)
        except queue.Empty:
            return []
        return records


class MpQueueChannel(Channel):
    """``multiprocessing.Queue``: put, get (no batch API; unbounded, feeder thread)."""

    name = "mp_queue"

    def __init__(self) -> None:
        self._q: multiprocessing.Queue[bytes] = multiprocessing.get_context("fork").Queue()

    def put(self, record: bytes) -> None:
        self._q.put(record, timeout=WAIT)

    def get_batch(self, timeout: float) -> list[bytes]:
        try:
            return [self._q.get(timeout=timeout)]
        except queue.Empty:
            return []

    def close(self) -> None:
        self._q.close()
        self._q.cancel_join_thread()  # never block exit on unsent records


class PipeChannel(Channel):
    """``os.pipe`` (1 MiB) carrying records framed by a 4-byte length.

    A batch is framed and written with one ``os.write`` loop; the reader reads
    up to 1 MiB at a time and parses whole frames, keeping any partial one.
    """

    name = "pipe"

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        fcntl.fcntl(self._w, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        os.set_blocking(self._w, False)  # so a write can be bounded by select()
        self._rest = b""

    def put(self, record: bytes) -> None:
        self._write(_FRAME.pack(len(record)) + record)

    def put_batch(self, records: list[bytes]) -> None:
        pack = _FRAME.pack
        self._write(b"".join([part for r in records for part in (pack(len(r)), r)]))

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        deadline = time.monotonic() + WAIT
        while view:
            try:
                view = view[os.write(self._w, view) :]
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([], [self._w], [], left)[1]:
                    raise TimeoutError(f"pipe stayed full for {WAIT}s") from None

    def get_batch(self, timeout: float) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while True:
            records = self._parse()
            if records:
                return records
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                return []
            chunk = os.read(self._r, _PIPE_SIZE)
            if not chunk:
                raise EOFError("pipe closed")
            self._rest += chunk

    def _parse(self) -> list[bytes]:
        data, end, at = self._rest, len(self._rest), 0
        records = []
        while at + 4 <= end:
            (n,) = _FRAME.unpack_from(data, at)
            if at + 4 + n > end:
                break
            records.append(data[at + 4 : at + 4 + n])
            at += 4 + n
        self._rest = data[at:]
        return records

    def close(self) -> None:
        os.close(self._r)
        os.close(self._w)


TRANSPORTS: dict[str, type[Channel]] = {
    cls.name: cls for cls in (RingChannel, FasterFifoChannel, MpQueueChannel, PipeChannel)
}
"""The adapters, by the transport name used in test ids and reports."""


# -- the child's side ---------------------------------------------------------


def consume(inbox: Channel, per_round: int, ack: Callable[[], None], alive: Callable[[], bool]) -> None:
    """Child: forever, take ``per_round`` records with batched gets, then ack."""
    while True:
        got = 0
        while got < per_round:
            batch = inbox.get_batch(POLL)
            if not batch and not alive():
                return
            got += len(batch)
        ack()


def echo(inbox: Channel, outbox: Channel, ack: Callable[[], None], alive: Callable[[], bool]) -> None:
    """Child: forever, send every record received on inbox back on outbox."""
    ack()  # ready
    while True:
        batch = inbox.get_batch(POLL)
        if not batch and not alive():
            return
        for record in batch:
            outbox.put(record)


# -- the parent's side --------------------------------------------------------


class Peer:
    """A forked child that acknowledges progress with one byte on an os.pipe."""

    def __init__(self, target: Callable[..., None], *args: object) -> None:
        self._ack_r, ack_w = os.pipe()
        parent = os.getpid()

        def ack() -> None:
            os.write(ack_w, b"\x01")

        def alive() -> bool:
            return os.getppid() == parent

        self._proc = multiprocessing.get_context("fork").Process(
            target=target, args=(*args, ack, alive), daemon=True
        )
        self._proc.start()
        os.close(ack_w)

    def wait_ack(self) -> None:
        """Wait (at most :data:`WAIT` seconds) for the child's next ack byte."""
        ready = select.select([self._ack_r, self._proc.sentinel], [], [], WAIT)[0]
        if self._ack_r in ready and os.read(self._ack_r, 1):
            return
        if ready:
            self._proc.join(WAIT)
            raise RuntimeError(f"benchmark child exited (code {self._proc.exitcode})")
        raise TimeoutError(f"benchmark child sent no ack within {WAIT}s")

    def stop(self) -> None:
        """Terminate the child and reap it (SIGKILL if SIGTERM is not enough)."""
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(WAIT)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(WAIT)
        self._proc.close()
        os.close(self._ack_r)


class Harness:
    """Makes channels and forks peers for one benchmark; :meth:`close` undoes all."""

    def __init__(self) -> None:
        self._channels: list[Channel] = []
        self._peers: list[Peer] = []

    def channel(self, transport: str) -> Channel:
        """A new channel of the named transport (make channels before :meth:`fork`)."""
        ch = TRANSPORTS[transport]()
        self._channels.append(ch)
        return ch

    def fork(self, target: Callable[..., None], *args: object) -> Peer:
        """Fork a child running ``target(*args, ack, alive)``."""
        peer = Peer(target, *args)
        self._peers.append(peer)
        return peer

    def close(self) -> None:
        """Stop every child, then close every channel."""
        for peer in self._peers:
            peer.stop()
        for ch in self._channels:
            ch.close()


# -- the measured operations ----------------------------------------------------


def send_round(outbox: Channel, peer: Peer, record: bytes, count: int, batched: bool) -> None:
    """Send ``count`` copies of record (in :data:`BATCH`-record calls if batched,
    else one call each) and wait for the child to ack that it has them all."""
    if batched:
        batch = [record] * BATCH
        full, rest = divmod(count, BATCH)
        for _ in range(full):
            outbox.put_batch(batch)
        if rest:
            outbox.put_batch(batch[:rest])
    else:
        put = outbox.put
        for _ in range(count):
            put(record)
    peer.wait_ack()


def ping_pong(outbox: Channel, inbox: Channel, record: bytes, count: int, samples: list[int]) -> None:
    """``count`` round trips of one record; appends each one's nanoseconds to samples."""
    clock = time.perf_counter_ns
    for _ in range(count):
        t0 = clock()
        outbox.put(record)
        back = inbox.get_batch(WAIT)
        t1 = clock()
        if back != [record]:
            raise AssertionError(f"echo returned {len(back)} records, not the one sent")
        samples.append(t1 - t0)


def percentile_us(samples: list[int], q: float) -> float:
    """The ``q`` quantile (0 < q <= 1, nearest rank) of nanosecond samples, in µs."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] / 1000.0
