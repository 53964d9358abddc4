"""Single-process tests of the ring: edges, timeouts, held records,
corruption, bad arguments, and a property test against a Python model."""

from __future__ import annotations

import collections
import os
import threading
import time

import pytest
from helpers import wait_until
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from taskmw import RecordTooLarge, Ring, RingCorrupt, RingError, RingFull


def span(n: int) -> int:
    """Bytes a record of n payload bytes takes in the ring."""
    return 32 + (n + 15) // 16 * 16


def test_push_pop_roundtrip_with_seq_and_aux() -> None:
    with Ring(4096) as ring:
        assert ring.push(b"a", aux=7) == 1
        assert ring.push(b"bc", aux=8) == 2
        batch = ring.pop_many()
        assert batch.first_seq == 1
        assert batch.records == [b"a", b"bc"]
        assert batch.auxs == [7, 8]


def test_alone_records_are_popped_in_a_batch_of_their_own() -> None:
    ring = Ring(1 << 16)
    for aux in [0, 0, 4, 0, 4 | 1, 4, 0]:
        ring.push(b"x", aux=aux)
    batches = []
    while (b := ring.pop_many(10, timeout=0, alone=4, hold=True)).records:
        batches.append((b.first_seq, b.auxs))
    assert batches == [(1, [0, 0]), (3, [4]), (4, [0]), (5, [5]), (6, [4]), (7, [0])]
    assert sorted(h.seq for h in ring.held()) == list(range(1, 8))


def test_empty_ring_returns_empty_batch() -> None:
    with Ring(4096) as ring:
        assert ring.try_pop_many().records == []
        assert len(ring) == 0


def test_zero_length_records() -> None:
    with Ring(4096) as ring:
        ring.push_many([b"", b"", b"x", b""])
        assert ring.stats().used_bytes == 3 * span(0) + span(1)
        assert ring.pop_many().records == [b"", b"", b"x", b""]


def test_full_ring_rejects_then_accepts_after_pop() -> None:
    with Ring(256) as ring:
        rec = b"x" * 32  # 64 bytes a record (with its 32-byte header): exactly 4 fit
        for _ in range(4):
            assert ring.try_push(rec) is not None
        assert ring.try_push(rec) is None
        assert ring.try_push(b"") is None
        assert len(ring.try_pop_many(1).records) == 1
        assert ring.try_push(rec) is not None


def test_try_push_many_pushes_a_prefix() -> None:
    with Ring(256) as ring:
        recs = [bytes([i]) * 32 for i in range(6)]
        assert ring.try_push_many(recs) == 4
        assert ring.pop_many().records == recs[:4]


def test_wrap_around_many_times_keeps_bytes_intact() -> None:
    with Ring(1024) as ring:
        expect: collections.deque[bytes] = collections.deque()
        for i in range(5000):
            rec = os.urandom((i * 37) % 500)
            while ring.try_push(rec) is None:
                for got in ring.pop_many(3).records:
                    assert got == expect.popleft()
            expect.append(rec)
        assert ring.pop_many(10_000).records == list(expect)
        assert ring.stats().pushed == 5000
        assert ring.stats().used_bytes == 0


def test_largest_record_fills_the_ring() -> None:
    with Ring(4096) as ring:
        big = os.urandom(ring.max_record)
        ring.push(big)
        assert ring.try_push(b"") is None
        assert ring.pop_many().records == [big]
        ring.push(b"after")  # head is no longer at 0: the big one wraps
        ring.push(big[:2000])
        assert ring.pop_many().records == [b"after", big[:2000]]


def test_oversize_record_is_refused_and_nothing_is_pushed() -> None:
    with Ring(4096) as ring:
        with pytest.raises(RecordTooLarge, match="at most 4064 bytes"):
            ring.push(b"x" * 4065)
        with pytest.raises(RecordTooLarge, match="record 1 "):
            ring.push_many([b"ok", b"x" * 5000, b"ok"])
        assert ring.stats().pushed == 0


def test_pop_grows_its_buffer_for_large_records() -> None:
    with Ring(8 << 20) as ring:
        big = os.urandom(3 << 20)
        ring.push_many([b"small", big, b"tail"])
        got: list[bytes] = []
        for _ in range(3):
            got += ring.try_pop_many().records
        assert got == [b"small", big, b"tail"]


