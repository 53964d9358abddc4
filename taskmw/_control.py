"""The control socket of a ``taskmw start`` master: a unix socket (mode 0600,
next to the pid file) on which a thread of the master answers ``status``
requests with JSON, one request per connection.

The protocol is one JSON line each way: the client sends ``{"cmd": NAME,
...arguments}``, the master answers ``{"ok": true, ...}`` or ``{"ok":
false, "error": "..."}``. The commands are the master's (``status``, and
``reload`` with new settings) and the pool's (``task`` with a ``task_id``:
one task's record, :func:`task_answer`); stop and a plain reload are
signals to the master's pid.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from taskmw.interfaces import Server

log = logging.getLogger(__name__)

STATUS_SOCKET_ENV = "TASKMW_STATUS_SOCKET"
"""Where a pool built outside ``taskmw start`` answers ``taskmw status --socket``."""


class NotListening(ConnectionError):
    """Nothing listens on the control socket (no socket file, or refused):
    no master runs there."""


class NotPermitted(ConnectionError):
    """The control socket is not this user's to use (permission denied):
    whether a master runs there cannot be told."""


_RATE_WINDOW = 10.0  # seconds of finished-task totals behind tasks/s
_SAMPLE_EVERY = 1.0
_MAX_REQUEST = 1 << 16


class ControlServer:
    """Serves ``commands`` on the unix socket ``path``: a request
    ``{"cmd": name, **kwargs}`` is answered with ``commands[name](**kwargs)``
    (a JSON-able dict).

    It also samples the pool's finished-task count every second, so that a
    single ``status`` request can report tasks/s over the last ten seconds
    (:meth:`rate`).

    ``server`` is the pool whose ``task`` command this serves (one task's
    record, :func:`task_answer`), unless ``commands`` has its own; ``None``:
    the pool :func:`taskmw.middleware.adopt_pool` gave this process
    (``taskmw start``'s master), looked up when asked.
    """

    def __init__(
        self,
        path: str,
        commands: dict[str, Callable[..., dict[str, Any]]],
        finished: Callable[[], int | None],
        server: Server | None = None,
    ) -> None:
        self.path = path
        self.commands = dict(commands)
        self.commands.setdefault("task", lambda task_id: task_answer(server or _adopted(), task_id))
        self.finished = finished
        self.samples: collections.deque[tuple[float, int]] = collections.deque()
        self._stop = threading.Event()
        if len(os.fsencode(path)) >= 108:
            raise ValueError(f"control socket path {path!r} is too long for a unix socket: use a shorter --pid-file")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # left by a master that was killed (its pid file was checked first)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket is created 0600: only this user may ask
        try:
            self.sock.bind(path)
        finally:
            os.umask(old)
        self.sock.listen(8)
        self.sock.settimeout(_SAMPLE_EVERY)
        self.thread = threading.Thread(target=self._serve, name="taskmw-control", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        """Stop answering and remove the socket file."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self.sock.close()
        if self.thread.is_alive():  # not started when the master failed before it listened
            self.thread.join(5.0)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def forget(self) -> None:
        """In a forked child: close this process's copy of the socket (the
        master's thread is not here; the socket file stays)."""
        with contextlib.suppress(OSError):
            os.close(self.sock.detach())

    def rate(self) -> float | None:
        """Tasks finished per second over the last ten seconds (None until
        two samples exist)."""
        if len(self.samples) < 2:
            return None
        (t0, n0), (t1, n1) = self.samples[0], self.samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else None

    def _sample(self) -> None:
        try:
            done = self.finished()
        except Exception:
            log.debug("sampling the pool's totals failed", exc_info=True)
            return
        if done is None:
            return
        now = time.monotonic()
        self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[0][0] > _RATE_WINDOW:
            self.samples.popleft()

    def _serve(self) -> None:
        next_sample = 0.0
        while not self._stop.is_set():
            if time.monotonic() >= next_sample:
                self._sample()
                next_sample = time.monotonic() + _SAMPLE_EVERY
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                log.exception("control socket %s: accept failed", self.path)
                time.sleep(_SAMPLE_EVERY)
                continue
            with conn:
                self._handle(conn)

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(5.0)
        try:
            request = json.loads(_read_line(conn))
            command = self.commands.get(request.pop("cmd", None))
            if command is None:
                raise ValueError(f"unknown command (known: {', '.join(self.commands)})")
            reply: dict[str, Any] = {"ok": True, **command(**request)}
        except Exception as exc:
            log.exception("control socket request failed")
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps(reply).encode() + b"\n")


