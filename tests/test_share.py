"""One pool for processes that did not fork from one another (the ``share``
setting, :mod:`taskmw._share`): a pool built in one process is joined from
another (a ``subprocess``, with the same group name), which queues through
it and sees the same record; the pool outlives its builder while a member
remains and stops when the last one leaves; a process of another user is
refused before anything is sent. The app-server topologies (gunicorn
without ``--preload``, ``uvicorn --workers``) are in
``tests/e2e/test_job_status.py`` and ``tests/e2e/test_shared_pool.py``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import uuid

import psutil
import pytest
from helpers import WAIT, local_pool, wait_until

from taskmw import Periodic, TaskServer
from taskmw._share import Group, Refused, join
from taskmw.pool import PoolFiles
from taskmw.settings import Settings

pytestmark = [pytest.mark.usefixtures("no_process_left"), pytest.mark.timeout(120)]


def _group() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


def _run(code: str, **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,  # type: ignore[call-overload]
    )


def test_a_process_that_did_not_fork_joins_the_pool_and_both_see_its_tasks() -> None:
    group = _group()
    with TaskServer(2, entrypoints=False, share=group) as server:
        assert wait_until(lambda: all(w["pid"] for w in server.stats()["workers"]))
        workers = {w["pid"] for w in server.stats()["workers"]}
        child = _run(f"""
            import json, os
            from taskmw import TaskServer
            with TaskServer(2, entrypoints=False, share={group!r}) as s:
                t = s.task(os.getpid)
                print(json.dumps({{"id": t, "worker": s.result(t, timeout=30), "supervisor": s.supervisor_pid,
                                  "workers": len(s.stats()["workers"])}}), flush=True)
                input()  # until the test has looked at the task from its side
                print(json.dumps(s.status(int(input())).status), flush=True)
        """)
        got = json.loads(child.stdout.readline() or child.communicate()[1])
        assert (got["supervisor"], got["workers"]) == (server.supervisor_pid, 2)
        assert got["worker"] in workers  # run by this pool's workers: the joiner forked none
        info = server.status(got["id"])
        assert (info.state, info.status, info.name) == ("done", "ok", "posix.getpid")
        assert server.result(got["id"]) == got["worker"]
        mine = server.task(os.getpid)
        assert mine > got["id"]  # ids from one queue: unique across the processes
        assert server.result(mine, timeout=WAIT) in workers
        out, err = child.communicate(f"\n{mine}\n", timeout=60)
        assert child.returncode == 0, err
        assert json.loads(out) == "ok"  # this process's task, seen from the joiner
        # The joiner left; the pool runs on for its builder.
        assert server.result(server.task(os.getpid), timeout=WAIT) in workers


def test_the_pool_outlives_its_builder_and_stops_when_the_last_member_leaves() -> None:
    group = _group()
    builder = _run(f"""
        import sys
        from taskmw import TaskServer
        with TaskServer(1, entrypoints=False, share={group!r}) as s:
            print(s.supervisor_pid, flush=True)
            sys.stdin.read()
    """)
    supervisor = int(builder.stdout.readline() or builder.communicate()[1])
    server = TaskServer(1, entrypoints=False, share=group)
    try:
        assert server.supervisor_pid == supervisor
        pool = local_pool(server)
        assert pool.owner == builder.pid and os.path.isdir(pool.spill_dir)
        assert builder.stdin is not None
        builder.stdin.close()  # the builder closes its server and exits (its pool's processes keep its pipes)
        assert builder.wait(timeout=60) == 0
        assert psutil.pid_exists(supervisor)
        task_id = server.task(os.getpid)
        assert server.result(task_id, timeout=WAIT) == server.stats()["workers"][0]["pid"]
        assert server.status(task_id).status == "ok"
    finally:
        server.close()
        for stream in (builder.stdout, builder.stderr):
            stream.close()  # type: ignore[union-attr]
    assert wait_until(lambda: not psutil.pid_exists(supervisor) or _zombie(supervisor)), "the pool did not stop"
    assert wait_until(lambda: not os.path.exists(pool.spill_dir)), "the pool's files were left"
    # The name is free again: the next process builds a fresh pool.
    with TaskServer(1, entrypoints=False, share=group) as fresh:
        assert fresh.supervisor_pid != supervisor and local_pool(fresh).owner == os.getpid()


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.skipif(os.geteuid() != 0, reason="changing uid needs root")
def test_a_process_of_another_user_is_refused_before_anything_is_sent() -> None:
    group = _group()
    with TaskServer(1, entrypoints=False, share=group) as server:
        address = Group(group, None).address
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the stranger: a raw connection, then the library's own join
            code = 1
            try:
                os.setuid(65534)
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                sock.settimeout(10)
                sock.connect(address)  # the pool's name, as root made it
                data, fds, _, _ = socket.recv_fds(sock, 1 << 16, 253)
                try:
                    join(Group(group, None))  # named after uid 65534: nobody listens there
                    joined = "none"
                except Refused:
                    joined = "refused"
                os.write(write, json.dumps([data.decode(), len(fds), joined]).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        with os.fdopen(read) as f:
            data, fds, joined = json.loads(f.read())
        assert (data, fds) == ("", 0)  # the supervisor hung up: no settings, no fds
        assert joined == "none"
        assert server.taskwait(os.getpid, timeout=WAIT) == server.stats()["workers"][0]["pid"]


@pytest.mark.skipif(os.geteuid() != 0, reason="changing uid needs root")
def test_a_socket_held_by_another_user_is_not_joined() -> None:
    """A stranger that takes a group's name first (abstract sockets have no
    permissions) is not trusted: joining raises, naming it."""
    group = _group()
    address = Group(group, None).address
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setuid(65534)
            squatter = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            squatter.bind(address)
            squatter.listen(1)
            os.write(write, b"x")
            squatter.accept()  # until killed
        finally:
            os._exit(0)
    try:
        os.read(read, 1)
        with pytest.raises(Refused, match="uid 65534"):
            TaskServer(1, entrypoints=False, share=group)
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(read)
        os.close(write)


_JOINER = """
    import os, sys, time
    import taskmw
    from taskmw import TaskServer
    with TaskServer(1, entrypoints=False, share={group!r}) as s:
        print(s.supervisor_pid, flush=True)
        for line in sys.stdin:  # one task per line, its outcome printed; "quit" (a new supervisor holds the pipe too)
            if line.strip() == "quit":
                break
            deadline = time.monotonic() + 30
            while True:
                try:
                    print("ok", s.result(s.task(os.getpid), timeout=30), flush=True)
                    break
                except taskmw.PoolClosed as exc:
                    if "restarted" in str(exc) and time.monotonic() < deadline:
                        time.sleep(0.05)  # its supervisor is being replaced
                        continue
                    print("closed", str(exc).replace(chr(10), " "), flush=True)
                    break
