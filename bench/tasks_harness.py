"""One harness for the task-pool and HTTP benchmarks (``bench/test_tasks.py``,
``bench/test_http.py``).

Every pool under test runs the same trivial task, :func:`trivial` (a
module-level function, so every pool pickles it by reference) with the same
100-byte argument, :data:`PAYLOAD`, on 2 worker processes, and every finish
is observed in the benchmark process. Each pool is wrapped in a small
:class:`TaskPool` adapter, so the benchmarks drive every pool through the same
calls:

* ``queue(count)``: queue ``count`` tasks, one call each (the call whose cost
  is measured), without waiting for them;
* ``wait()``: wait until the finish of every task queued so far was observed;
* ``round_trip()``: queue one task and wait for its return value;
* ``close()``: stop the pool and reap its processes.

Also here: the paced run of the CPU benchmark (:func:`paced`), the app
servers of the HTTP benchmarks (:class:`Gunicorn`, :class:`Uvicorn`) and
their load generator (:func:`wrk`). Every wait in this module is bounded by
:data:`WAIT` seconds; every process started here is stopped and reaped.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import multiprocessing
import os
import queue
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import faster_fifo
from harness import POLL, WAIT, Peer, percentile_us

try:
    from taskmw import TaskServer, hookimpl
except ImportError:  # the task server is not built yet: only the peers run
    TaskServer = None
    hookimpl = None

HAVE_TASK_SERVER = TaskServer is not None
"""Whether taskmw's task server is importable (else only the peers run)."""

PAYLOAD = b"x" * 100
"""The argument of every task: 100 bytes."""

WORKERS = 2
"""Worker processes in every pool."""

CAPACITY = 64 << 20
"""Bytes of buffer for each faster-fifo queue (the IPC benchmark's size)."""

BATCH = 256
"""Most messages a faster-fifo consumer or drainer takes per get_many."""

APPS = Path(__file__).resolve().parent / "apps"
"""The WSGI app and gunicorn config of the HTTP benchmark."""


def trivial(data: bytes) -> int:
    """The task every pool runs: a module-level function of one argument."""
    return len(data)


class TaskPool:
    """A pool of :data:`WORKERS` processes running :func:`trivial`; subclasses adapt one."""

    name: ClassVar[str]

    def queue(self, count: int) -> None:
        """Queue ``count`` tasks, one call each, without waiting for them."""
        raise NotImplementedError

    def wait(self) -> None:
        """Wait (at most :data:`WAIT` s) until every queued task's finish was observed."""
        raise NotImplementedError

    def round_trip(self) -> None:
        """Queue one task and wait (at most :data:`WAIT` s) for its return value."""
        raise NotImplementedError

    def pids(self) -> set[int]:
        """The pool's processes (to check that none outlives :meth:`close`)."""
        return descendants(os.getpid())

    def counters(self) -> dict[str, Any]:
        """Anything the pool counts that helps read its numbers."""
        return {}

    def close(self) -> None:
        """Stop the pool and reap its processes (bounded)."""


class _Countdown:
    """Counts finishes (on whichever thread reports them) against what was queued.

    The one reporting thread calls :meth:`done`; the benchmark thread calls
    :meth:`expect` before queueing and :meth:`wait` after. The event is set
    exactly when the finishes counted reach the tasks expected.
    """

    def __init__(self) -> None:
        self.expected = 0
        self.finished = 0
        self.failed: list[object] = []
        self._event = threading.Event()
        self._event.set()

    def expect(self, count: int) -> None:
        self.expected += count
        if count:
            self._event.clear()

    def done(self, _result: object = None) -> None:
        self.finished += 1
        if self.finished >= self.expected:
            self._event.set()

    def wait(self, what: str) -> None:
        if not self._event.wait(WAIT):
            raise TimeoutError(f"{what}: {self.finished} of {self.expected} finishes observed within {WAIT}s")
        if self.failed:
            raise RuntimeError(f"{what}: {len(self.failed)} tasks failed, first: {self.failed[0]!r}")


class _FinishCounter:
    """taskmw plugin: counts every ``on_finish`` (status ``ok``, else recorded as failed)."""

    def __init__(self, countdown: _Countdown) -> None:
        self._countdown = countdown

    def on_finish(self, event: Any) -> None:
        if event.status != "ok":
            self._countdown.failed.append((event.task_id, event.status, getattr(event, "error", None)))
        self._countdown.done()