def test_pop_timeout_on_empty() -> None:
    with Ring(4096, spin_us=0) as ring:
        t0 = time.monotonic()
        batch = ring.pop_many(timeout=0.2)
        waited = time.monotonic() - t0
        assert batch.records == []
        assert 0.19 <= waited < 5
        assert ring.stats().pop_waits == 1


def test_push_timeout_on_full() -> None:
    with Ring(256) as ring:
        ring.push_many([b"x" * 32] * 4)
        t0 = time.monotonic()
        with pytest.raises(RingFull) as info:
            ring.push(b"y", timeout=0.2)
        assert 0.19 <= time.monotonic() - t0 < 5
        assert info.value.accepted == 0
        with pytest.raises(RingFull) as info:
            ring.push_many([b""] * 0 + [b"z" * 32], timeout=0.05)
        assert info.value.accepted == 0
        assert ring.stats().records == 4


def test_push_many_timeout_reports_accepted_prefix() -> None:
    with Ring(256) as ring:
        ring.push(b"x" * 32)
        with pytest.raises(RingFull) as info:
            ring.push_many([b"a" * 32] * 5, timeout=0.05)
        assert info.value.accepted == 3
        assert ring.pop_many().records == [b"x" * 32] + [b"a" * 32] * 3


def test_hold_records_until_release() -> None:
    with Ring(4096, max_held=4) as ring:
        ring.push_many([b"a", b"b", b"c"], aux=3)
        batch = ring.pop_many(2, hold=True)
        assert [h.seq for h in ring.held()] == [1, 2]
        assert {h.aux for h in ring.held()} == {3}
        ring.release([1])
        assert [h.seq for h in ring.held()] == [2]
        ring.pop_many(hold=True)
        assert [h.seq for h in ring.held()] == [2, 3]
        ring.release()
        assert ring.held() == []
        assert batch.records == [b"a", b"b"]


def test_hold_limit_caps_the_batch_and_then_refuses() -> None:
    with Ring(4096, max_held=2) as ring:
        ring.push_many([b"1", b"2", b"3"])
        assert ring.pop_many(10, hold=True).records == [b"1", b"2"]
        with pytest.raises(RingError, match="release"):
            ring.pop_many(hold=True)
        assert ring.pop_many(10).records == [b"3"]  # hold=False is not limited


def test_reclaim_refuses_own_pid() -> None:
    with Ring(4096) as ring:
        with pytest.raises(ValueError, match="dead processes"):
            ring.reclaim(os.getpid())


def test_len_and_wake_without_sleepers() -> None:
    """len() counts the records there; wake() says whether there are any and,
    with nobody asleep, makes no wake call (nor does a lazy push)."""
    with Ring(4096) as ring:
        assert len(ring) == 0 and ring.wake() is False
        ring.push_many([b"a", b"b", b"c"], lazy=True)
        assert len(ring) == 3 and ring.wake() is True
        ring.try_pop_many(2)
        assert len(ring) == 1
        assert ring.stats().wakeups == 0


def test_no_wakeups_without_sleepers() -> None:
    with Ring(1 << 16) as ring:
        for _ in range(1000):
            ring.push(b"x" * 100)
            ring.pop_many()
        assert ring.stats().wakeups == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"capacity": 10}, "capacity"),
        ({"capacity": "big"}, "capacity"),
        ({"slots": 0}, "slots"),
        ({"max_held": 0}, "max_held"),
        ({"spin_us": -1}, "spin_us"),
    ],
)
def test_bad_settings_raise_value_error(kwargs: dict, message: str) -> None:
    args = {"capacity": 4096, **kwargs}
    with pytest.raises(ValueError, match=message):
        Ring(**args)


def test_bad_pop_size() -> None:
    with Ring(4096) as ring:
        with pytest.raises(ValueError, match="max_records"):
            ring.pop_many(0)
        ring.try_pop_many(8)  # buffers exist now: the check must still be made
        with pytest.raises(ValueError, match="max_records"):
            ring.try_pop_many(0)
        with pytest.raises(TypeError):
            ring.try_pop_many("8")  # type: ignore[arg-type]


def test_closed_ring_raises() -> None:
    ring = Ring(4096)
    ring.close()
    with pytest.raises(ValueError, match="closed"):
        ring.stats()


