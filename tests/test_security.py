"""Who can reach a pool (README, "Security model"): its memfds are open in
the builder, the supervisor and the workers, and ``/proc/<pid>/fd/<n>``
would open them for anyone allowed to inspect those processes. No other
uid ever can; with the pool's processes made non-dumpable, no unrelated
process of the same uid can either (root can). Each test runs real
processes under uids of their own (it needs root to switch to them) and
counts this process's descendants before and after: none may be left.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import signal
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import WAIT, fork_call, in_child, reap, sleep_then, wait_until, worker_pids

from taskmw import TaskServer

pytestmark = [
    pytest.mark.usefixtures("no_process_left"),
    pytest.mark.skipif(os.geteuid() != 0, reason="switches to uids of its own"),
]

SECRET = "the-queued-task-argument-4f1c9e"
_PR_SET_DUMPABLE = 4


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory every uid may write (the pool's pids and logs go there)."""
    path = Path(tempfile.mkdtemp(prefix="taskmw-security-"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _fork(body: Callable[[], None]) -> int:
    """Run ``body`` in a forked child (:func:`helpers.fork_call`), printing its traceback if it raises."""

    def traced() -> None:
        try:
            body()
        except BaseException:
            traceback.print_exc()
            raise

    return fork_call(traced)


def _uid_in_use(uid: int) -> bool:
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/status") as f:
                if any(line.startswith("Uid:") and str(uid) in line.split()[1:] for line in f):
                    return True
        except OSError:
            continue
    return False


def _free_uid(start: int) -> int:
    return next(uid for uid in range(start, start + 1000) if not _uid_in_use(uid))


def _become(uid: int) -> None:
    """Switch to ``uid`` as a process started by that user would be: the
    switch itself makes a process non-dumpable (``fs.suid_dumpable``), which
    a process exec'd by the user is not, so set it back."""
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 1)")


def _memfds(pid: int) -> list[int]:
    """The fds of ``pid`` that are memfds (read as root)."""
    fds = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}").startswith("/memfd:"):
                fds.append(int(name))
        except OSError:
            continue
    return fds


def _probe(targets: dict[str, int], uid: int, out: Path) -> Callable[[], None]:
    """A child body: as ``uid``, an unrelated process (forked from the test,
    not from the builder) tries every memfd of every target through
    ``/proc/<pid>/fd/<n>``; writes what it could open and whether it read
    the secret."""

    def body() -> None:
        fds = {name: _memfds(pid) for name, pid in targets.items()}  # listed as root, then tried as uid
        _become(uid)
        report: dict[str, object] = {"opened": [], "refused": 0, "secret": False, "writable": []}
        for name, pid in targets.items():
            for fd in fds[name]:
                path = f"/proc/{pid}/fd/{fd}"
                try:
                    with open(path, "rb") as f:
                        report["opened"].append(f"{name}:{fd}")  # type: ignore[attr-defined]
                        if SECRET.encode() in f.read(64 << 20):
                            report["secret"] = True
                except PermissionError:
                    report["refused"] += 1  # type: ignore[operator]
                try:
                    os.close(os.open(path, os.O_RDWR))
                    report["writable"].append(f"{name}:{fd}")  # type: ignore[attr-defined]
                except PermissionError:
                    pass
        out.write_text(json.dumps(report))

    return body


def _pool_with_a_queued_secret(uid: int | None, ready: Path, done: Path) -> Callable[[], None]:
    """A child body: (as ``uid``, if given) build a one-worker pool, hold its
    worker on a sleep and queue a task whose argument is the secret; write
    the builder's, supervisor's and worker's pids to ``ready``, and close
    once ``done`` exists."""

    def body() -> None:
        if uid is not None:
            _become(uid)
        with TaskServer(1, entrypoints=False, shutdown_timeout=0.2) as server:
            (worker,) = worker_pids(server)
            server.task(sleep_then, 30)
            server.task(sleep_then, 0, SECRET)  # waits in the submit ring (a memfd)
            pids = {"builder": os.getpid(), "supervisor": server.supervisor_pid, "worker": worker}
            ready.write_text(json.dumps(pids))
            assert wait_until(done.exists, WAIT)

    return body