if hookimpl is not None:
    _FinishCounter.on_finish = hookimpl(_FinishCounter.on_finish)  # type: ignore[method-assign]


class TaskmwPool(TaskPool):
    """``taskmw.TaskServer``: ``task()``; finishes counted by an ``on_finish`` plugin."""

    name = "taskmw"

    def __init__(self, extra_plugins: Sequence[object] = ()) -> None:
        if TaskServer is None:
            raise RuntimeError("taskmw.TaskServer is not importable")
        self._countdown = _Countdown()
        self._server = TaskServer(
            task_workers=WORKERS,
            plugins=[_FinishCounter(self._countdown), *extra_plugins],
            shutdown_timeout=WAIT,
            entrypoints=False,  # only this plugin: an installed one (logging) would be measured too
        )
        self._server.__enter__()
        self._task = self._server.task
        self._taskwait = self._server.taskwait

    def queue(self, count: int) -> None:
        self._countdown.expect(count)
        task = self._task
        for _ in range(count):
            task(trivial, PAYLOAD)

    def wait(self) -> None:
        self._countdown.wait("taskmw")

    def round_trip(self) -> None:
        # A taskwait's finish also reaches on_finish: count it as expected.
        self._countdown.expect(1)
        if self._taskwait(trivial, PAYLOAD, timeout=WAIT) != len(PAYLOAD):
            raise AssertionError("taskwait returned a wrong value")

    def counters(self) -> dict[str, Any]:
        return {"finished": self._countdown.finished}

    def close(self) -> None:
        self._server.__exit__(None, None, None)


class ProcessPoolPool(TaskPool):
    """``concurrent.futures.ProcessPoolExecutor`` (fork): ``submit``; every future waited for."""

    name = "ppe"

    def __init__(self) -> None:
        self._ex = concurrent.futures.ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("fork"))
        self._futures: list[concurrent.futures.Future[int]] = []
        self._finished = 0

    def queue(self, count: int) -> None:
        submit, futures = self._ex.submit, self._futures
        for _ in range(count):
            futures.append(submit(trivial, PAYLOAD))

    def wait(self) -> None:
        done, not_done = concurrent.futures.wait(self._futures, timeout=WAIT)
        if not_done:
            raise TimeoutError(f"ppe: {len(not_done)} of {len(self._futures)} futures not done within {WAIT}s")
        for f in done:
            f.result(0)  # raises if the task failed
        self._finished += len(done)
        self._futures.clear()

    def round_trip(self) -> None:
        if self._ex.submit(trivial, PAYLOAD).result(WAIT) != len(PAYLOAD):
            raise AssertionError("wrong result")

    def counters(self) -> dict[str, Any]:
        return {"finished": self._finished}

    def close(self) -> None:
        procs = list((self._ex._processes or {}).values())  # to reap them if shutdown hangs
        _bounded(lambda: self._ex.shutdown(wait=True, cancel_futures=True), "ProcessPoolExecutor.shutdown")
        _reap(procs)


class MpPoolPool(TaskPool):
    """``multiprocessing.Pool`` (fork): ``apply_async`` with a callback counting finishes."""

    name = "mp_pool"

    def __init__(self) -> None:
        self._pool = multiprocessing.get_context("fork").Pool(WORKERS)
        self._countdown = _Countdown()

    def _error(self, exc: BaseException) -> None:
        self._countdown.failed.append(exc)
        self._countdown.done()

    def queue(self, count: int) -> None:
        self._countdown.expect(count)
        apply_async, done, error = self._pool.apply_async, self._countdown.done, self._error
        args = (PAYLOAD,)
        for _ in range(count):
            apply_async(trivial, args, callback=done, error_callback=error)

    def wait(self) -> None:
        self._countdown.wait("mp_pool")

    def round_trip(self) -> None:
        if self._pool.apply_async(trivial, (PAYLOAD,)).get(WAIT) != len(PAYLOAD):
            raise AssertionError("wrong result")

    def counters(self) -> dict[str, Any]:
        return {"finished": self._countdown.finished}

    def close(self) -> None:
        procs = list(self._pool._pool)  # type: ignore[attr-defined]
        self._pool.terminate()
        _bounded(self._pool.join, "multiprocessing.Pool.join")
        _reap(procs)


def _ff_worker(
    tasks: faster_fifo.Queue, results: faster_fifo.Queue, ack: Callable[[], None], alive: Callable[[], bool]
) -> None:
    """faster-fifo consumer process: take tasks in batches, run them, send the results in one batch."""
    ack()
    while True:
        try:
            batch = tasks.get_many(timeout=POLL, max_messages_to_get=BATCH)
        except queue.Empty:
            if not alive():
                return
            continue
        results.put_many([(tid, fn(*args)) for tid, fn, args in batch], timeout=WAIT)


