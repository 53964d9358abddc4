"""This process's completion channel of a local pool, and its reader.

Each process that queues tasks claims one completion channel (a small ring)
of the pool the first time it queues. A claim is a POSIX record lock on the
channel's memfd, so it dies with its process and the channel can be claimed
again; finishes meant for the dead owner (seqs below the new owner's first)
are dropped by the delivery (the channel's :attr:`Channel.floor`).

The reader runs on the event loop that is running when the channel is
claimed (``loop.add_reader`` on the ring's eventfd), else on a daemon thread.
It hands every batch of finish records to the server's delivery. A reader on
an event loop also reads in ``task()`` calls made on that loop
(:meth:`Channel.read_here`): the same thread as its callback, so finishes a
busy loop queues and gets back need no wake-up of the loop. When that
event loop closes (the end of ``asyncio.run()``), the reader moves to a
thread for the rest of the process's life: a watcher thread checks the loop
every :data:`_LOOP_CHECK` seconds, and :meth:`Channel.move_to_thread` is also
called by whoever sees the closed loop first (the next ``task()``, ``close()``).

A thread waiting for a finish (``taskwait``) while the reader is a thread
reads the channel itself (:meth:`Channel.wait`), so that its finish reaches
it with one wake-up (the worker's) instead of two (the worker's of the
reader thread, then the reader thread's of the waiter), or none if it comes
within ``wait_spin`` (the waiter polls the ring that long before it first sleeps). The reader thread
stands aside meanwhile: a waiter that finds it asleep in the ring pushes a
kick marker into the channel (read while the task runs), the reader thread
then waits on a condition and drains the channel every ``finish_delay``
(at least :data:`_ASIDE_SLICE`) for as long as no thread reads it, and goes
back to sleeping in the ring :data:`_LINGER` seconds after the last waiter
left. One thread at a time pops and delivers (the reading role, under
:attr:`Channel._cond`): each finish is popped once, delivered once, in order.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

from taskmw import records
from taskmw.errors import PoolClosed
from taskmw.interfaces import Deliver
from taskmw.pool import Pool
from taskmw.ring import Batch, Ring
from taskmw.ringtypes import RingFull

log = logging.getLogger(__name__)

_BATCH = 256
_KICK = b"k"
"""The payload of a reader marker (``READER_STOP`` header) that asks the
reader thread to stand aside for a waiting thread (an empty one stops it)."""
_WAIT_SLICE = 0.1
"""Seconds a waiting thread sleeps in the ring (or on the condition) at once."""
_ASIDE_SLICE = 0.001
"""The shortest interval at which a reader thread standing aside drains the channel."""
_LINGER = 0.05
"""Seconds the reader thread stays aside after the last waiter left (the next one needs no kick)."""
_LOOP_CHECK = 0.1
"""Seconds between two checks that the reader's event loop is still open."""


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, if any."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class Channel:
    """A claimed completion channel and its reader."""

    def __init__(self, pool: Pool, index: int, deliver: Deliver) -> None:
        self.pool = pool
        self.index = index
        self.ring: Ring = pool.channels[index]
        self.floor = pool.submit.stats().next_seq
        """Seqs below it were queued by an earlier owner of the channel."""
        self.deliver = deliver
        self.header = index
        """The channel bits of this process's submit records."""
        self.thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._armed = False  # the ring is armed for the loop's reader (each arm() needs one disarm())
        self._stopping = False
        self._delivering = False  # a batch is being handed on (read_here must not nest inside a hook)
        self._lock = threading.Lock()  # the move from a closed loop to a thread
        role = threading.Lock()  # the reading role (pop and deliver) among threads
        self._cond = threading.Condition(role)  # waiters wait on it: a batch was delivered, the role is free
        self._aside_cond = threading.Condition(role)  # the reader thread standing aside (only stop() wakes it)
        self._waiting = 0  # threads in wait()
        self._reading = False  # a thread other than the reader thread pops (a waiter, or the drain aside)
        self._aside = False  # the reader thread is not asleep in the ring (waiters may read)
        self._reader = 0  # the ident of the thread that holds the reading role (0: none, or the ring's sleeper)
        self._cut: list[Batch] = []  # batches whose delivery an exception in a waiting thread cut short

    @classmethod
    def claim(cls, pool: Pool, deliver: Deliver) -> Channel:
        """Claim a free channel of ``pool`` (dropping what its last owner left).

        Raises:
            PoolClosed: every channel is held by a live process.
        """
        for index in range(pool.settings.max_dispatchers):  # (the schedule's channel is after these)
            ring = pool.channels[index]
            if not pool.try_claim(index):
                continue
            stale = 0
            while True:
                batch = ring.try_pop_many(_BATCH)
                if not batch.records:
                    break
                stale += len(batch.records)
            if stale:
                log.info("completion channel %d: dropped %d finishes of its previous owner", index, stale)
            return cls(pool, index, deliver)
        raise PoolClosed(
            f"all {pool.settings.max_dispatchers} completion channels are claimed by live processes: "
            "raise max_dispatchers to let more processes queue tasks"
        )

    @property
    def stale(self) -> bool:
        """True if the event loop that read it has closed (see :meth:`move_to_thread`)."""
        loop = self.loop
        return loop is not None and loop.is_closed()

    def start_reader(self) -> None:
        """Read on the running event loop if there is one, else on a thread."""
        loop = running_loop()
        if loop is None:
            self._start_thread()
            return
        with self._lock:
            self.loop = loop
            loop.add_reader(self.ring.fileno(), self._on_readable)
            self._armed = True
            if self.ring.arm():
                loop.call_soon(self._on_readable)
        watcher = threading.Thread(
            target=self._watch_loop, args=(loop,), name=f"taskmw-loop-watch-{self.index}", daemon=True
        )
        watcher.start()

    def _start_thread(self) -> None:
        self.thread = threading.Thread(target=self._read_forever, name=f"taskmw-finishes-{self.index}", daemon=True)
        self.thread.start()

    def _watch_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Until ``loop`` closes (then the reader moves to a thread) or the reader stops."""
        while not loop.is_closed():
            if self._stopping or self.loop is not loop:
                return
            time.sleep(_LOOP_CHECK)
            # An armed loop has no 100 ms re-check of its own (a reader thread's
            # pop has): finishes written lazily by a worker killed (or stuck in a
            # long task) before it woke the reader come within _LOOP_CHECK.
            self.ring.wake()
        self.move_to_thread()

    def move_to_thread(self) -> None:
        """If the reader's event loop has closed, read on a thread from now
        on (the loop can run no callback any more: the thread is the only
        reader). Safe to call from any thread, any number of times."""
        with self._lock:
            loop = self.loop
            if loop is None or not loop.is_closed() or self._stopping:
                return
            self.loop = None
            if self._armed:
                self.ring.disarm()
                self._armed = False
            log.debug("completion channel %d: its event loop closed, reading on a thread", self.index)
            self._start_thread()

    def _read_forever(self) -> None:
        ring = self.ring
        while True:
            if self._stopping:  # stop() could not push the marker (a full channel): stop once it is empty
                self._hand_on_cut()
                batch = ring.try_pop_many(_BATCH)
                if not batch.records:
                    return
            elif self._waiting:  # a thread waits for a finish: it reads the ring itself
                self._stand_aside()
                continue
            else:
                batch = ring.pop_many(_BATCH, timeout=None)
            if self._hand_on(batch):
                return

    def _stand_aside(self) -> None:
        """On the reader thread: leave the ring to waiting threads until
        none has waited for :data:`_LINGER` seconds (or the reader stops),
        draining it every ``finish_delay`` while no thread reads it."""
        ring, cond = self.ring, self._cond
        aside = max(self.pool.settings.finish_delay, _ASIDE_SLICE)
        last = time.monotonic()
        with cond:
            self._aside = True
            cond.notify_all()
        try:
            while not self._stopping:
                with cond:
                    self._aside_cond.wait(aside)
                    if self._waiting:
                        last = time.monotonic()
                    elif time.monotonic() - last >= _LINGER:
                        self._aside = False  # from now on a waiter kicks the ring's sleeper first
                        return
                    if self._reading or not (self._cut or len(ring)):
                        continue
                    self._reading = True
                try:
                    self._hand_on_cut()
                    batch = ring.try_pop_many(_BATCH)
                    if batch.records:
                        self._hand_on(batch)
                finally:
                    with cond:
                        self._reading = False
                        cond.notify_all()
        finally:
            with cond:
                self._aside = False

    def wait(self, done: Callable[[], bool], timeout: float | None) -> None:
        """On a thread that waits for a finish (the caller has the waiter
        registered with the delivery): read the channel here until
        ``done()`` or ``timeout`` seconds passed, delivering what comes
        (other threads' finishes and the hooks too), or wait while another
        thread reads it. Only for a channel read by a thread (else the
        caller waits on its own)."""
        ring, cond = self.ring, self._cond
        spin = self.pool.settings.wait_spin
        deadline = None if timeout is None else time.monotonic() + timeout
        with cond:
            self._waiting += 1
            kick = not self._aside
        if kick:  # the reader thread sleeps in the ring: it wakes while the task runs, and stands aside
            ring.try_push(_KICK, aux=records.READER_STOP)  # (a full channel: it reads it now anyway)
        me, reading = threading.get_ident(), False
        try:
            while not done():
                left = _WAIT_SLICE if deadline is None else min(deadline - time.monotonic(), _WAIT_SLICE)
                if left <= 0:
                    return
                if not reading:
                    with cond:
                        if not self._aside or self._reading or self._stopping:
                            cond.wait(left)  # whoever reads notifies after each batch, and when it stops
                            continue
                        self._reading, self._reader, reading = True, me, True  # held until this wait ends
                if self._cut:
                    self._hand_on_cut()
                    continue
                batch = ring.pop_many(_BATCH, timeout=left, spin=spin)
                spin = 0.0  # once per wait: other threads' finishes arriving often must not keep it spinning
                if batch.records and self._hand_on(batch):
                    ring.try_push(b"", aux=records.READER_STOP)  # the reader thread's stop marker: pass it on
        finally:
            with cond:
                self._waiting -= 1
                if reading:
                    self._reading, self._reader = False, 0
                    cond.notify_all()  # another waiter may read now

    @property
    def reads_here(self) -> bool:
        """True if this thread holds the reading role (a hook run by :meth:`wait`)."""
        return self._reader == threading.get_ident()

    def _on_readable(self) -> None:
        ring = self.ring
        if self._armed:
            ring.disarm()
            self._armed = False
        try:
            while True:
                batch = ring.try_pop_many(_BATCH)
                if batch.records:
                    self._hand_on(batch)
                    continue
                self._armed = True
                if not ring.arm():
                    return  # armed and empty: wait for the eventfd
                ring.disarm()
                self._armed = False
        finally:
            loop = self.loop
            if not self._armed and loop is not None and not loop.is_closed():  # something escaped: read on
                self._armed = True
                if ring.arm():
                    loop.call_soon(self._on_readable)

    def read_here(self) -> None:
        """On the reader's event loop (the caller checks): deliver what the
        channel holds now, as the loop's callback would, unless a delivery
        is under way (a hook queuing a task)."""
        if self._delivering or self._stopping:
            return
        ring = self.ring
        while True:
            batch = ring.try_pop_many(_BATCH)
            if not batch.records:
                return
            self._hand_on(batch)

    def _hand_on(self, batch: Batch) -> bool:
        """Deliver a batch; True if the reader's stop marker was in it (a
        kick marker is dropped). What the delivery raises is logged: the reader goes on."""
        finishes, headers = batch.records, batch.auxs
        stop = False
        if records.is_reader_stop(records.batch_bits(headers)):  # one of them is a marker
            kept = []
            for r, h in zip(finishes, headers, strict=True):
                if not records.is_reader_stop(h):
                    kept.append((r, h))
                elif r != _KICK:
                    stop = True
            finishes, headers = [r for r, _ in kept], [h for _, h in kept]
        if finishes:
            self._delivering = True
            try:
                self.deliver(finishes, headers, self.floor)
            except Exception:
                log.exception("completion channel %d: delivering %d finishes failed", self.index, len(finishes))
            except BaseException:
                # KeyboardInterrupt, SystemExit raised in a waiting (main) thread between two hooks:
                # the batch is delivered again by the next reader (the delivery drops the seqs it had).
                self._cut.append(Batch(batch.first_seq, finishes, headers))
                raise
            finally:
                self._delivering = False
            if self._waiting > (self._reader == threading.get_ident()):  # another waiter's may be among them
                with self._cond:
                    self._cond.notify_all()
        return stop

    def _hand_on_cut(self) -> None:
        """With the reading role: deliver again the batches a waiting thread's
        delivery was cut short in (see :meth:`_hand_on`)."""
        while self._cut:
            self._hand_on(self._cut.pop(0))

    @property
    def unread(self) -> int:
        """Finish records not delivered yet: in the ring, or in a delivery cut short."""
        return self.ring.stats().records + sum(len(b.records) for b in self._cut)

    def stop(self) -> None:
        """Stop the reader and give the channel up."""
        with self._lock:
            self._stopping = True
        with self._cond:
            self._cond.notify_all()  # waiters
            self._aside_cond.notify_all()  # a reader thread standing aside
        if self.thread is not None:
            try:
                self.ring.push(b"", aux=records.READER_STOP, timeout=1.0)
            except RingFull:  # the reader is behind (a hook hangs): it stops when it has read what is there
                log.debug("completion channel %d is full: its reader stops once it is read", self.index)
            self.thread.join(1.0)  # the server drained it already (or gave up on a hook that hangs)
        elif self.loop is not None and not self.loop.is_closed():
            try:
                self.loop.remove_reader(self.ring.fileno())
            except RuntimeError:  # the loop is closing from another thread
                pass
        self.pool.unclaim(self.index)