def _run_probe(shared: Path, pool_uid: int | None, probe_uid: int) -> dict[str, object]:
    ready, done, out = shared / "ready", shared / "done", shared / "report"
    builder = _fork(_pool_with_a_queued_secret(pool_uid, ready, done))
    try:
        assert wait_until(ready.exists, WAIT)
        targets = json.loads(ready.read_text())
        assert all(_memfds(pid) for pid in targets.values())  # root sees them: there is something to hide
        assert in_child(_probe(targets, probe_uid, out)) == 0
        return json.loads(out.read_text())  # type: ignore[no-any-return]
    finally:
        done.touch()
        _, status = os.waitpid(builder, 0)
        assert os.waitstatus_to_exitcode(status) == 0


def test_a_process_of_the_same_user_cannot_open_the_pools_memfds(shared: Path) -> None:
    """The pool runs as an unprivileged uid; an unrelated process of that
    same uid tries the memfds of the builder, the supervisor and the worker."""
    uid = _free_uid(47000)
    report = _run_probe(shared, uid, uid)
    assert report == {"opened": [], "refused": report["refused"], "secret": False, "writable": []}
    assert report["refused"]


def test_a_process_of_another_user_cannot_open_the_pools_memfds(shared: Path) -> None:
    """The pool runs as one unprivileged uid, the prober as another."""
    uid = _free_uid(47000)
    report = _run_probe(shared, uid, _free_uid(uid + 1))
    assert report == {"opened": [], "refused": report["refused"], "secret": False, "writable": []}


def test_builder_dumpable_true_leaves_the_builder_reachable_as_documented(shared: Path) -> None:
    """The opt-out does what its documentation says: the builder's memfds
    open for the same user again; the supervisor and the worker stay closed."""
    uid = _free_uid(47000)
    ready, done, out = shared / "ready", shared / "done", shared / "report"

    def builder() -> None:
        _become(uid)
        with TaskServer(1, entrypoints=False, builder_dumpable=True) as server:
            pids = {"builder": os.getpid(), "supervisor": server.supervisor_pid, "worker": worker_pids(server)[0]}
            ready.write_text(json.dumps(pids))
            assert wait_until(done.exists, WAIT)

    pid = _fork(builder)
    try:
        assert wait_until(ready.exists, WAIT)
        targets = json.loads(ready.read_text())
        assert in_child(_probe(targets, uid, out)) == 0
        opened = json.loads(out.read_text())["opened"]
        assert opened and all(name.startswith("builder:") for name in opened)
    finally:
        done.touch()
        os.waitpid(pid, 0)


def test_an_unprivileged_builder_still_adopts_the_workers_of_a_dead_supervisor(shared: Path) -> None:
    """Non-dumpable workers' /proc/<pid>/maps is closed to an unprivileged
    builder: it tells its own orphans by their start time instead, so a
    running task still finishes ok after its supervisor was killed."""
    uid = _free_uid(47000)
    log_path = shared / "log"

    def builder() -> None:
        _become(uid)
        handler = logging.FileHandler(log_path)
        logging.getLogger("taskmw").addHandler(handler)
        with TaskServer(1, entrypoints=False) as server:
            worker_pids(server)
            task_id = server.task(sleep_then, 1.0, "survived")
            assert wait_until(lambda: server.stats()["workers"][0]["task_id"] == task_id)
            os.kill(server.supervisor_pid, signal.SIGKILL)
            assert server.result(task_id, timeout=WAIT) == "survived"
        assert "adopted 1 task worker(s)" in log_path.read_text()

    pid = _fork(builder)
    assert reap(pid) == 0, log_path.read_text() if log_path.exists() else ""