class FasterFifoPool(TaskPool):
    """A ``faster_fifo.Queue`` pair and 2 consumer processes (:func:`_ff_worker`).

    ``put`` of ``(id, fn, args)`` queues a task (faster-fifo pickles it; the
    function goes by reference, as in every pool here); consumers take up to
    :data:`BATCH` at once and answer with one ``put_many``; the parent drains
    the result queue with ``get_many`` in :meth:`wait`, after queueing (64 MiB
    per queue, so neither side ever waits for room).
    """

    name = "faster_fifo"

    def __init__(self) -> None:
        self._tasks = faster_fifo.Queue(max_size_bytes=CAPACITY)
        self._results = faster_fifo.Queue(max_size_bytes=CAPACITY)
        self._ids = itertools.count()
        self._expected = 0
        self._finished = 0
        self._peers = [Peer(_ff_worker, self._tasks, self._results) for _ in range(WORKERS)]
        for p in self._peers:
            p.wait_ack()

    def queue(self, count: int) -> None:
        self._expected += count
        put, ids, args = self._tasks.put, self._ids, (PAYLOAD,)
        for _ in range(count):
            put((next(ids), trivial, args), timeout=WAIT)

    def wait(self) -> None:
        deadline = time.monotonic() + WAIT
        get_many = self._results.get_many
        while self._finished < self._expected:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise queue.Empty
                self._finished += len(get_many(timeout=left, max_messages_to_get=BATCH))
            except queue.Empty:
                raise TimeoutError(
                    f"faster_fifo: {self._finished} of {self._expected} results within {WAIT}s"
                ) from None

    def round_trip(self) -> None:
        tid = next(self._ids)
        self._tasks.put((tid, trivial, (PAYLOAD,)), timeout=WAIT)
        if self._results.get(timeout=WAIT) != (tid, len(PAYLOAD)):
            raise AssertionError("wrong result")

    def counters(self) -> dict[str, Any]:
        return {"finished": self._finished}

    def close(self) -> None:
        for p in self._peers:
            p.stop()


class TaskmwLoggingPool(TaskmwPool):
    """:class:`TaskmwPool` with ``taskmw-logging`` in it, logging to a file at
    ``INFO`` (its defaults otherwise: finish and worker lines, start lines at
    ``DEBUG``; a ``logging.FileHandler`` on ``taskmw.tasks``, with the
    plugin's ``TextFormatter``: one line per finish, each with its prefix)."""

    name = "taskmw_logging"

    def __init__(self) -> None:
        from taskmw_logging import TEXT_FORMAT, TaskLogger, TextFormatter

        self._file = tempfile.NamedTemporaryFile(prefix="taskmw-bench-logging-", suffix=".log", delete=False)
        self._file.close()
        self._handler = logging.FileHandler(self._file.name)
        self._handler.setFormatter(TextFormatter(TEXT_FORMAT))
        self._logger = logging.getLogger("taskmw.tasks")
        self._saved = (self._logger.level, self._logger.propagate)
        self._logger.addHandler(self._handler)
        self._logger.setLevel(logging.INFO)
        self._logger.propagate = False
        self._plugin = TaskLogger("taskmw.tasks", stderr=False)
        super().__init__(extra_plugins=[self._plugin])

    def counters(self) -> dict[str, Any]:
        self._plugin.flush()
        self._handler.flush()
        with open(self._file.name) as f:
            lines = sum(" ok: " in line for line in f)
        return {**super().counters(), "finish_lines_logged": lines}

    def close(self) -> None:
        super().close()
        self._logger.removeHandler(self._handler)
        self._handler.close()
        self._logger.setLevel(self._saved[0])
        self._logger.propagate = self._saved[1]
        os.unlink(self._file.name)


def _mpq_worker(
    tasks: multiprocessing.Queue, results: multiprocessing.Queue, ack: Callable[[], None], alive: Callable[[], bool]
) -> None:
    """``multiprocessing.Queue`` consumer process: take one task, run it, put its result."""
    ack()
    while True:
        try:
            tid, fn, args = tasks.get(timeout=POLL)
        except queue.Empty:
            if not alive():
                return
            continue
        results.put((tid, fn(*args)))


