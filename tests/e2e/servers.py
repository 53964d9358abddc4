"""The e2e harness: run a real app server (gunicorn, uvicorn) as a subprocess,
talk to it over 127.0.0.1, stop it with SIGTERM, and make sure that no process
it started (HTTP workers, task supervisor, task workers) outlives it.

Every wait here has a deadline. The server is started in a new session
(``start_new_session=True``), so its whole tree shares one session id; the
processes of a run are found through ``/proc`` by that session id, by parent
links, and by the pids the app reports (in case something calls ``setsid``).
A process is identified by (pid, start time), so a recycled pid is never
mistaken for a survivor.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
APPS = HERE / "apps"

READY_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0  # SIGTERM → server exit
GONE_TIMEOUT = 10.0  # server exit → every process of its tree gone
REQUEST_TIMEOUT = 10.0


# -- /proc -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ProcStat:
    pid: int
    comm: str
    state: str
    ppid: int
    pgid: int
    sid: int
    starttime: int


def proc_stat(pid: int) -> ProcStat | None:
    """``/proc/<pid>/stat`` parsed, or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm is in parentheses and may itself hold spaces or ')': split at the last ')'.
    head, _, tail = raw.rpartition(")")
    comm = head.partition("(")[2]
    fields = tail.split()
    # fields[0] is field 3 (state); field N is fields[N - 3].
    return ProcStat(
        pid=pid,
        comm=comm,
        state=fields[0],
        ppid=int(fields[1]),
        pgid=int(fields[2]),
        sid=int(fields[3]),
        starttime=int(fields[19]),
    )


def all_procs() -> list[ProcStat]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_stat(int(name))
            if st is not None:
                out.append(st)
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


Ident = tuple[int, int]  # (pid, starttime)


def alive(ident: Ident) -> bool:
    """True if the process ``ident`` still exists and has not exited (a zombie
    has exited: it only waits for its parent, or init, to reap it)."""
    st = proc_stat(ident[0])
    return st is not None and st.starttime == ident[1] and st.state not in ("Z", "X")


def tree_of(root: int, extra: Iterable[int] = ()) -> dict[Ident, str]:
    """Every live process of ``root``'s session, its descendants, the ``extra``
    pids and their descendants: {(pid, starttime): description}."""
    procs = all_procs()
    by_pid = {p.pid: p for p in procs}
    children: dict[int, list[int]] = {}
    for p in procs:
        children.setdefault(p.ppid, []).append(p.pid)
    chosen = {p.pid for p in procs if p.sid == root}
    todo = [root, *extra, *chosen]
    seen: set[int] = set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        if pid in by_pid:
            chosen.add(pid)
        todo.extend(children.get(pid, ()))
    out = {}
    for pid in chosen:
        p = by_pid.get(pid)
        if p is not None and p.state not in ("Z", "X"):
            out[(pid, p.starttime)] = f"pid {pid} ppid {p.ppid} sid {p.sid} ({p.comm}): {cmdline(pid)[:160]}"
    return out


# -- the server --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class StopReport:
    returncode: int | None = None
    needed_sigkill: bool = False
    leftovers: list[str] = dataclasses.field(default_factory=list)
    """Processes of the tree still there GONE_TIMEOUT seconds after the server exited (then SIGKILLed)."""

    def problems(self) -> list[str]:
        out = []
        if self.needed_sigkill:
            out.append(f"the server did not exit within {STOP_TIMEOUT}s of SIGTERM: it was SIGKILLed")
        if self.leftovers:
            out.append(
                f"{len(self.leftovers)} process(es) outlived the server by {GONE_TIMEOUT}s (SIGKILLed):\n  "
                + "\n  ".join(self.leftovers)
            )
        return out