CALLS_ON_A_RING = {
    "fileno": lambda ring: ring.fileno(),
    "memfd": lambda ring: ring.memfd(),
    "data_offset": lambda ring: ring.data_offset(),
    "len": lambda ring: len(ring),
    "stats": lambda ring: ring.stats(),
    "push": lambda ring: ring.push(b"x"),
    "try_push": lambda ring: ring.try_push(b"x"),
    "push_many": lambda ring: ring.push_many([b"x", b"y"]),
    "push_many-none": lambda ring: ring.push_many([]),
    "try_push_many": lambda ring: ring.try_push_many([b"x"]),
    "try_push_many-none": lambda ring: ring.try_push_many([]),
    "pop_many": lambda ring: ring.pop_many(timeout=0),
    "pop_many-hold": lambda ring: ring.pop_many(timeout=0, hold=True),
    "try_pop_many": lambda ring: ring.try_pop_many(),
    "arm": lambda ring: ring.arm(),
    "wake": lambda ring: ring.wake(),
    "disarm": lambda ring: ring.disarm(),
    "release": lambda ring: ring.release([1, 2]),
    "release-all": lambda ring: ring.release(),
    "release-none": lambda ring: ring.release([]),
    "held": lambda ring: ring.held(),
    "reclaim": lambda ring: ring.reclaim(os.getpid() + 1),
    "reclaim-self": lambda ring: ring.reclaim(os.getpid()),
    "enter": lambda ring: ring.__enter__(),
}


@pytest.mark.parametrize("used", [True, False], ids=["used", "unused"])
@pytest.mark.parametrize("call", list(CALLS_ON_A_RING))
def test_every_call_on_a_closed_ring_raises_value_error(call: str, used: bool) -> None:
    """Whether or not the process had claimed its slot and made its buffers
    before close() (a used ring takes other paths than a fresh one)."""
    ring = Ring(4096, max_held=8)
    if used:
        ring.push_many([b"a", b"b"])
        ring.pop_many(1, hold=True)
        ring.held()
    ring.close()
    with pytest.raises(ValueError, match="ring is closed"):
        CALLS_ON_A_RING[call](ring)


def test_closed_ring_keeps_its_geometry_and_closes_once() -> None:
    ring = Ring(1000)
    ring.push(b"x")
    ring.close()
    assert (ring.capacity, ring.max_record) == (1008, 976)  # constants, as a closed file's name
    ring.close()
    ring.__exit__(None, None, None)


def test_region_is_not_a_named_file() -> None:
    with Ring(4096) as ring:
        target = os.readlink(f"/proc/self/fd/{ring.memfd()}")
        assert target.startswith("/memfd:taskmw-ring")
        assert "(deleted)" in target


def _poke(ring: Ring, offset: int, data: bytes) -> None:
    """Overwrite bytes of the shared region, as a stray write would."""
    with open(f"/proc/self/fd/{ring.memfd()}", "r+b", buffering=0) as f:
        f.seek(ring.data_offset() + offset)
        f.write(data)


@pytest.mark.parametrize(
    "garbage",
    [
        (0xFFFFFFFF).to_bytes(4, "little"),  # length beyond the ring
        (100).to_bytes(4, "little"),  # length beyond what was pushed
        b"\0" * 8 + (99).to_bytes(8, "little"),  # wrong sequence number
    ],
    ids=["huge-length", "overrun-length", "bad-seq"],
)
def test_corrupt_record_header_is_an_error_not_a_crash(garbage: bytes) -> None:
    with Ring(4096) as ring:
        ring.push(b"hello")
        _poke(ring, 0, garbage)
        with pytest.raises(RingCorrupt):
            ring.pop_many()
        with pytest.raises(RingCorrupt):
            ring.pop_many(timeout=0.01)


def test_corrupt_record_header_is_an_error_for_peek_too() -> None:
    with Ring(4096) as ring:
        ring.push(b"hello")
        _poke(ring, 0, (0xFFFFFFFF).to_bytes(4, "little"))
        with pytest.raises(RingCorrupt):
            ring.peek(1, 10, 8)


def test_pop_gives_each_record_the_wall_clock_time_of_its_push() -> None:
    with Ring(4096) as ring:
        before = time.time_ns()
        ring.push(b"a")
        ring.push_many([b"b", b"c"])
        after = time.time_ns()
        batch = ring.pop_many()
        assert batch.records == [b"a", b"b", b"c"]
        assert all(before <= t <= after for t in batch.stamps)
        assert batch.stamps[0] <= batch.stamps[1] == batch.stamps[2]  # one clock read per push call
        assert ring.try_pop_many().stamps == []


