"""Finishes waiting for a process that does not read its completion channel.

A process that stops reading its finishes (SIGSTOPped, a stalled
``on_finish`` hook, a long call holding the GIL) fills its completion
channel. Nobody waits on it: a finish that does not fit goes into the
channel's **backlog** (:attr:`taskmw.pool.Pool.backlogs`, a ring of
``BACKLOG_FACTOR`` × ``channel_bytes`` made with the pool, one per channel)
and the worker goes on with its next task. The supervisor, which holds no
task and can wait, moves backlogged finishes into the channel as its process
reads again (:meth:`Backlogs.move`, every 10 ms while anything waits), and
drops them at once when that process is gone (the channel's lock is free).

The supervisor's own finishes (``lost``, ``timeout``, ``cancelled``) go the
same way without ever waiting (:meth:`Backlogs.send`): straight into the
channel when nothing of that channel is backlogged, else behind the backlog.
That order is what keeps a worker's true finish ahead of the supervisor's
``lost`` for the same task when the worker died between writing it and
releasing the task: the delivery keeps the first finish of a seq and drops
the second.
"""

from __future__ import annotations

import logging
import time

from taskmw import records
from taskmw.pool import Pool
from taskmw.ring import Ring

log = logging.getLogger(__name__)

_MOVE_BATCH = 256  # most records popped from a backlog at once
_MOVE_GUESS = 256  # bytes per record assumed when deciding how many fit a channel

Finish = tuple[bytes, int]
"""A finish record and its header, as pushed into a channel."""


class Backlogs:
    """The supervisor's side of the backlogs of ``pool``."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.moving: dict[int, list[Finish]] = {}
        """Per channel: popped from its backlog, not yet taken by the full
        channel (at most one pop, pushed first next time)."""
        self.pending: dict[int, list[Finish]] = {}
        """Per channel: the supervisor's own finishes that did not fit in the
        full backlog either (in its memory, until they do)."""
        self.busy = False
        """Something waits in a backlog (the supervisor then ticks faster)."""

    # -- the supervisor's own finishes -----------------------------------------------

    def send(self, reply: int, finishes: list[bytes]) -> int:
        """Send the supervisor's finishes to the channel ``reply`` addresses,
        never waiting: into the channel if it has room and nothing of it is
        backlogged, else behind its backlog. Returns how many were dropped
        (the channel's process is gone)."""
        pool = self.pool
        index = records.channel_of(reply)
        dropped = 0
        for header, recs in pool.grouped(reply, finishes):
            if not self.waiting(index):
                recs = recs[pool.channels[index].try_push_many(recs, aux=header) :]
                if not recs:
                    continue
                if not pool.channel_claimed(index):
                    pool.discard(header, recs)
                    dropped += len(recs)
                    continue
            self.pending.setdefault(index, []).extend((r, header) for r in recs)
            self.busy = True
        self.flush_pending()
        return dropped

    def waiting(self, index: int) -> bool:
        """True if finishes for channel ``index`` wait in its backlog or here."""
        return bool(self.moving.get(index) or self.pending.get(index) or len(self.pool.backlogs[index]))

    def flush_pending(self) -> None:
        """Put the supervisor's own waiting finishes behind their backlogs."""
        for index, waiting in list(self.pending.items()):
            left = _push(self.pool.backlogs[index], waiting)
            if left:
                self.pending[index] = left
            else:
                del self.pending[index]

    # -- moving backlogs on -------------------------------------------------------------

    def move(self) -> None:
        """Move what waits in every backlog into its channel, as far as the
        channel has room; drop what waits for a process that is gone."""
        self.flush_pending()
        pool = self.pool
        busy = False
        for index, backlog in enumerate(pool.backlogs):
            if not (index in self.moving or len(backlog)):
                continue
            if not pool.channel_claimed(index):
                self.drop(index)
            else:
                self.move_one(index)
            busy = busy or self.waiting(index)
        self.busy = busy or bool(self.pending)

    def move_one(self, index: int) -> None:
        """Move finishes from the backlog of channel ``index`` into it while it has room."""
        channel, backlog = self.pool.channels[index], self.pool.backlogs[index]
        moving = self.moving.pop(index, [])
        while True:
            if moving:
                moving = _push(channel, moving)
                if moving:
                    self.moving[index] = moving  # the channel is full: next time
                    return
            s = channel.stats()
            room = (s.capacity - s.used_bytes) // _MOVE_GUESS
            if room < 1:
                return
            batch = backlog.try_pop_many(min(_MOVE_BATCH, room))
            if not batch.records:
                return
            moving = list(zip(batch.records, batch.auxs, strict=True))

    def drop(self, index: int) -> None:
        """Drop every finish waiting for channel ``index``, whose process is
        gone (stopping if a new process claims the channel meanwhile: what is
        left then goes to it, and its delivery drops what is not its own)."""
        pool = self.pool
        dropped = 0
        for waiting in (self.moving.pop(index, []), self.pending.pop(index, [])):
            for record, header in waiting:
                pool.discard(header, [record])
            dropped += len(waiting)
        backlog = pool.backlogs[index]
        while not pool.channel_claimed(index):
            batch = backlog.try_pop_many(_MOVE_BATCH)
            if not batch.records:
                break
            if records.is_spilled(records.batch_bits(batch.auxs)):
                for record, header in zip(batch.records, batch.auxs, strict=True):
                    pool.discard(header, [record])
            dropped += len(batch.records)
        if dropped:
            log.warning(
                "completion channel %d: dropped %d finishes waiting for it: the process that queued them is gone",
                index,
                dropped,
            )

    def settle(self, timeout: float) -> None:
        """When the pool stops: move what waits for up to ``timeout`` seconds
        while its processes read, then drop the rest (logged)."""
        deadline = time.monotonic() + timeout
        self.move()
        while self.busy and time.monotonic() < deadline:
            time.sleep(0.01)
            self.move()
        if not self.busy:
            return
        left = sum(len(w) for w in self.pending.values()) + sum(len(w) for w in self.moving.values())
        left += sum(len(b) for b in self.pool.backlogs)
        log.error("the pool stopped with %d finishes still waiting for processes that did not read them", left)


def _push(ring: Ring, finishes: list[Finish]) -> list[Finish]:
    """Push ``finishes`` in order into ``ring`` as far as it has room now;
    returns those left."""
    done = 0
    while done < len(finishes):
        header = finishes[done][1]
        end = done
        while end < len(finishes) and finishes[end][1] == header:
            end += 1
        group = [r for r, _ in finishes[done:end]]
        n = ring.try_push_many(group, aux=header)
        done += n
        if n < len(group):
            break
    return finishes[done:]
