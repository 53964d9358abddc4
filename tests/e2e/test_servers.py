"""End to end: real app servers (gunicorn, uvicorn) serving the apps in
``apps/`` as subprocesses, driven over 127.0.0.1 (harness: ``servers.py``).

Run: ``python -m pytest tests/e2e`` (needs the test extras: gunicorn, uvicorn,
flask, starlette, httpx; a topology whose server is missing is skipped).

The topologies (``TOPOLOGIES``): gunicorn ``--preload -w 2`` and ``-w 2``
(Flask), uvicorn (Starlette), gunicorn ``--preload -w 2 -k
uvicorn.workers.UvicornWorker`` (Starlette; skipped once uvicorn stops
shipping that class). ``test_tasks_through_http`` queues ~100 tasks through
HTTP (plus a few that raise, and a few ``/wait`` round trips) on each, waits for
every finish, stops the server with SIGTERM, and then checks, from the JSON
lines the apps wrote (see ``apps/jobs.py`` and ``apps/recorder.py``):

- every task ran exactly once, in a task worker: not the master, not an HTTP
  worker, a child of the pool's supervisor; ``on_task`` saw it once, there;
- every id got exactly one finish, in the process that queued it, with the
  right status and return value (``ValueError`` and its message for ``/fail``);
- ids are unique per pool and increase within each HTTP worker;
- every topology gives one pool (one supervisor) for all HTTP workers: with
  ``--preload`` the master builds it, without it the first HTTP worker does
  and the others join it (``share="auto"``);
- after SIGTERM the server exits cleanly and nothing of its process tree
  (HTTP workers, supervisors, task workers) is left.

The other tests apply the same checks to harder stops: SIGTERM while tasks
are still queued (the stop drains them), SIGTERM or SIGINT to the whole
process group (systemd, Ctrl-C), HTTP workers recycled by ``--max-requests``,
and the SIGKILL of the process that built a pool (a master: the pool stops;
an HTTP worker of a shared pool: the pool carries on for the others).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import importlib.util
import os
import random
import signal
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("httpx", reason="the e2e tests need httpx")

from .servers import (  # noqa: E402
    GONE_TIMEOUT,
    Server,
    alive,
    all_procs,
    gunicorn_argv,
    read_records,
    running_server,
    uvicorn_argv,
)

pytestmark = pytest.mark.timeout(120)

N_QUEUE = 100
N_FAIL = 5
N_WAIT = 3
FINISH_TIMEOUT = 20.0
MEET_TIMEOUT = 10.0


def need(*modules: str) -> None:
    for m in modules:
        pytest.importorskip(m, reason=f"the e2e tests of this topology need {m}")


# -- driving the app -------------------------------------------------------------


@dataclasses.dataclass
class Sent:
    kind: str  # "queue" | "fail" | "wait"
    args: tuple
    id: int | None = None  # the task id (queue, fail)
    pid: int | None = None  # the HTTP worker that answered
    seq: int | None = None  # its order among that worker's task ids
    result: dict | None = None  # /wait's answer


def meet_workers(server: Server, count: int, known: dict[int, dict] | None = None) -> dict[int, dict]:
    """Ask ``/pool`` until ``count`` distinct HTTP workers answered: {pid: answer}.

    Requests go ``count`` at a time, staggered, each holding its worker for a
    moment, so that a busy worker leaves the next connection to another one.
    """
    seen = dict(known or {})
    deadline = time.monotonic() + MEET_TIMEOUT
    hold = 0.4 if count > 1 else 0

    def one(delay: float) -> dict:
        time.sleep(delay)
        with server.client() as c:
            r = c.get("/pool", params={"hold": hold})
            r.raise_for_status()
            return r.json()

    with concurrent.futures.ThreadPoolExecutor(max(count, 1)) as ex:
        while len(seen) < count and time.monotonic() < deadline:
            for ans in ex.map(one, [i * 0.1 for i in range(count)]):
                seen.setdefault(ans["pid"], ans)
    assert len(seen) >= count, f"met only {len(seen)} of {count} HTTP workers in {MEET_TIMEOUT}s: {seen}"
    return seen


def send_all(
    server: Server, token: str, n_queue: int = N_QUEUE, n_fail: int = N_FAIL, n_wait: int = N_WAIT, delay: float = 0
) -> list[Sent]:
    """Queue ``n_queue`` adds (each sleeping ``delay`` s), ``n_fail`` booms
    and ``n_wait`` waits, in random order, from 4 client threads at once.
    Every (a, b) and every message is unique, so each run line can be traced
    back to its request."""
    base = random.randrange(1, 1 << 30)
    todo = [Sent("queue", (base + i, 3 * i + 1)) for i in range(n_queue)]
    todo += [Sent("fail", (f"boom-{token}-{i}",)) for i in range(n_fail)]
    todo += [Sent("wait", (base + n_queue + i, -i)) for i in range(n_wait)]
    random.shuffle(todo)
    local = threading.local()
    clients: list = []  # one httpx.Client per thread

    def one(s: Sent) -> Sent:
        c = getattr(local, "client", None)
        if c is None:
            c = local.client = server.client()
            clients.append(c)
        if s.kind == "queue":
            r = c.get("/queue", params={"a": s.args[0], "b": s.args[1], "delay": delay})
        elif s.kind == "fail":
            r = c.get("/fail", params={"msg": s.args[0]})
        else:
            r = c.get("/wait", params={"a": s.args[0], "b": s.args[1]})
        assert r.status_code == 200, f"{s.kind} {s.args}: HTTP {r.status_code}: {r.text[:1000]}"
        body = r.json()
        s.pid = body["pid"]
        if s.kind == "wait":
            s.result = body["result"]
        else:
            s.id, s.seq = body["id"], body["seq"]
        return s

    try:
        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            return list(ex.map(one, todo))
    finally:
        for c in clients:
            c.close()


def wait_for_finishes(workdir: Path, sent: list[Sent]) -> list[tuple[int, int]]:
    """Wait (bounded) until every queued (pid, id) has a finish line; returns the missing ones."""
    want = {(s.pid, s.id) for s in sent if s.kind != "wait"}
    deadline = time.monotonic() + FINISH_TIMEOUT
    while True:
        have = {(f["pid"], f["task_id"]) for f in read_records(workdir, "finish")}
        missing = sorted(want - have)
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(0.1)


# -- checking what happened ---------------------------------------------------------


def check_run(
    server: Server,
    workdir: Path,
    sent: list[Sent],
    pools: dict[int, dict],
    *,
    http_workers: int | None,
    shared_pool: bool,
    master_is_http_worker: bool = False,
    allow_cancelled: bool = False,
    dead_dispatchers: frozenset[int] = frozenset(),
) -> list[str]:
    """Every check of the module's docstring; returns the problems found.

    With ``allow_cancelled``, a queued task may instead finish ``cancelled``
    (the pool stopped before it ran): it must then not have run at all.
    A task queued by one of the ``dead_dispatchers`` (killed HTTP workers)
    may have run and finished at most once, instead of exactly once.
    """
    problems: list[str] = []
    master = server.pid
    http_pids = set(pools) | {s.pid for s in sent}
    supervisor_of = {pid: ans["supervisor"] for pid, ans in pools.items()}
    supervisors = set(supervisor_of.values())

    # -- topology
    if http_workers is not None and len(http_pids) != http_workers:
        problems.append(f"expected {http_workers} HTTP worker(s), requests were answered by {sorted(http_pids)}")
    if master_is_http_worker:
        if http_pids != {master}:
            problems.append(f"the server process {master} should answer every request, got {sorted(http_pids)}")
    elif master in http_pids:
        problems.append(f"the master {master} answered requests")
    missing_pool = http_pids - set(pools)
    if missing_pool:
        problems.append(f"no /pool answer from HTTP worker(s) {sorted(missing_pool)}")
    if shared_pool and len(supervisors) != 1:
        problems.append(f"all HTTP workers should share one pool, supervisors: {supervisor_of}")
    if not shared_pool and len(supervisors) != len(pools):
        problems.append(f"each HTTP worker should have its own pool, supervisors: {supervisor_of}")
    for sup in supervisors:
        if not isinstance(sup, int) or sup <= 0:
            problems.append(f"bad supervisor_pid {sup!r}")
        elif sup in http_pids or sup == master:
            problems.append(f"supervisor_pid {sup} is the master or an HTTP worker ({sorted(http_pids | {master})})")

    # -- ids: unique per pool, increasing within each HTTP worker
    queued = [s for s in sent if s.kind != "wait"]
    by_pool: dict[int, list[Sent]] = collections.defaultdict(list)
    for s in queued:
        by_pool[supervisor_of.get(s.pid, -1)].append(s)
    for sup, ss in by_pool.items():
        dup = [i for i, n in collections.Counter(s.id for s in ss).items() if n > 1]
        if dup:
            problems.append(f"pool {sup}: task ids returned more than once: {sorted(dup)[:20]}")
        if not all(isinstance(s.id, int) for s in ss):
            problems.append(f"pool {sup}: non-int task ids: {[s.id for s in ss if not isinstance(s.id, int)][:5]}")
    by_http: dict[int, list[Sent]] = collections.defaultdict(list)
    for s in queued:
        by_http[s.pid].append(s)
    for pid, ss in by_http.items():
        ids = [s.id for s in sorted(ss, key=lambda s: s.seq)]
        if any(b <= a for a, b in zip(ids, ids[1:])):
            problems.append(f"HTTP worker {pid}: ids not increasing in the order it got them: {ids}")

    finishes = read_records(workdir, "finish")
    fin = collections.defaultdict(list)
    for f in finishes:
        fin[(f["pid"], f["task_id"])].append(f)
    cancelled = set()  # the Sent (by index) whose one finish says the pool cancelled them
    if allow_cancelled:
        for i, s in enumerate(sent):
            fs = fin.get((s.pid, s.id), []) if s.kind != "wait" else []
            if len(fs) == 1 and fs[0]["status"] == "cancelled":
                cancelled.add(i)

    # -- runs: exactly once each (never, if cancelled), in a task worker of the right pool
    runs = read_records(workdir, "run")
    runs_by_args = collections.defaultdict(list)
    for r in runs:
        runs_by_args[(r["fn"], tuple(r["args"]))].append(r)
    expected_runs = {("boom" if s.kind == "fail" else "add", tuple(s.args)): s for s in sent}
    assert len(expected_runs) == len(sent), "the test's (fn, args) must be unique"
    for i, s in enumerate(sent):
        rs = runs_by_args.get(("boom" if s.kind == "fail" else "add", tuple(s.args)), [])
        if i in cancelled:
            if rs:
                problems.append(f"{s.kind} {s.args} (id {s.id}) finished 'cancelled' but ran: {rs}")
            continue
        if not rs and s.pid in dead_dispatchers:
            continue
        if len(rs) != 1:
            problems.append(f"{s.kind} {s.args} (id {s.id}, HTTP pid {s.pid}) ran {len(rs)} times: {rs}")
            continue
        r = rs[0]
        if r["pid"] in http_pids or r["pid"] == master:
            problems.append(f"{s.kind} {s.args} ran in the master or an HTTP worker (pid {r['pid']})")
        sup = supervisor_of.get(s.pid)
        if r["ppid"] != sup:
            problems.append(
                f"{s.kind} {s.args} ran in pid {r['pid']} whose parent is {r['ppid']}, "
                f"not the supervisor {sup} of the pool of HTTP worker {s.pid}"
            )
    unexpected = [k for k in runs_by_args if k not in expected_runs]
    if unexpected:
        problems.append(f"runs nobody asked for: {unexpected[:10]}")

    # -- on_task: once per id, in the task worker that ran it
    on_task = collections.defaultdict(list)
    for t in read_records(workdir, "task"):
        on_task[(t["ppid"], t["task_id"])].append(t)
    for i, s in enumerate(sent):
        if s.kind == "wait":
            continue
        sup = supervisor_of.get(s.pid)
        ts = on_task.get((sup, s.id), [])
        if i in cancelled:
            if ts:
                problems.append(f"id {s.id} (pool {sup}) finished 'cancelled' but on_task ran: {ts}")
            continue
        if not ts and s.pid in dead_dispatchers:
            continue
        if len(ts) != 1:
            problems.append(f"id {s.id} (pool {sup}): on_task ran {len(ts)} times: {ts}")
            continue
        if tuple(ts[0]["args"]) != tuple(s.args):
            problems.append(f"id {s.id}: on_task saw args {ts[0]['args']}, queued {list(s.args)}")
        rs = runs_by_args.get(("boom" if s.kind == "fail" else "add", tuple(s.args)), [])
        if len(rs) == 1 and rs[0]["pid"] != ts[0]["pid"]:
            problems.append(f"id {s.id}: on_task in pid {ts[0]['pid']}, the task ran in pid {rs[0]['pid']}")

    # -- finishes: exactly one per id, in the process that queued it, right outcome
    dup = {k: len(v) for k, v in fin.items() if len(v) > 1}
    if dup:
        problems.append(f"(pid, task id) with more than one finish: {dict(list(dup.items())[:10])}")
    stray = sorted({f["pid"] for f in finishes} - http_pids)
    if stray:
        problems.append(f"on_finish ran in process(es) that queued nothing: {stray}")
    queued_by_pool_id = {(supervisor_of.get(s.pid), s.id): s for s in queued}
    for f in finishes:
        s = queued_by_pool_id.get((supervisor_of.get(f["pid"]), f["task_id"]))
        if s is not None and s.pid != f["pid"]:
            problems.append(f"id {s.id} was queued by pid {s.pid} but finished in pid {f['pid']}")
    for i, s in enumerate(sent):
        if s.kind == "wait":
            continue
        fs = fin.get((s.pid, s.id), [])
        if not fs and s.pid in dead_dispatchers:
            continue
        if len(fs) != 1:
            if not fs:
                problems.append(f"{s.kind} {s.args}: id {s.id} got no finish in its HTTP worker {s.pid}")
            continue
        f = fs[0]
        if i in cancelled:
            if not f["error"] or f["worker_id"] != -1:
                problems.append(f"id {s.id}: a 'cancelled' finish should carry an error and worker_id -1: {f}")
            continue
        if s.kind == "queue":
            rv = f["return_value"]
            rs = runs_by_args.get(("add", tuple(s.args)), [])
            if f["status"] != "ok":
                problems.append(f"id {s.id} add{s.args}: status {f['status']!r}, error {f['error']}")
            elif not isinstance(rv, dict) or rv.get("sum") != s.args[0] + s.args[1]:
                problems.append(f"id {s.id} add{s.args}: return value {rv!r}")
            elif len(rs) == 1 and (rv.get("pid"), rv.get("ppid")) != (rs[0]["pid"], rs[0]["ppid"]):
                problems.append(f"id {s.id} add{s.args}: return value {rv!r} is not from the run {rs[0]}")
        else:
            err = f["error"] or {}
            msg = s.args[0]
            if (
                f["status"] != "error"
                or "ValueError" not in str(err.get("type"))
                or err.get("message") != msg
                or msg not in str(err.get("traceback"))
                or "ValueError" not in str(err.get("traceback"))
            ):
                problems.append(f"id {s.id} boom({msg!r}): finish {f}")
        if f["status"] in ("ok", "error") and s.kind != "wait":
            ts = on_task.get((supervisor_of.get(s.pid), s.id), [])
            if len(ts) == 1 and ts[0]["worker_id"] != f["worker_id"]:
                problems.append(f"id {s.id}: on_task worker_id {ts[0]['worker_id']}, finish worker_id {f['worker_id']}")

    # -- /wait
    for s in sent:
        if s.kind == "wait" and (not isinstance(s.result, dict) or s.result.get("sum") != s.args[0] + s.args[1]):
            problems.append(f"/wait {s.args} answered {s.result!r}")
    return problems


@dataclasses.dataclass(frozen=True)
class Topology:
    needs: tuple[str, ...]
    argv: Callable[[int], list[str]]
    http_workers: int
    shared_pool: bool
    exit_marker: str  # what the server logs once it has shut down cleanly
    master_is_http_worker: bool = False


def _uvicorn_ships_gunicorn_worker() -> bool:
    if importlib.util.find_spec("uvicorn") is None or importlib.util.find_spec("gunicorn") is None:
        return False
    if importlib.util.find_spec("uvicorn.workers") is None:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # uvicorn >= 0.30 deprecates it in favour of uvicorn-worker
        import uvicorn.workers

    return hasattr(uvicorn.workers, "UvicornWorker")


TOPOLOGIES = {
    # gunicorn --preload -w 2: the app (and its pool) is built once in the
    # master; both HTTP workers share that one pool.
    "gunicorn-preload-flask": Topology(
        ("gunicorn", "flask"),
        lambda port: gunicorn_argv("flask_app:app", port, workers=2, preload=True),
        http_workers=2,
        shared_pool=True,
        exit_marker="Shutting down: Master",
    ),
    # gunicorn -w 2 without --preload: each HTTP worker imports the app and
    # builds its own pool.
    "gunicorn-flask": Topology(
        ("gunicorn", "flask"),
        lambda port: gunicorn_argv("flask_app:app", port, workers=2, preload=False),
        http_workers=2,
        shared_pool=True,  # the first HTTP worker builds it, the other joins it
        exit_marker="Shutting down: Master",
    ),
    # uvicorn, one process: it serves HTTP and owns the pool.
    "uvicorn-starlette": Topology(
        ("uvicorn", "starlette"),
        lambda port: uvicorn_argv("starlette_app:app", port),
        http_workers=1,
        shared_pool=True,
        exit_marker="Finished server process",
        master_is_http_worker=True,
    ),
    # gunicorn --preload -w 2 -k uvicorn.workers.UvicornWorker: ASGI HTTP
    # workers forked from the master that built the one pool.
    "gunicorn-uvicornworker-preload-starlette": Topology(
        ("gunicorn", "uvicorn", "starlette"),
        lambda port: gunicorn_argv(
            "starlette_app:app", port, workers=2, preload=True, worker_class="uvicorn.workers.UvicornWorker"
        ),
        http_workers=2,
        shared_pool=True,
        exit_marker="Shutting down: Master",
    ),
}


def topology(name: str) -> Topology:
    topo = TOPOLOGIES[name]
    need(*topo.needs)
    if "uvicorn.workers.UvicornWorker" in topo.argv(1) and not _uvicorn_ships_gunicorn_worker():
        pytest.skip("this uvicorn no longer ships uvicorn.workers.UvicornWorker")
    return topo


def snapshot_tree(server: Server, workdir: Path, pools: dict[int, dict]) -> None:
    """Note every process of the tree before stopping it: the session, the
    supervisors, the task workers that ran something, and their children."""
    task_pids = {r["pid"] for r in read_records(workdir, "run")}
    sups = {ans["supervisor"] for ans in pools.values() if isinstance(ans.get("supervisor"), int)}
    server.snapshot(extra=sups | task_pids)


def stop_problems(server: Server, topo: Topology) -> list[str]:
    report = server.stop()
    problems = report.problems()
    log = server.log_tail(10_000)
    # uvicorn re-raises the SIGTERM it handled once it has shut down: -15 is its clean exit.
    if report.returncode not in (0, -signal.SIGTERM) or topo.exit_marker not in log:
        problems.append(
            f"the server did not exit cleanly after SIGTERM: status {report.returncode}, "
            f"{topo.exit_marker!r} {'in' if topo.exit_marker in log else 'not in'} its log"
        )
    return problems


def fail_if(problems: list[str], server: Server, workdir: Path, pools: dict[int, dict]) -> None:
    runs = read_records(workdir, "run")
    print(
        f"HTTP workers {sorted(pools)}, supervisors {sorted({a.get('supervisor') for a in pools.values()})}, "
        f"{len(runs)} runs in (supervisor, task worker) {sorted({(r['ppid'], r['pid']) for r in runs})}, "
        f"{len(read_records(workdir, 'finish'))} finishes, {len(server.known)} processes seen"
    )
    if problems:
        pytest.fail(
            f"{len(problems)} problem(s):\n- "
            + "\n- ".join(problems[:40])
            + f"\n\nprocesses seen: {sorted(server.known.values())}\n\nserver log (tail):\n{server.log_tail(80)}",
            pytrace=False,
        )


# -- the tests ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TOPOLOGIES))
def test_tasks_through_http(tmp_path: Path, name: str) -> None:
    """~100 tasks queued over HTTP (+ failing ones, + /wait), every finish
    awaited, then SIGTERM: the checks of the module docstring."""
    topo = topology(name)
    workdir = tmp_path / "run"
    token = f"{os.getpid()}-{random.randrange(1 << 30)}"
    problems: list[str] = []
    with running_server(topo.argv, workdir) as server:
        pools = meet_workers(server, topo.http_workers)
        sent = send_all(server, token)
        # Make sure every HTTP worker that answered also told its pool.
        pools = meet_workers(server, len(pools | {s.pid: {} for s in sent}), pools)
        missing = wait_for_finishes(workdir, sent)
        if missing:
            problems.append(f"{len(missing)} task id(s) had no finish after {FINISH_TIMEOUT}s: {missing[:20]}")
        snapshot_tree(server, workdir, pools)
        problems += stop_problems(server, topo)
    problems += check_run(
        server,
        workdir,
        sent,
        pools,
        http_workers=topo.http_workers,
        shared_pool=topo.shared_pool,
        master_is_http_worker=topo.master_is_http_worker,
    )
    fail_if(problems, server, workdir, pools)


N_DRAIN = 40
DRAIN_DELAY = 0.1


@pytest.mark.parametrize("name", list(TOPOLOGIES))
def test_sigterm_drains_queued_tasks(tmp_path: Path, name: str) -> None:
    """SIGTERM while tasks are still queued (N_DRAIN tasks of DRAIN_DELAY s
    each, on 2 task workers per pool): the stop drains the queue, so every
    task still runs exactly once, and each id still gets exactly one finish,
    ``ok``, in the HTTP worker that queued it (the worker waits for its
    finishes before it exits); then nothing of the tree is left."""
    topo = topology(name)
    workdir = tmp_path / "run"
    with running_server(topo.argv, workdir) as server:
        pools = meet_workers(server, topo.http_workers)
        sent = send_all(server, "drain", n_queue=N_DRAIN, n_fail=0, n_wait=0, delay=DRAIN_DELAY)
        pools = meet_workers(server, len(pools | {s.pid: {} for s in sent}), pools)
        snapshot_tree(server, workdir, pools)
        sigterm_at = time.time()
        problems = stop_problems(server, topo)
    late = [r for r in read_records(workdir, "run") if r["time"] > sigterm_at]
    if not late:  # not a failure of taskmw, but then this test proved nothing
        problems.append("every task had started before SIGTERM: make the drain test's tasks slower")
    problems += check_run(
        server,
        workdir,
        sent,
        pools,
        http_workers=topo.http_workers,
        shared_pool=topo.shared_pool,
        master_is_http_worker=topo.master_is_http_worker,
    )
    fail_if(problems, server, workdir, pools)


class NotDrained(AssertionError):
    """Queued tasks were cancelled instead of run by a stop that should drain."""


GROUP_TOPOLOGIES = ["gunicorn-preload-flask", "uvicorn-starlette"]


@pytest.mark.parametrize("name", GROUP_TOPOLOGIES)
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_signal_to_process_group(tmp_path: Path, name: str, signame: str) -> None:
    """The signal goes to the whole process group while tasks are queued, as
    Ctrl-C in a terminal (SIGINT) or systemd's default stop (SIGTERM to every
    process of the unit) deliver it: the supervisor and task workers get it
    too, not only from their parent.

    Always required: each id gets exactly one finish in the process that
    queued it, ``ok`` (ran exactly once, right value) or ``cancelled`` (never
    ran); nothing of the tree is left; the server exits cleanly. Required
    too, as the stop drains (SPEC 4): no task cancelled (``NotDrained``).
    """
    topo = topology(name)
    sig = getattr(signal, signame)
    workdir = tmp_path / "run"
    with running_server(topo.argv, workdir) as server:
        pools = meet_workers(server, topo.http_workers)
        sent = send_all(server, "group", n_queue=N_DRAIN, n_fail=0, n_wait=0, delay=DRAIN_DELAY)
        pools = meet_workers(server, len(pools | {s.pid: {} for s in sent}), pools)
        snapshot_tree(server, workdir, pools)
        os.killpg(server.pid, sig)  # the server leads the group and is alive here: no pid reuse
        report = server.stop(None)  # once: a second Ctrl-C means "force quit" to uvicorn
    problems = report.problems()
    log = server.log_tail(10_000)
    if report.returncode not in (0, -sig) or topo.exit_marker not in log:
        problems.append(
            f"the server did not exit cleanly after {signame}: status {report.returncode}, "
            f"{topo.exit_marker!r} {'in' if topo.exit_marker in log else 'not in'} its log"
        )
    problems += check_run(
        server,
        workdir,
        sent,
        pools,
        http_workers=topo.http_workers,
        shared_pool=topo.shared_pool,
        master_is_http_worker=topo.master_is_http_worker,
        allow_cancelled=True,
    )
    fail_if(problems, server, workdir, pools)
    statuses = collections.Counter(f["status"] for f in read_records(workdir, "finish"))
    if statuses["cancelled"]:
        raise NotDrained(
            f"{signame} to the process group: {statuses['cancelled']} of {len(sent)} queued tasks were cancelled, "
            f"not drained (finishes: {dict(statuses)}); server log:\n{server.log_tail(30)}"
        )


MAX_REQUESTS = 10


def test_gunicorn_preload_recycled_http_workers(tmp_path: Path) -> None:
    """gunicorn --preload -w 2 --max-requests 10: HTTP workers are replaced
    every 10 requests while tasks are in flight (~11 of them for this run). Each
    one, as it exits, waits for the finishes of the tasks it queued; its
    successors (forked from the same master) share the one pool and get
    completion channels of their own. The same checks as above, with the
    HTTP workers' count left open."""
    topo = topology("gunicorn-preload-flask")
    workdir = tmp_path / "run"
    token = f"{os.getpid()}-{random.randrange(1 << 30)}"
    problems: list[str] = []
    argv = lambda port: topo.argv(port) + ["--max-requests", str(MAX_REQUESTS)]  # noqa: E731
    with running_server(argv, workdir) as server:
        first = meet_workers(server, 1)
        sent = send_all(server, token)
        last = meet_workers(server, 1)
        missing = wait_for_finishes(workdir, sent)
        if missing:
            problems.append(f"{len(missing)} task id(s) had no finish after {FINISH_TIMEOUT}s: {missing[:20]}")
        answers = first | last
        sups = {a["supervisor"] for a in answers.values()}
        if len(sups) != 1:
            problems.append(f"--preload: HTTP workers report different pools: {answers}")
        # One pool: every HTTP worker's answer would name its supervisor (the runs' ppid check proves it).
        sup = next(iter(sups))
        pools = answers | {s.pid: {"pid": s.pid, "supervisor": sup} for s in sent if s.pid not in answers}
        snapshot_tree(server, workdir, pools)
        problems += stop_problems(server, topo)
    recycled = len(pools)
    if recycled <= 2:
        problems.append(f"only {recycled} HTTP worker(s) answered: --max-requests did not recycle them")
    problems += check_run(server, workdir, sent, pools, http_workers=None, shared_pool=True)
    fail_if(problems, server, workdir, pools)