class MpQueuePool(TaskPool):
    """A ``multiprocessing.Queue`` pair and 2 consumer processes
    (:func:`_mpq_worker`): the hand-made way, as the HTTP benchmark's
    ``/mpqueue`` route does. ``put`` of ``(id, fn, args)`` queues a task;
    a reader thread in this process takes each result with ``get()`` and
    counts it (as taskmw's reader thread runs ``on_finish``)."""

    name = "mp_queue"

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("fork")
        self._tasks: multiprocessing.Queue = ctx.Queue()
        self._results: multiprocessing.Queue = ctx.Queue()
        self._ids = itertools.count()
        self._countdown = _Countdown()
        self._peers = [Peer(_mpq_worker, self._tasks, self._results) for _ in range(WORKERS)]
        for p in self._peers:
            p.wait_ack()
        self._reader = threading.Thread(target=self._read, name="mp_queue results", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        get, done = self._results.get, self._countdown.done
        while get() is not None:
            done()

    def queue(self, count: int) -> None:
        self._countdown.expect(count)
        put, ids, args = self._tasks.put, self._ids, (PAYLOAD,)
        for _ in range(count):
            put((next(ids), trivial, args))

    def wait(self) -> None:
        self._countdown.wait("mp_queue")

    def counters(self) -> dict[str, Any]:
        return {"finished": self._countdown.finished}

    def close(self) -> None:
        self._results.put(None)
        self._reader.join(WAIT)
        for p in self._peers:
            p.stop()
        for q in (self._tasks, self._results):
            q.close()
            q.join_thread()


POOLS: dict[str, type[TaskPool]] = {cls.name: cls for cls in (TaskmwPool, FasterFifoPool, MpPoolPool, ProcessPoolPool)}
"""The adapters of the task-pool benchmarks, by the name used in test ids and reports."""
OTHER_POOLS: dict[str, type[TaskPool]] = {cls.name: cls for cls in (TaskmwLoggingPool, MpQueuePool)}
"""The adapters of single benchmarks: taskmw with taskmw-logging (throughput),
the ``multiprocessing.Queue`` pair (the paced CPU benchmark)."""


# -- process bookkeeping ------------------------------------------------------------


def _bounded(fn: Callable[[], object], what: str) -> None:
    """Run ``fn`` on a daemon thread and give up waiting after :data:`WAIT` s."""
    t = threading.Thread(target=fn, daemon=True, name=what)
    t.start()
    t.join(WAIT)
    if t.is_alive():
        print(f"bench: {what} did not return within {WAIT}s", file=sys.stderr)


def _reap(procs: Sequence[multiprocessing.process.BaseProcess]) -> None:
    """Join these processes (bounded), killing any still alive."""
    for p in procs:
        p.join(WAIT)
        if p.is_alive():
            p.kill()
            p.join(WAIT)


_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgrp) of a process from /proc, or None if it is gone."""
    fields = _stat_fields(pid)
    return None if fields is None else (fields[0], int(fields[1]), int(fields[2]))


def cpu_seconds(pid: int) -> float:
    """CPU time a process (all its live threads) has used so far, in seconds;
    0 if it is gone. From each thread's ``/proc/PID/task/TID/schedstat``
    (nanoseconds), falling back to ``/proc/PID/stat`` (clock ticks: 10 ms)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    total = 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:
            continue  # the thread ended meanwhile
        except OSError:
            fields = _stat_fields(pid)
            return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / _TICK
    return total / 1e9


def _all_stats() -> dict[int, tuple[str, int, int]]:
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (s := _stat(int(entry))) is not None:
            stats[int(entry)] = s
    return stats


