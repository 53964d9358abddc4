"""A waiter that polls before it sleeps: ``Ring.pop_many(spin=...)``, and the
pool's ``wait_spin``, with which a thread blocked in ``taskwait`` takes the
finish of a short task without being woken."""

from __future__ import annotations

import threading
import time

import pytest
from helpers import WAIT, add, sleep_then
from test_ring_procs import Child, proc_state
from test_ring_procs import wait_until as wait_child

from taskmw import Ring, Settings, TaskServer


def _spin_pop(ring: Ring, spin: float) -> tuple[list[bytes], float]:
    started = time.monotonic()
    batch = ring.pop_many(4, timeout=WAIT, spin=spin)
    return batch.records, time.monotonic() - started


def _push_to_a_popper(spin: float, state: str) -> tuple[list[bytes], float, int]:
    """Push one record once a child popping with ``spin`` has found the ring
    empty and is in ``state`` (``R``: spinning, ``S``: asleep): what it
    popped, how long its pop took, and the wake-up calls the push made."""
    ring = Ring(1 << 16, spin_us=0)
    base = ring.stats().pop_waits
    with Child(_spin_pop, ring, spin) as child:
        wait_child(lambda: ring.stats().pop_waits > base and proc_state(child.pid) == state, WAIT, state, child)
        before = ring.stats().wakeups
        ring.push(b"rec")
        records, waited = child.result(WAIT)
    return records, waited, ring.stats().wakeups - before


def test_a_record_pushed_while_a_consumer_spins_wakes_nobody() -> None:
    """A consumer spinning in pop (running, not asleep) takes a record pushed
    meanwhile at once, and the push makes no wake-up call."""
    records, waited, wakeups = _push_to_a_popper(30.0, "R")
    assert records == [b"rec"]
    assert waited < 15.0, "the spinning consumer did not take the record at once"
    assert wakeups == 0, "a push woke a consumer that was spinning"


def test_a_consumer_sleeps_once_its_spin_is_over() -> None:
    """The spin is bounded: after it the consumer sleeps in the ring, and a
    push wakes it as usual."""
    records, _, wakeups = _push_to_a_popper(0.01, "S")
    assert records == [b"rec"]
    assert wakeups == 1


@pytest.mark.parametrize("spin", [0.0, 0.01])
def test_taskwait_of_a_short_task_needs_no_wake_up_while_it_spins(spin: float) -> None:
    """With ``wait_spin``, the finish of a short task reaches the thread
    blocked in ``taskwait`` while it polls: its completion channel counts
    (almost) no wake-up call. Without it, (almost) every finish wakes it."""
    n = 40
    with TaskServer(1, wait_spin=spin, entrypoints=False) as server:
        assert server.taskwait(add, 0, 0, timeout=WAIT) == 0  # the channel claimed, the reader thread aside
        channel = server.transport._channel.ring  # type: ignore[attr-defined]
        before = channel.stats().wakeups
        for i in range(n):
            assert server.taskwait(add, i, 1, timeout=WAIT) == i + 1
        wakeups = channel.stats().wakeups - before
    print(f"\nwait_spin={spin}: {wakeups} wake-ups of the waiting thread in {n} taskwaits")
    if spin:
        assert wakeups < n // 2, wakeups
    else:
        assert wakeups > n // 2, wakeups


def test_wait_spin_is_checked() -> None:
    with pytest.raises(ValueError, match="wait_spin must be at most 0.01 second, got 0.5"):
        Settings(wait_spin=0.5)
    with pytest.raises(ValueError, match="wait_spin"):
        Settings(wait_spin=-1.0)


@pytest.mark.parametrize("bad", [{"spin": -0.001}, {"spin": float("inf")}, {"spin": float("nan")}, {"linger": -1.0}])
def test_a_pop_refuses_a_bad_spin_or_linger_naming_it(bad: dict[str, float]) -> None:
    """A negative, infinite or NaN ``spin``/``linger`` is a ValueError naming
    the value (it was cffi's OverflowError about an unsigned conversion)."""
    ring = Ring(1 << 16)
    ((name, value),) = bad.items()
    with pytest.raises(ValueError, match=f"{name}={value!r}"):
        ring.pop_many(1, timeout=0, **bad)
    ring.close()


def test_a_long_wait_spins_once_while_other_finishes_keep_coming() -> None:
    """A thread blocked in ``taskwait`` reads the other finishes of its
    process as they come (here every ~2 ms, each batch within ``finish_delay``);
    it spins only before its first sleep, so with the largest ``wait_spin``
    (10 ms, longer than the gaps) it does not spin for the whole wait."""
    with TaskServer(2, wait_spin=0.01, entrypoints=False) as server:
        assert server.taskwait(add, 0, 0, timeout=WAIT) == 0
        cpu: list[float] = []

        def wait_long() -> None:
            started = time.thread_time()
            assert server.taskwait(sleep_then, 0.6, "slept", timeout=WAIT) == "slept"
            cpu.append(time.thread_time() - started)

        waiter = threading.Thread(target=wait_long)
        waiter.start()
        while waiter.is_alive():
            server.task(add, 1, 1)
            time.sleep(0.002)
        waiter.join(WAIT)
    print(f"\nthe waiting thread's CPU over a 0.6 s taskwait: {cpu[0] * 1000:.1f} ms")
    assert cpu[0] < 0.3, cpu  # spinning before every sleep took ~0.6 s: the whole wait
