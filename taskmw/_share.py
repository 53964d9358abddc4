"""One pool for sibling HTTP workers: ``gunicorn -w N`` without
``--preload`` and ``uvicorn --workers N`` import the app in each worker, so
each would build its own pool. With sharing (the ``share`` setting), the
first sibling to build a pool builds it as ever, and its supervisor hands
the pool's memfds and eventfds to the later ones over an abstract unix
socket (``SCM_RIGHTS``); they join it as a forked process would (see
:meth:`taskmw.pool.Pool.attach`) and fork nothing.

The socket is named after the user and the sibling group
(:func:`group_of`). Both ends check the other's credentials
(``SO_PEERCRED``) before anything is read or sent: the same user, and for
an automatic group, a peer whose parent is the same app server master.
Each joined process keeps its connection open: it is its membership, and
the pool stops when every member (the builder included) has left (closed
it, or died). See README, "Topologies" and "Security model".
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import select
import socket
import sys
import time
from typing import NamedTuple

import psutil

from taskmw.pool import PoolFiles
from taskmw.settings import Settings

log = logging.getLogger(__name__)

_MAX_FDS = 253
"""File descriptors one ``SCM_RIGHTS`` message may carry (Linux's SCM_MAX_FD)."""
_JOIN_TIMEOUT = 10.0
"""Seconds a joining process waits for the pool's supervisor to answer
(it answers within a tick, 0.1 s, once the pool is built)."""
_JOIN_TRIES = 20
"""Times a process tries to build or join before giving up (a pool that is
stopping frees its socket; one that refuses this process keeps it)."""
_MESSAGE = 1 << 16
_auto_pools = itertools.count()
"""The n-th automatically shared pool of this process: siblings import the
same app, so their n-th pools are the same pool."""


MEMBERLESS_GRACE = 5.0
"""Seconds the pool of an app server's workers waits, with no member left
while the master runs, for a worker to join before it stops (see :meth:`Host.may_stop`)."""


class Group(NamedTuple):
    """Processes that share one pool."""

    name: str
    master: int | None
    """For an automatic group: the pid of the app server's master, which
    every member's parent must be (``None``: a group named in ``share``,
    open to every process of the user)."""

    @property
    def address(self) -> str:
        """The abstract unix socket of the group's pool (no file anywhere)."""
        return f"\0taskmw-{os.getuid()}-{self.name}"


def in_gunicorn_worker() -> bool:
    """True while a gunicorn worker loads the app (gunicorn without
    ``--preload``: with it, the arbiter loads the app before any fork)."""
    base = sys.modules.get("gunicorn.workers.base")
    if base is None:
        return False
    frame = sys._getframe(1)  # noqa: SLF001
    while frame is not None:
        if isinstance(frame.f_locals.get("self"), base.Worker):
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def in_uvicorn_worker() -> bool:
    """True in a child of ``uvicorn --workers N`` (N > 1): a process
    uvicorn's supervisor spawned (``multiprocessing``'s spawn, running
    ``uvicorn._subprocess.subprocess_started``), which imports the app."""
    if "uvicorn._subprocess" not in sys.modules:
        return False
    process = multiprocessing.current_process()
    target = getattr(process, "_target", None)
    if getattr(target, "__module__", None) != "uvicorn._subprocess":
        return False
    config = getattr(process, "_kwargs", {}).get("config")
    return (getattr(config, "workers", None) or 1) > 1


def group_of(share: str) -> Group | None:
    """The group a pool built here with setting ``share`` belongs to
    (``None``: it is not shared). ``"auto"`` shares only in an HTTP worker of
    an app server that imports the app in each worker (gunicorn without
    ``--preload``, ``uvicorn --workers N``); the group is that master's
    pid, the app's command line and directory, and which pool of the
    process it is."""
    if share == "never":
        return None
    if share != "auto":
        return Group(share, None)
    if not (in_gunicorn_worker() or in_uvicorn_worker()):
        return None
    master = os.getppid()
    app = hashlib.blake2s(repr((sys.argv, os.getcwd())).encode(), digest_size=6).hexdigest()
    return Group(f"{master}-{app}-{next(_auto_pools)}", master)


def _peer(sock: socket.socket) -> tuple[int, int]:
    """The pid and uid of the process at the other end of ``sock``."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    pid, uid, _ = (int.from_bytes(creds[i : i + 4], sys.byteorder) for i in (0, 4, 8))
    return pid, uid


def _parent_of(pid: int) -> int | None:
    try:
        return psutil.Process(pid).ppid()
    except psutil.Error:
        return None


def refusal(sock: socket.socket, group: Group) -> str | None:
    """Why the process at the other end of ``sock`` may not join (or serve)
    ``group``'s pool; ``None``: it may."""
    pid, uid = _peer(sock)
    if uid != os.getuid():
        return f"pid {pid} runs as uid {uid}, not {os.getuid()}"
    if group.master is not None and _parent_of(pid) != group.master:
        return f"pid {pid} is not a child of the app server's master (pid {group.master})"
    return None


class Host:
    """The serving end of a shared pool: the listening socket, and the
    connections of the members. Made by the builder before it forks the
    supervisor, which serves it (:meth:`serve`) from then on."""

    def __init__(self, group: Group, listener: socket.socket) -> None:
        self.group = group
        self.listener: socket.socket | None = listener
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self.builder_end = mine
        """The builder's membership (it keeps this end; the supervisor the other)."""
        self.members: list[socket.socket] = [theirs]
        """In the supervisor: one connection per member."""
        self.memberless_since: float | None = None
        """``time.monotonic()`` since when no member is left (``None``: some are)."""

    @classmethod
    def bind(cls, group: Group) -> Host | None:
        """Take ``group``'s socket; ``None`` if a live pool holds it."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            listener.bind(group.address)
        except OSError as exc:
            listener.close()
            if exc.errno == errno.EADDRINUSE:
                return None
            raise
        listener.listen(64)
        listener.setblocking(False)
        return cls(group, listener)

    def forked(self) -> None:
        """In the builder, after forking the supervisor: keep only its own
        membership (the supervisor holds the rest)."""
        if self.listener is not None:
            self.listener.close()
        for conn in self.members:
            conn.close()
        self.members = []

    def adopt(self) -> None:
        """In the supervisor: the builder's end is not its own, and a task
        worker it forks holds none of these."""
        self.builder_end.close()
        os.register_at_fork(after_in_child=self.close)

    def serve(self, files: PoolFiles, settings: Settings, pool_id: int, supervisor: int) -> int:
        """In the supervisor, each tick: hand the pool to the siblings that
        connected (refusing strangers), and drop the members that left.
        Returns how many members remain."""
        while self.listener is not None:
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            self._welcome(conn, files, settings, pool_id, supervisor)
        if self.members:
            poller = select.poll()
            for conn in self.members:
                poller.register(conn, select.POLLIN | select.POLLHUP)
            gone = {fd for fd, _ in poller.poll(0)}
            for conn in [c for c in self.members if c.fileno() in gone]:
                log.debug("a member of the shared pool left")
                self.members.remove(conn)
                conn.close()
        if self.members:
            self.memberless_since = None
        return len(self.members)

    def _welcome(self, conn: socket.socket, files: PoolFiles, settings: Settings, pool_id: int, sup: int) -> None:
        try:
            conn.settimeout(1.0)
            why = refusal(conn, self.group)
            if why is not None:
                log.warning("refused a process that asked to join the shared pool: %s", why)
                conn.close()
                return
            head = {
                # Plain values (JSON: nothing a joiner unpickles); the schedule runs in the supervisor.
                "settings": {
                    f.name: getattr(settings, f.name) for f in dataclasses.fields(settings) if f.name != "schedule"
                },
                "spill_dir": files.spill_dir,
                "scheduled_dir": files.scheduled_dir,
                "schedule_entries": files.schedule_entries,
                "owner": files.owner,
                "fds": len(files.fds),
                "pool": pool_id,
                "supervisor": sup,
            }
            chunks = [files.fds[i : i + _MAX_FDS] for i in range(0, len(files.fds), _MAX_FDS)]
            socket.send_fds(conn, [json.dumps(head).encode()], chunks[0])
            for chunk in chunks[1:]:
                socket.send_fds(conn, [b"f"], chunk)
        except OSError as exc:
            log.warning("could not hand the shared pool to a sibling: %s", exc)
            conn.close()
            return
        self.members.append(conn)

    def may_stop(self) -> bool:
        """With no member left: True if the pool should stop now. For a named
        group, at once. For the automatic group of an app server's workers,
        once its master is gone, or after :data:`MEMBERLESS_GRACE` seconds
        without a member while it runs: its workers come and go, and one
        that dies before its siblings have joined (at boot, or in a recycle)
        must not stop the pool they are about to join. (The grace, not only
        the master's exit: a master that waits for its workers through a pipe
        they inherited, as multiprocessing's join does for uvicorn's, waits
        for this supervisor too.)"""
        master = self.group.master
        if master is None:
            return True
        now = time.monotonic()
        if self.memberless_since is None:
            self.memberless_since = now
        try:
            alive = psutil.Process(master).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:  # gone
            alive = False
        return not alive or now - self.memberless_since >= MEMBERLESS_GRACE

    def stop_listening(self) -> None:
        """The pool stops: a sibling that comes now builds a fresh one."""
        if self.listener is not None:
            self.listener.close()
            self.listener = None

    def close(self) -> None:
        """Close every socket (in a task worker: none is its own)."""
        self.stop_listening()
        for conn in self.members:
            conn.close()
        self.members = []
        self.builder_end.close()


class Joined(NamedTuple):
    """A pool received from its supervisor."""

    settings: Settings
    files: PoolFiles
    pool_id: int
    supervisor: int
    member: socket.socket
    """This process's membership: keep it open while it uses the pool."""


class Refused(PermissionError):
    """The pool of a sharing group refused this process, or is not one of its user's."""


def join(group: Group) -> Joined | None:
    """Join ``group``'s pool; ``None`` if there is none (nobody listens, or
    it is stopping).

    Raises:
        Refused: the socket is held by a process of another user, or the
            pool refused this process.
        TimeoutError: the pool did not answer within 10 s.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    received: list[int] = []
    try:
        sock.settimeout(_JOIN_TIMEOUT)
        try:
            sock.connect(group.address)
        except (ConnectionRefusedError, FileNotFoundError):
            sock.close()
            return None
        pid, uid = _peer(sock)
        if uid != os.getuid():
            raise Refused(
                f"the socket of the shared pool {group.name!r} is held by pid {pid}, uid {uid}, "
                f"not this user ({os.getuid()}): not joining it"
            )
        data, fds, _, _ = socket.recv_fds(sock, _MESSAGE, _MAX_FDS)
        received.extend(fds)
        if not data:
            sock.close()
            return None  # refused, or stopping: the caller tells which by trying again
        head = json.loads(data)
        while len(received) < head["fds"]:
            data, fds, _, _ = socket.recv_fds(sock, _MESSAGE, _MAX_FDS)
            if not data:
                raise ConnectionError("the pool's supervisor hung up while sending its files")
            received.extend(fds)
        sock.settimeout(None)
        files = PoolFiles(received, head["spill_dir"], head["scheduled_dir"], head["schedule_entries"], head["owner"])
        return Joined(Settings(**head["settings"]), files, head["pool"], head["supervisor"], sock)
    except BaseException:
        for fd in received:
            os.close(fd)
        sock.close()
        raise


def build_or_join(group: Group) -> Host | Joined:
    """Take ``group``'s socket (then this process builds the pool) or join
    the pool that holds it.

    Raises:
        Refused: the pool refused this process (see :func:`join`).
    """
    for _ in range(_JOIN_TRIES):
        host = Host.bind(group)
        if host is not None:
            return host
        try:
            joined = join(group)
        except ConnectionError:  # reset: the pool began to stop before it answered
            joined = None
        if joined is not None:
            return joined
        time.sleep(0.05)
    raise Refused(
        f"the shared pool {group.name!r} refused this process (it is not a sibling: another user, or "
        "another parent), or stayed stopping; set share='never' to build a pool of its own"
    )


def close_fds(fds: list[int]) -> None:
    """Close received fds that are not needed (a pool joined again)."""
    for fd in fds:
        os.close(fd)