# The process that built the pool, killed with SIGKILL (the OOM killer, gunicorn
# killing a worker past --timeout, a crash): "master" is the server's own
# process, "http-worker" the gunicorn HTTP worker that built the pool the
# others joined (without --preload).
OWNER_KILLS = {
    "uvicorn-starlette": "master",
    "gunicorn-flask": "http-worker",
    "gunicorn-preload-flask": "master",
}


@pytest.mark.parametrize("name", list(OWNER_KILLS))
def test_pool_stops_when_its_owner_is_killed(tmp_path: Path, name: str) -> None:
    """SIGKILL the process that built a pool while its tasks are queued. A
    master: the pool's supervisor and task workers exit by themselves within
    GONE_TIMEOUT. The gunicorn HTTP worker that built a shared pool: the pool
    carries on for the other HTTP workers, gunicorn's replacement joins it,
    and tasks flow as before; whatever the killed worker queued ran at most
    once. Then SIGTERM leaves nothing behind."""
    topo = topology(name)
    victim = OWNER_KILLS[name]
    workdir = tmp_path / "run"
    problems: list[str] = []
    with running_server(topo.argv, workdir) as server:
        pools = meet_workers(server, topo.http_workers)
        sent = send_all(server, "kill", n_queue=20, n_fail=0, n_wait=0, delay=0.05)
        snapshot_tree(server, workdir, pools)
        sup = next(iter(pools.values()))["supervisor"]
        procs = all_procs()
        owner = server.pid if victim == "master" else next(p.ppid for p in procs if p.pid == sup)
        pool_procs = {(p.pid, p.starttime): p for p in procs if sup in (p.pid, p.ppid)}
        owner_ident = next((p.pid, p.starttime) for p in procs if p.pid == owner)
        if len(pool_procs) != 3:
            problems.append(f"expected the supervisor {sup} and its 2 task workers, found {list(pool_procs.values())}")
        os.kill(owner, signal.SIGKILL)
        deadline = time.monotonic() + GONE_TIMEOUT
        if victim == "http-worker":  # the pool must outlive it
            while time.monotonic() < deadline and alive(owner_ident):
                time.sleep(0.05)
            gone = [p for i, p in pool_procs.items() if not alive(i)]
            if gone:
                problems.append(f"the shared pool stopped with the HTTP worker {owner} that built it: {gone} gone")
        else:
            while time.monotonic() < deadline and any(alive(i) for i in pool_procs):
                time.sleep(0.05)
            left = [p for i, p in pool_procs.items() if alive(i)]
            if left:
                problems.append(f"the pool of the killed process {owner} outlived it by {GONE_TIMEOUT}s: {left}")
        if victim == "http-worker":
            # gunicorn boots a replacement, which joins the pool.
            survivors = {pid: ans for pid, ans in pools.items() if pid != owner}
            pools = pools | meet_workers(server, topo.http_workers, survivors)
            sent += send_all(server, "after-kill")
            pools = meet_workers(server, len(pools | {s.pid: {} for s in sent}), pools)
            missing = wait_for_finishes(workdir, [s for s in sent if s.pid != owner])
            if missing:
                problems.append(f"{len(missing)} task id(s) had no finish after {FINISH_TIMEOUT}s: {missing[:20]}")
            snapshot_tree(server, workdir, pools)
            problems += stop_problems(server, topo)
            http_workers: int | None = topo.http_workers + 1
            dead = frozenset({owner})
        else:
            # The server is gone. gunicorn's orphaned HTTP workers would notice
            # only at their next timeout tick: stop them as an init system would.
            for p in all_procs():
                if p.pid in pools and p.pid != owner:
                    os.kill(p.pid, signal.SIGTERM)
            problems += server.stop(None).problems()
            http_workers = topo.http_workers
            dead = frozenset(pools)
    problems += check_run(
        server,
        workdir,
        sent,
        pools,
        http_workers=http_workers,
        shared_pool=topo.shared_pool,
        master_is_http_worker=topo.master_is_http_worker,
        dead_dispatchers=dead,
    )
    fail_if(problems, server, workdir, pools)