def descendants(pid: int) -> set[int]:
    """The live (non-zombie) descendants of ``pid``."""
    stats = _all_stats()
    children: dict[int, list[int]] = {}
    for p, (_state, ppid, _pgrp) in stats.items():
        children.setdefault(ppid, []).append(p)
    found: set[int] = set()
    todo = [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in found and stats[c][0] != "Z":
                found.add(c)
                todo.append(c)
    return found


def alive(pids: set[int]) -> set[int]:
    """Those of ``pids`` that still run (not gone, not zombies)."""
    return {p for p in pids if (s := _stat(p)) is not None and s[0] != "Z"}


def wait_gone(pids: set[int], timeout: float) -> set[int]:
    """Wait up to ``timeout`` s for these processes to end; those still alive."""
    deadline = time.monotonic() + timeout
    left = alive(pids)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = alive(left)
    return left


# -- the measured operations ------------------------------------------------------------


def queue_and_wait(pool: TaskPool, count: int) -> None:
    """Throughput round: queue ``count`` tasks and wait for every finish."""
    pool.queue(count)
    pool.wait()


def round_trips(pool: TaskPool, count: int, samples: list[int]) -> None:
    """``count`` round trips, one at a time; appends each one's nanoseconds to samples."""
    clock = time.perf_counter_ns
    rt = pool.round_trip
    for _ in range(count):
        t0 = clock()
        rt()
        samples.append(clock() - t0)


def paced(pool: TaskPool, rate: float, count: int) -> None:
    """Queue ``count`` tasks one at a time at ``rate`` a second (sleeping
    between them, as a web app queues them), then wait for every finish."""
    interval = 1.0 / rate
    clock, sleep, queue_one = time.perf_counter, time.sleep, pool.queue
    start = clock()
    for i in range(1, count + 1):
        queue_one(1)
        delay = start + i * interval - clock()
        if delay > 0:
            sleep(delay)
    pool.wait()


def pool_cpu(pids: set[int]) -> dict[str, float]:
    """CPU seconds so far of this process (the submitter, all its threads)
    and of ``pids`` (the pool's processes) together."""
    return {"submitter": cpu_seconds(os.getpid()), "pool": sum(cpu_seconds(p) for p in pids)}


def bench_throughput(benchmark: Any, pool: TaskPool, count: int, rounds: int) -> None:
    """Time ``rounds`` throughput rounds of ``count`` tasks (after one warm-up
    round); ``tasks_per_s`` (from the median round) and ``tasks_per_s_iqr``
    (the middle half of the rounds) go into the benchmark's ``extra_info``."""
    benchmark.pedantic(queue_and_wait, args=(pool, count), rounds=rounds, warmup_rounds=1)
    if benchmark.stats:
        s = benchmark.stats.stats
        benchmark.extra_info["tasks_per_s"] = count / s.median
        benchmark.extra_info["tasks_per_s_iqr"] = [count / s.q3, count / s.q1]


def bench_round_trips(benchmark: Any, pool: TaskPool, count: int, rounds: int) -> None:
    """Time ``rounds`` rounds of ``count`` round trips (after ``count // 4``
    untimed ones); ``p50_us`` and ``p99_us`` over every call go into ``extra_info``."""
    round_trips(pool, count // 4, [])
    samples: list[int] = []
    benchmark.pedantic(round_trips, args=(pool, count, samples), rounds=rounds)
    benchmark.extra_info.update(
        round_trips=len(samples), p50_us=percentile_us(samples, 0.50), p99_us=percentile_us(samples, 0.99)
    )


# -- the HTTP benchmarks ----------------------------------------------------------------


WRK = shutil.which("wrk")
"""The load generator of the HTTP benchmarks (``apt-get install wrk``); None if not installed."""

WRK_CONNECTIONS = 16
WRK_THREADS = 2


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_get(addr: tuple[str, int], path: str) -> bytes:
    """One GET on a new connection; the whole response (the server closes)."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    with socket.create_connection(addr, timeout=WAIT) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def wrk(addr: tuple[str, int], path: str, seconds: int) -> dict[str, float]:
    """``wrk`` for ``seconds`` (whole: wrk takes no fractions) on ``path`` with :data:`WRK_CONNECTIONS`
    connections from :data:`WRK_THREADS` threads: ``requests``,
    ``requests_per_s`` and ``cpu_s`` (wrk's own CPU time). Raises if any
    response was not a 2xx or any socket error other than the server
    closing a connection (gunicorn's sync workers close after every
    response; wrk counts those as reconnects, not errors)."""
    if WRK is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        [WRK, f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{seconds}s", "--timeout", f"{WAIT:g}s",
         f"http://{addr[0]}:{addr[1]}{path}"],
        capture_output=True, text=True, timeout=seconds + 2 * WAIT, check=True,
    ).stdout  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read \d+, write (\d+), timeout (\d+)", out)
    if bad or (errors and any(int(n) for n in errors.groups())):
        raise RuntimeError(f"wrk {path}: failed requests:\n{out}")
    requests = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    if requests is None:
        raise RuntimeError(f"wrk {path}: no request count in its output:\n{out}")
    elapsed = float(requests.group(2)) / (1000 if requests.group(3) == "ms" else 1)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"requests": int(requests.group(1)), "requests_per_s": int(requests.group(1)) / elapsed, "cpu_s": cpu}


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class HttpServer:
    """An app server on 127.0.0.1 serving an app of ``bench/apps``, in its
    own session (so that every process it starts, task workers included,
    can be found and stopped by its process group). Subclasses give the
    command line."""

    serving_master: ClassVar[bool]
    """Whether the first process serves requests itself (uvicorn) or only
    manages its workers (gunicorn's master, whose CPU is not counted)."""

    def __init__(self) -> None:
        self.addr = ("127.0.0.1", free_port())
        self._log = tempfile.NamedTemporaryFile(prefix="taskmw-bench-http-", suffix=".log", delete=False)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("GUNICORN_CMD_ARGS", None)
        env.pop("WEB_CONCURRENCY", None)
        self.proc = subprocess.Popen(
            self.command(), cwd=APPS, env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.pgid = self.proc.pid
        self.leftover: set[int] = set()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def command(self) -> list[str]:
        raise NotImplementedError

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 2 * WAIT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.command()[2]} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if http_get(self.addr, "/plain").startswith(b"HTTP/1.1 200 "):
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.command()[2]} did not answer within {2 * WAIT}s:\n{self.log()}")

    def group(self) -> set[int]:
        """Live processes of the server's process group (master, workers, task workers)."""
        return {p for p, (state, _pp, pgrp) in _all_stats().items() if pgrp == self.pgid and state != "Z"}

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by the HTTP workers, the task pool (the
        processes titled ``taskmw: …``: supervisor and task workers) and the
        hand-made queue's consumers (titled :data:`MPQUEUE_TITLE`)."""
        out = {"http_workers": 0.0, "task_pool": 0.0, "mp_consumers": 0.0}
        for pid in self.group():
            title = _cmdline(pid)
            if title.startswith(MPQUEUE_TITLE):
                out["mp_consumers"] += cpu_seconds(pid)
            elif title.startswith("taskmw: "):
                out["task_pool"] += cpu_seconds(pid)
            elif pid != self.pgid or self.serving_master:
                out["http_workers"] += cpu_seconds(pid)
        return out

    def log(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM the first process, wait (bounded), then SIGKILL whatever of its group is left.

        What was still alive after the graceful wait is kept in :attr:`leftover`.
        """
        members = self.group()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(2 * WAIT)
        except subprocess.TimeoutExpired:
            pass
        self.leftover = wait_gone(members | self.group(), 3.0)
        if self.leftover:
            try:
                os.killpg(self.pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            wait_gone(self.leftover, WAIT)
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(WAIT)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()

    def counted(self, what: str) -> dict[str, int]:
        """Totals of the ``taskmw-bench WHAT key=n …`` lines in the log (one
        per process: finishes by status, or the consumers' ``done``)."""
        totals: dict[str, int] = {}
        for line in self.log().splitlines():
            if f"taskmw-bench {what}" in line:
                for field in line.split(f"taskmw-bench {what}", 1)[1].split():
                    key, _, value = field.partition("=")
                    if key != "pid" and value.isdigit():
                        totals[key] = totals.get(key, 0) + int(value)
        return totals

    def remove_log(self) -> None:
        os.unlink(self._log.name)


MPQUEUE_TITLE = "taskmw-bench: mpqueue consumer"
"""The process title of the WSGI app's hand-made queue consumers (``apps/wsgi_app.py``)."""


class Gunicorn(HttpServer):
    """``gunicorn --preload`` with 2 sync workers serving ``apps/wsgi_app.py``."""

    serving_master = False

    def command(self) -> list[str]:
        from gunicorn.config import KNOWN_SETTINGS

        no_control = ["--no-control-socket"] if any(s.name == "control_socket_disable" for s in KNOWN_SETTINGS) else []
        return [
            sys.executable, "-m", "gunicorn",
            "--workers", "2", "--worker-class", "sync", "--preload",
            "--bind", f"{self.addr[0]}:{self.addr[1]}",
            "--config", str(APPS / "gunicorn_conf.py"),
            "--graceful-timeout", "5", "--log-level", "info", *no_control,
            "wsgi_app:application",
        ]  # fmt: skip


class Uvicorn(HttpServer):
    """uvicorn (one process) serving the Starlette app ``apps/asgi_app.py``."""

    serving_master = True

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "uvicorn", "asgi_app:app", "--app-dir", str(APPS),
            "--host", self.addr[0], "--port", str(self.addr[1]),
            "--log-level", "warning", "--no-access-log", "--timeout-graceful-shutdown", "5",
        ]  # fmt: skip