"""


def _ask(joiner: subprocess.Popen[str], line: str = "\n") -> list[str]:
    assert joiner.stdin is not None and joiner.stdout is not None
    joiner.stdin.write(line)
    joiner.stdin.flush()
    return joiner.stdout.readline().split(" ", 1)


def _quit(joiner: subprocess.Popen[str]) -> None:
    _ask(joiner, "quit\n")
    assert joiner.wait(timeout=60) == 0, joiner.stderr.read()  # type: ignore[union-attr]
    for stream in (joiner.stdin, joiner.stdout, joiner.stderr):
        stream.close()  # type: ignore[union-attr]


def test_a_joined_process_follows_the_supervisor_the_builder_restarts() -> None:
    group = _group()
    with TaskServer(1, entrypoints=False, share=group) as server:
        joiner = _run(_JOINER.format(group=group))
        try:
            first = int(joiner.stdout.readline() or joiner.communicate()[1])  # type: ignore[union-attr]
            assert first == server.supervisor_pid
            assert _ask(joiner)[0] == "ok"
            os.kill(first, 9)
            assert wait_until(lambda: server.supervisor_pid != first and not server.closed)
            answer = _ask(joiner)
            assert answer[0] == "ok", answer  # queued through the new supervisor's pool: the same one
            assert server.supervisor_pid != first
            assert wait_until(lambda: server.stats()["supervisor_pid"] == server.supervisor_pid)
        finally:
            _quit(joiner)
        assert server.taskwait(os.getpid, timeout=WAIT) > 0


def test_a_joined_process_whose_pool_died_with_its_builder_says_so() -> None:
    """The builder is gone and then its supervisor dies: nobody can restart
    it, and the joined process's task() raises PoolClosed naming it."""
    group = _group()
    builder = _run(f"""
        import sys
        from taskmw import TaskServer
        with TaskServer(1, entrypoints=False, share={group!r}) as s:
            print(s.supervisor_pid, flush=True)
            sys.stdin.read()
    """)
    supervisor = int(builder.stdout.readline() or builder.communicate()[1])  # type: ignore[union-attr]
    joiner = _run(_JOINER.format(group=group))
    try:
        assert int(joiner.stdout.readline() or joiner.communicate()[1]) == supervisor  # type: ignore[union-attr]
        builder.stdin.close()  # type: ignore[union-attr]
        assert builder.wait(timeout=60) == 0
        assert _ask(joiner)[0] == "ok"  # the pool outlived its builder
        workers = [c.pid for c in psutil.Process(supervisor).children()]
        os.kill(supervisor, 9)
        assert wait_until(lambda: all(_zombie(pid) for pid in [supervisor, *workers]), 40)
        verdict, why = _ask(joiner)
        assert verdict == "closed", why
        assert f"the shared pool's supervisor (pid {supervisor}) is gone" in why
    finally:
        _quit(joiner)
        builder.stdout.close()  # type: ignore[union-attr]
        builder.stderr.close()  # type: ignore[union-attr]