def test_peek_of_an_empty_ring_lists_nothing() -> None:
    with Ring(4096) as ring:
        assert ring.peek(1, 10, 16) == []
        ring.push(b"x")
        ring.pop_many()
        assert ring.peek(1, 10, 16) == []
        assert ring.peek(2, 0, 16) == []


def test_peek_lists_a_range_of_queued_records_without_taking_them() -> None:
    with Ring(4096) as ring:
        for i in range(10):
            ring.push(bytes([65 + i]) * (i + 1), aux=100 + i)
        ring.pop_many(3)  # seqs 1-3 are gone
        got = ring.peek(5, 3, 4)
        assert [(p.seq, p.aux, p.length, p.head) for p in got] == [
            (5, 104, 5, b"EEEE"),
            (6, 105, 6, b"FFFF"),
            (7, 106, 7, b"GGGG"),
        ]
        assert [p.seq for p in ring.peek(1, 100)] == list(range(4, 11))  # from below the oldest: the oldest
        assert all(p.head == b"" for p in ring.peek(1, 100))
        assert ring.peek(11, 5, 4) == []  # not pushed yet
        assert len(ring) == 7
        head = ring.peek(4, 1, 100)[0]
        assert head.head == b"DDDD"  # a short payload: all of it
        batch = ring.pop_many()
        assert batch.first_seq == 4 and batch.stamps[0] == head.stamp_ns


def test_peek_walks_a_long_queue_in_chunks_and_skips_what_pops_take_meanwhile() -> None:
    n = 5000  # the walk lets go of the lock every 512 records
    with Ring(1 << 20) as ring:
        ring.push_many([i.to_bytes(4, "little") for i in range(n)])
        assert [p.seq for p in ring.peek(4000, 3, 4)] == [4000, 4001, 4002]
        every = ring.peek(1, n, 4)
        assert [p.seq for p in every] == list(range(1, n + 1))
        assert all(int.from_bytes(p.head, "little") == p.seq - 1 for p in every)
        stop = threading.Event()

        def pop() -> None:
            while not stop.is_set() and ring.try_pop_many(64).records:
                pass

        popper = threading.Thread(target=pop)
        popper.start()
        try:
            while len(ring):
                seen = ring.peek(1, n, 4)
                seqs = [p.seq for p in seen]
                assert seqs == sorted(set(seqs))  # increasing; what was popped meanwhile is left out
                assert all(int.from_bytes(p.head, "little") == p.seq - 1 for p in seen)
        finally:
            stop.set()
            popper.join()


def test_peek_and_pop_read_headers_and_payloads_that_wrap_around() -> None:
    with Ring(256) as ring:  # records of 16 bytes take 48: the 6th header starts 16 bytes before the end
        for _ in range(5):
            ring.push(b"z" * 16)
        ring.pop_many()
        before = time.time_ns()
        ring.push(b"0123456789abcdef", aux=7)  # its header wraps
        ring.push(b"Q" * 40, aux=8)
        peeked = ring.peek(1, 10, 12)
        assert [(p.seq, p.aux, p.length, p.head) for p in peeked] == [
            (6, 7, 16, b"0123456789ab"),
            (7, 8, 40, b"Q" * 12),
        ]
        assert all(before <= p.stamp_ns <= time.time_ns() for p in peeked)
        batch = ring.pop_many()
        assert batch.records == [b"0123456789abcdef", b"Q" * 40]
        assert list(batch.stamps) == [p.stamp_ns for p in peeked]