def _read_line(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > _MAX_REQUEST:
            raise ValueError("control request too large")
    return data


def request(path: str, cmd: str = "status", timeout: float = 5.0, **kwargs: Any) -> dict[str, Any]:
    """Send the master listening on ``path`` the command ``cmd`` with
    ``kwargs``; returns its answer.

    Raises:
        NotListening: nothing listens there.
        NotPermitted: the socket is another user's.
        ConnectionError: it answered with an error.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise NotListening(f"no taskmw master answers on {path} ({exc.strerror})") from None
        except PermissionError as exc:
            raise NotPermitted(f"cannot use the control socket {path}: {exc.strerror} (it is another user's)") from None
        sock.sendall(json.dumps({"cmd": cmd, **kwargs}).encode() + b"\n")
        reply = json.loads(_read_line(sock) or b"null")
    if not isinstance(reply, dict) or not reply.get("ok"):
        error = reply.get("error") if isinstance(reply, dict) else "no answer"
        raise ConnectionError(f"the taskmw master on {path} answered with an error: {error}")
    return reply


def pool_status(server: Server, started: float, rate: float | None) -> dict[str, Any]:
    """The ``status`` answer for ``server`` as seen from the process that
    built it (``taskmw start`` adds its HTTP workers and app)."""
    return {
        "master_pid": os.getpid(),
        "app": None,
        "interface": None,
        "bind": None,
        "started": started,
        "now": time.time(),
        "num_workers": None,
        "http_workers": [],
        "pool": server.stats(),
        "tasks_per_second": rate,
        "reload_task_workers": hasattr(server, "reload"),
    }


def task_answer(server: Server | None, task_id: object) -> dict[str, Any]:
    """The ``task`` answer: ``{"task": TaskInfo.as_dict()}``, or ``{"task":
    None, "unknown": reason}`` for an id the pool has no record of (an
    answer, not an error: nothing to log in the master)."""
    if server is None:
        raise LookupError("this process has no task pool that keeps task records")
    if not isinstance(task_id, int) or isinstance(task_id, bool):
        raise ValueError(f"task_id must be an int, got {task_id!r}")
    try:
        info = server.status(task_id)
    except LookupError as exc:  # taskmw.UnknownTask: never issued, or evicted
        return {"task": None, "unknown": str(exc)}
    return {"task": info.as_dict(), "now": time.time()}


def _adopted() -> Server | None:
    from taskmw.middleware import adopted_pool  # not at import: middleware imports this module

    return adopted_pool()


def finished_count(server: Server) -> int:
    """Every finish the pool made (what tasks/s is computed from)."""
    return sum(server.stats()["totals"].values())


def serve_status(server: Server, path: str) -> ControlServer | None:
    """Answer ``taskmw status --socket PATH`` for ``server`` from this process
    (the pool's builder: gunicorn's master with ``--preload``, a uvicorn
    process, a script) until it exits. Returns None, with a warning, if
    another live process already answers on ``path``."""
    with contextlib.suppress(ConnectionError, OSError, ValueError):
        request(path, timeout=1.0)
        log.warning("status socket %s: another process answers there; this process does not serve it", path)
        return None
    started = time.time()
    control = ControlServer(path, {"status": lambda: pool_status(server, started, control.rate())},
                            lambda: finished_count(server), server)  # fmt: skip
    control.start()
    owner = os.getpid()

    def close() -> None:
        if os.getpid() == owner:  # not in a forked child (an HTTP worker)
            control.close()

    atexit.register(close)
    return control
