"""A two-process tour of taskmw's IPC core.

A parent process pushes records into a shared-memory ring; a forked worker
pops them in batches (holding them until done, as a task worker will) and
answers through a second ring. Run it:

    python examples/ring_demo.py [--records N]
"""

from __future__ import annotations

import argparse
import os
import time

from taskmw import Ring


def worker(tasks: Ring, results: Ring) -> None:
    """Square numbers until told to stop (an empty record)."""
    while True:
        batch = tasks.pop_many(256, timeout=10, hold=True)
        if not batch.records:
            return
        answers = []
        for rec in batch.records:
            if rec == b"":
                results.push_many(answers)
                return
            n = int(rec)
            answers.append(str(n * n).encode())
        results.push_many(answers)
        tasks.release()  # done with them: nothing left to report as lost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000, help="how many records to send")
    args = parser.parse_args()

    tasks, results = Ring(1 << 20), Ring(1 << 20)
    pid = os.fork()
    if pid == 0:
        try:
            worker(tasks, results)
        finally:
            os._exit(0)

    t0 = time.perf_counter()
    total = got = sent = 0
    while got < args.records:
        if sent < args.records:  # send a chunk, unless the worker is behind
            chunk = [b"%d" % i for i in range(sent, min(sent + 1000, args.records))]
            sent += tasks.try_push_many(chunk)
            if sent == args.records:
                tasks.push(b"")
        batch = results.pop_many(4096, timeout=0 if sent < args.records else 10)
        if sent == args.records and not batch.records:
            raise SystemExit("worker stopped answering")
        got += len(batch.records)
        total += sum(map(int, batch.records))
    elapsed = time.perf_counter() - t0
    os.waitpid(pid, 0)
    expect = sum(i * i for i in range(args.records))
    print(f"{got} records there and back in {elapsed:.3f} s ({got / elapsed:,.0f} round trips/s)")
    print(f"sum of squares {total} ({'correct' if total == expect else 'WRONG'})")
    print(f"task ring: {tasks.stats()}")


if __name__ == "__main__":
    main()