class RingModel(RuleBasedStateMachine):
    """Random push/pop sequences against a deque with the same capacity."""

    CAPACITY = 512

    def __init__(self) -> None:
        super().__init__()
        self.ring = Ring(self.CAPACITY, max_held=8, spin_us=0)
        self.model: collections.deque[tuple[int, bytes, int]] = collections.deque()
        self.used = 0
        self.next_seq = 1
        self.held: set[int] = set()

    def teardown(self) -> None:
        self.ring.close()

    def _fits(self, rec: bytes) -> bool:
        return self.CAPACITY - self.used >= span(len(rec))

    def _accept(self, rec: bytes, aux: int) -> None:
        self.model.append((self.next_seq, rec, aux))
        self.used += span(len(rec))
        self.next_seq += 1

    @rule(rec=st.binary(max_size=200), aux=st.integers(0, 2**32 - 1))
    def try_push(self, rec: bytes, aux: int) -> None:
        fits = self._fits(rec)
        seq = self.ring.try_push(rec, aux=aux)
        if fits:
            assert seq == self.next_seq
            self._accept(rec, aux)
        else:
            assert seq is None

    @rule(recs=st.lists(st.binary(max_size=120), max_size=6), aux=st.integers(0, 9))
    def try_push_many(self, recs: list[bytes], aux: int) -> None:
        expect = 0
        for rec in recs:
            if not self._fits(rec):
                break
            self._accept(rec, aux)
            expect += 1
        assert self.ring.try_push_many(recs, aux=aux) == expect

    @rule(k=st.integers(1, 10), hold=st.booleans())
    def pop(self, k: int, hold: bool) -> None:
        room = 8 - len(self.held)
        if hold and room == 0:
            with pytest.raises(RingError):
                self.ring.try_pop_many(k, hold=True)
            return
        take = min(k, len(self.model), room if hold else k)
        batch = self.ring.try_pop_many(k, hold=hold)
        expect = [self.model.popleft() for _ in range(take)]
        assert batch.records == [rec for _, rec, _ in expect]
        assert batch.auxs == [aux for _, _, aux in expect]
        if expect:
            assert batch.first_seq == expect[0][0]
        for seq, rec, _ in expect:
            self.used -= span(len(rec))
            if hold:
                self.held.add(seq)

    @rule(data=st.data())
    def release_some(self, data: st.DataObject) -> None:
        seqs = data.draw(st.lists(st.sampled_from(sorted(self.held) or [0]), max_size=4))
        self.ring.release(seqs)
        self.held -= set(seqs)

    @invariant()
    def counts_agree(self) -> None:
        s = self.ring.stats()
        assert s.records == len(self.model)
        assert s.used_bytes == self.used
        assert s.next_seq == self.next_seq
        assert {h.seq for h in self.ring.held()} == self.held


TestRingModel = RingModel.TestCase
TestRingModel.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)


def thread_state(thread: threading.Thread) -> str:
    """The scheduler state letter (R, S, ...) of a thread of this process."""
    with open(f"/proc/self/task/{thread.native_id}/stat", "rb") as f:
        stat = f.read()
    return stat[stat.rindex(b")") + 2 :].split()[0].decode()


def test_gil_is_released_while_waiting() -> None:
    """A thread blocked in pop must not stop this thread from pushing."""
    with Ring(4096, spin_us=0) as ring:
        got: list[list[bytes]] = []
        t = threading.Thread(target=lambda: got.append(ring.pop_many(timeout=10).records))
        t.start()
        assert wait_until(lambda: ring.stats().pop_waits >= 1 and thread_state(t) == "S", 10)  # asleep in the C wait
        ring.push(b"wake up")
        t.join(timeout=10)
        assert not t.is_alive()
        assert got == [[b"wake up"]]
        assert ring.stats().wakeups >= 1


def test_threads_of_one_process_share_the_ring() -> None:
    import threading

    with Ring(1 << 16) as ring:
        seen: list[bytes] = []
        lock = threading.Lock()
        expect = [b"%06d" % i for i in range(30_000)]
        deadline = time.monotonic() + 30

        def consume() -> None:
            while time.monotonic() < deadline:
                records = ring.pop_many(64, timeout=0.05).records
                with lock:
                    seen.extend(records)
                    if len(seen) == len(expect):
                        return

        threads = [threading.Thread(target=consume) for _ in range(3)]
        for t in threads:
            t.start()
        for i in range(0, len(expect), 100):
            ring.push_many(expect[i : i + 100])
        for t in threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in threads)
        assert sorted(seen) == expect


