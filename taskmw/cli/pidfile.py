"""The pid file of a ``taskmw start`` master and the check, through the
control socket next to it (:func:`taskmw.config.socket_path`), that it names
a running master."""

from __future__ import annotations

import contextlib
import logging
import os

from taskmw import _control, config
from taskmw.cli.errors import CLIError

log = logging.getLogger(__name__)


def read_pid(pid_file: str) -> int | None:
    """The pid in ``pid_file``, or None if there is no such file (or it is empty).

    Raises:
        CLIError: the file cannot be read or holds no number.
    """
    try:
        with open(pid_file) as f:
            return int(f.read().strip() or 0) or None
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CLIError(f"cannot read pid file {pid_file}: {exc}") from None


def is_master(pid: int, pid_file: str) -> bool:
    """True if the control socket next to ``pid_file`` answers for ``pid``;
    False if nothing (or something else) answers there.

    Raises:
        CLIError: it cannot be told: the socket is another user's
            (permission denied), or it took the connection but gave no answer
            in time. Neither is a stale pid file.
    """
    path = config.socket_path(pid_file)
    try:
        return _control.request(path, timeout=5.0).get("master_pid") == pid
    except _control.NotPermitted:
        raise CLIError(
            f"pid file {pid_file} names pid {pid}, and its control socket {path} is not yours (permission "
            "denied): a master of another user runs there, or left these files. Run taskmw as that user, or give "
            "another --pid-file; nothing was changed"
        ) from None
    except TimeoutError:
        raise CLIError(
            f"pid file {pid_file} names pid {pid}, and its control socket {path} took the connection but did not "
            "answer within 5s (a busy master?): try again"
        ) from None
    except (ConnectionError, OSError, ValueError):
        return False


def running_master(pid_file: str) -> int:
    """The pid of the running master of ``pid_file``.

    Raises:
        CLIError: no pid file, or its process is not a live taskmw master.
    """
    pid = read_pid(pid_file)
    if pid is None:
        raise CLIError(f"no pid file at {pid_file}: is taskmw running (started from this directory)? "
                       "Give --pid-file or TASKMW_PID_FILE")  # fmt: skip
    if not is_master(pid, pid_file):
        raise CLIError(f"pid file {pid_file} names pid {pid}, which is not a running taskmw master "
                       f"(nothing answers on {config.socket_path(pid_file)}); remove the stale pid file")  # fmt: skip
    return pid


def check_not_running(pid_file: str) -> None:
    """Refuse to start over a running master; remove a stale pid file (its
    pid may belong to another process by now, which gunicorn would refuse).

    Raises:
        CLIError: a master runs there.
    """
    pid = read_pid(pid_file)
    if pid is None:
        return
    if is_master(pid, pid_file):
        raise CLIError(f"taskmw already runs with pid {pid} (pid file {pid_file}): `taskmw stop` first")
    log.warning("removing the stale pid file %s (pid %d is no taskmw master)", pid_file, pid)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(pid_file)


def unlink_own_pid_file(pid_file: str) -> None:
    """Remove ``pid_file`` if it still names this process (gunicorn leaves it
    when the master fails while starting)."""
    with contextlib.suppress(OSError, ValueError):
        with open(pid_file) as f:
            if int(f.read().strip() or 0) == os.getpid():
                os.unlink(pid_file)