def test_a_pool_with_a_schedule_is_joined_by_a_process_without_one() -> None:
    """The schedule's completion channel and state travel with the pool (its
    geometry is the builder's); the joiner's settings need no schedule, and
    the periodic task runs in the one pool's supervisor."""
    group = _group()
    schedule = [Periodic(os.getpid, every=0.2)]
    with TaskServer(1, entrypoints=False, share=group, schedule=schedule) as server:
        pool = local_pool(server)
        assert pool.schedule_channel is not None and len(pool.channels) == pool.settings.max_dispatchers + 1
        child = _run(f"""
            import os
            from taskmw import TaskServer
            with TaskServer(1, entrypoints=False, share={group!r}, schedule=[]) as s:
                p = s.transport.pool
                print(s.supervisor_pid, len(p.channels), p.schedule_channel, s.result(s.task(os.getpid), timeout=30))
        """)
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        supervisor, channels, schedule_channel, ran_in = out.split()
        assert (int(supervisor), int(channels), int(schedule_channel)) == (
            server.supervisor_pid, len(pool.channels), pool.schedule_channel)  # fmt: skip
        assert int(ran_in) == server.stats()["workers"][0]["pid"]


def test_a_delayed_task_queued_by_a_joined_process_runs_when_due() -> None:
    """The scheduled directory is the pool's, and the joiner wakes the one
    supervisor: the task waits, runs, and is seen done from the builder."""
    group = _group()
    with TaskServer(1, entrypoints=False, share=group) as server:
        child = _run(f"""
            import os, time
            from taskmw import Task, TaskServer
            with TaskServer(1, entrypoints=False, share={group!r}) as s:
                t = s.task(Task(os.getpid), delay=0.5)
                print(t, s.status(t).state, s.result(t, timeout=30), flush=True)
        """)
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        task_id, state, ran_in = out.split()
        assert state == "scheduled"
        info = server.status(int(task_id))
        assert (info.state, info.status) == ("done", "ok")
        assert int(ran_in) == server.stats()["workers"][0]["pid"]


def test_the_pool_of_an_app_servers_workers_waits_for_them_while_the_master_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker that dies before its siblings have joined (at boot, or in a
    recycle) must not stop the pool they are about to join: with no member
    left, an automatic group's pool stops once its master is gone, or after
    the grace while the master runs; a named group's at once."""
    from taskmw import _share

    master = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        group = Group(f"test-{uuid.uuid4().hex[:8]}", master.pid)
        host = _share.Host.bind(group)
        assert host is not None
        try:
            host.adopt()  # as the supervisor: the builder's end closes, as when the builder (the only member) died
            files = PoolFiles([], "", "", 0, os.getpid())
            assert host.serve(files, Settings(), 0, os.getpid()) == 0
            assert not host.may_stop()  # the master runs: its other workers may still join
            monkeypatch.setattr(_share, "MEMBERLESS_GRACE", 0.2)
            assert wait_until(host.may_stop, timeout=WAIT)  # nobody came within the grace
            host.memberless_since = None
            monkeypatch.setattr(_share, "MEMBERLESS_GRACE", 3600.0)
            assert not host.may_stop()
            master.kill()
            master.wait(timeout=WAIT)
            assert host.may_stop()  # the master is gone: so are its workers
        finally:
            host.close()
        named = _share.Host.bind(Group(f"test-{uuid.uuid4().hex[:8]}", None))
        assert named is not None and named.may_stop()
        named.close()
    finally:
        master.kill()
        master.wait(timeout=WAIT)