def test_threads_racing_to_first_use_share_one_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first calls of several threads at once claim one slot for the
    process, not one each (a second slot would be lost, and records held in
    it could not be released through the first). The claim is slowed down
    here so that the threads really do race for it."""
    import threading

    import taskmw.ring

    real = taskmw.ring.lib

    class SlowClaim:
        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        @staticmethod
        def tmw_ring_slot_claim(r: object, pid: int) -> int:
            time.sleep(0.01)  # the GIL is free meanwhile, as in the C call
            return int(real.tmw_ring_slot_claim(r, pid))

    monkeypatch.setattr(taskmw.ring, "lib", SlowClaim())
    with Ring(4096, slots=1, max_held=64) as ring:
        barrier = threading.Barrier(8)
        errors: list[BaseException] = []

        def first_use(i: int) -> None:
            barrier.wait()
            try:
                if i % 2:
                    ring.push(b"%d" % i, timeout=1)
                else:
                    ring.pop_many(4, timeout=0.05, hold=True)
            except BaseException as exc:  # noqa: B036
                errors.append(exc)

        threads = [threading.Thread(target=first_use, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
        assert not errors, errors
        ring.pop_many(8, timeout=0, hold=True)
        ring.release()  # the one slot: it releases whatever any thread held
        assert ring.held() == []


def test_unmatched_disarm_is_refused_while_another_thread_sleeps_in_pop() -> None:
    """arm()/disarm() are counted apart from the slot's sleepers: a disarm()
    without arm() is refused even while another thread of the process sleeps
    in pop_many (and so counts as a sleeper of the same slot), and it does
    not unbalance the waiter count (which would make wake-ups of nobody)."""
    import threading

    with Ring(4096, spin_us=0) as ring:
        got: list[list[bytes]] = []
        t = threading.Thread(target=lambda: got.append(ring.pop_many(timeout=10).records))
        t.start()
        # pop_waits goes up just before the thread sleeps: wait for both
        assert wait_until(lambda: ring.stats().pop_waits >= 1 and thread_state(t) == "S", 10, interval=0.001)
        with pytest.raises(RingError, match="without a matching arm"):
            ring.disarm()
        t0 = time.monotonic()
        ring.push(b"wake up")
        t.join(timeout=10)
        assert got == [[b"wake up"]]
        assert time.monotonic() - t0 < 0.05, "the sleeper was not woken by the push"
        before = ring.stats().wakeups
        for _ in range(100):
            ring.push(b"x")
            ring.pop_many()
        assert ring.stats().wakeups == before


def test_error_table_has_every_code_of_the_header() -> None:
    import pathlib
    import re

    import taskmw.ring
    from taskmw._ring import lib

    header = (pathlib.Path(taskmw.ring.__file__).parent.parent / "csrc" / "ring.h").read_text()
    names = re.findall(r"^#define (TMW_E\w+) ", header, flags=re.M)
    assert len(names) == 10
    codes = {getattr(lib, name) for name in names}
    assert codes == set(taskmw.ring._ERRORS), sorted(set(taskmw.ring._ERRORS) ^ codes)


def test_mark_sets_bits_on_a_queued_record_only() -> None:
    """``mark`` changes the aux word of a record still in the ring, under the
    lock (taskmw's cancel of a queued task); popped or unknown seqs are refused."""
    ring = Ring(1 << 16)
    first = ring.push(b"a", aux=1)
    second = ring.push(b"bb", aux=2)
    assert ring.mark(second, 1 << 29) is True
    assert ring.mark(second + 1, 1) is False and ring.mark(0, 1) is False
    batch = ring.try_pop_many(1)
    assert batch.first_seq == first and batch.auxs == [1]
    assert ring.mark(first, 4) is False  # popped already
    batch = ring.try_pop_many(8)
    assert batch.auxs == [2 | 1 << 29] and batch.records == [b"bb"]
    ring.close()
    with pytest.raises(ValueError):
        ring.mark(first, 1)


# -- a ring opened from another process's fds ----------------------------------------


def test_attach_opens_the_same_ring_from_copies_of_its_fds() -> None:
    """What a process that did not fork from the ring's maker does (it got
    the fds over a unix socket): the geometry comes from the region, and both
    handles push and pop the one ring; the attached one owns its fds."""
    with Ring(1 << 16, slots=4, max_held=3) as ring:
        ring.push(b"before", aux=7)
        copies = [os.dup(fd) for fd in ring.fds()]
        with Ring.attach(copies) as other:
            assert (other.capacity, other.max_record) == (ring.capacity, ring.max_record)
            assert other.pop_many(timeout=1).records == [b"before"]
            other.push(b"back")
            assert ring.pop_many(timeout=1).records == [b"back"]
            assert other.stats().next_seq == ring.stats().next_seq == 3
        for fd in copies:  # closed with the attached ring
            with pytest.raises(OSError):
                os.fstat(fd)


def test_attach_refuses_a_memfd_that_is_not_a_ring() -> None:
    with Ring(1 << 16) as ring:
        _, data_fd = ring.fds()
        stranger = os.memfd_create("not-a-ring")
        os.ftruncate(stranger, 1 << 20)
        fds = [stranger, os.dup(data_fd)]
        try:
            with pytest.raises(RingCorrupt):
                Ring.attach(fds)
        finally:
            for fd in fds:  # still the caller's
                os.close(fd)