def _sigint_as_in_a_terminal() -> None:
    """In the server's process, before exec: SIGINT (Ctrl-C) acts as in a
    terminal even when this test run inherited it ignored (a background job
    of a non-interactive shell ignores it, and exec keeps that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Server:
    """One app server subprocess. Use :func:`running_server`."""

    def __init__(self, argv: list[str], workdir: Path, env: dict[str, str], port: int) -> None:
        self.argv = argv
        self.workdir = workdir
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.log_path = workdir / "server.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            argv,
            cwd=APPS,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_sigint_as_in_a_terminal,
        )
        self.pid = self.proc.pid
        self.known: dict[Ident, str] = {}
        """Every process of the tree seen so far (see :meth:`snapshot`)."""
        self.stop_report: StopReport | None = None

    # -- talking to it

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=REQUEST_TIMEOUT, trust_env=False)

    def log_tail(self, n: int = 60) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])

    def wait_ready(self, path: str = "/pool", timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        last: object = None
        with self.client() as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"server exited with {self.proc.returncode} before answering; log:\n{self.log_tail()}"
                    )
                try:
                    r = c.get(path, timeout=2.0)
                    if r.status_code == 200:
                        return
                    last = f"HTTP {r.status_code}: {r.text[:500]}"
                except httpx.HTTPError as e:
                    last = repr(e)
                time.sleep(0.1)
        raise TimeoutError(f"server not ready within {timeout}s (last: {last}); log:\n{self.log_tail()}")

    # -- its processes

    def snapshot(self, extra: Iterable[int] = ()) -> dict[Ident, str]:
        """Add the live processes of the tree (plus ``extra`` pids and their
        descendants) to :attr:`known`; returns what was found now."""
        now = tree_of(self.pid, extra)
        self.known.update(now)
        return now

    def supervisors(self, extra: Iterable[int] = ()) -> set[int]:
        """The pids of the pools' supervisors among the server's processes (a
        task worker just forked, still titled as its supervisor, is not one)."""
        titled = {pid for (pid, _), d in self.snapshot(extra).items() if "taskmw: supervisor" in d}
        return {pid for pid in titled if (st := proc_stat(pid)) is not None and st.ppid not in titled}

    # -- stopping it

    def stop(self, sig: int | None = signal.SIGTERM) -> StopReport:
        """SIGTERM the server (its main process only, as ``kill <pid>`` would;
        ``sig=None``: send nothing, the caller already signalled it), wait for
        it to exit, then for every known process of its tree to be gone.
        Whatever is still there after the deadlines is SIGKILLed and
        reported."""
        if self.stop_report is not None:
            return self.stop_report
        report = self.stop_report = StopReport()
        with contextlib.suppress(Exception):
            self.snapshot()
        try:
            if sig is not None and self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, sig)
            try:
                report.returncode = self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                report.needed_sigkill = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                report.returncode = self.proc.wait(timeout=10)
            deadline = time.monotonic() + GONE_TIMEOUT
            while time.monotonic() < deadline:
                if not any(alive(i) for i in self.known):
                    break
                time.sleep(0.05)
            for ident, desc in sorted(self.known.items()):
                if alive(ident):
                    st = proc_stat(ident[0])
                    report.leftovers.append(f"{desc} [state {st.state if st else '?'}, ppid {st.ppid if st else '?'}]")
        finally:
            self._kill_everything()
            self._log.close()
        return report

    def _kill_everything(self) -> None:
        """Last resort: SIGKILL every known process still alive and every member
        of the server's session (by session id, never by a bare process group:
        the server's own pid may be recycled by now). Repeated a few times, in
        case something forks meanwhile."""
        for _round in range(20):
            targets = {i for i in self.known if alive(i)}
            targets |= {(p.pid, p.starttime) for p in all_procs() if p.sid == self.pid and p.state not in ("Z", "X")}
            if not targets:
                break
            for pid, _start in targets:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)


def base_env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONSTARTUP", None)
    env["TASKMW_E2E_DIR"] = str(workdir)
    env["PYTHONPATH"] = os.pathsep.join([str(APPS), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("GUNICORN_CMD_ARGS", None)
    env.pop("WEB_CONCURRENCY", None)
    return env


def gunicorn_argv(app: str, port: int, workers: int, preload: bool, worker_class: str | None = None) -> list[str]:
    argv = [sys.executable, "-m", "gunicorn", app, "-b", f"127.0.0.1:{port}", "-w", str(workers)]
    argv += ["--graceful-timeout", "10", "--timeout", "30", "--log-level", "info"]
    if preload:
        argv.append("--preload")
    if worker_class:
        argv += ["-k", worker_class]
    if gunicorn_has_setting("control_socket_disable"):
        argv.append("--no-control-socket")  # gunicorn ≥ 24: no ~/.gunicorn/gunicorn.ctl
    return argv


def uvicorn_argv(app: str, port: int, workers: int | None = None) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", app,
        "--host", "127.0.0.1", "--port", str(port),
        "--log-level", "info", "--timeout-graceful-shutdown", "10",
        *(["--workers", str(workers)] if workers else []),
    ]  # fmt: skip


def gunicorn_has_setting(name: str) -> bool:
    from gunicorn.config import KNOWN_SETTINGS

    return any(s.name == name for s in KNOWN_SETTINGS)


@contextlib.contextmanager
def running_server(
    argv_for_port, workdir: Path, ready_path: str = "/pool", env: dict[str, str] | None = None
) -> Iterator[Server]:
    """Start the server ``argv_for_port(port)`` in ``workdir`` (its
    ``TASKMW_E2E_DIR``; ``env`` instead of :func:`base_env`), wait until
    ``ready_path`` answers, yield it; stop it on exit
    (SIGTERM, bounded waits, SIGKILL as a last resort: see
    :meth:`Server.stop`, whose report the test checks)."""
    workdir.mkdir(parents=True, exist_ok=True)
    last_error: Exception | None = None
    for _attempt in range(3):  # a free port can be taken between free_port() and bind()
        port = free_port()
        server = Server(argv_for_port(port), workdir, env if env is not None else base_env(workdir), port)
        try:
            server.wait_ready(ready_path)
        except Exception as e:
            server.stop(signal.SIGKILL)
            last_error = e
            if "Address already in use" in server.log_tail():
                continue
            raise
        break
    else:
        raise RuntimeError(f"could not start the server: {last_error}")
    try:
        yield server
    finally:
        server.stop()


# -- records written by the apps ------------------------------------------------------


def read_records(workdir: Path, prefix: str) -> list[dict]:
    """Every JSON line of ``<prefix>-<pid>.jsonl`` files in ``workdir``
    (a partial last line, still being written, is skipped)."""
    out = []
    for path in sorted(workdir.glob(f"{prefix}-*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return out
