"""gunicorn's own settings under ``taskmw start``: a gunicorn.conf.py,
GUNICORN_CMD_ARGS and --gunicorn-arg reach gunicorn; the settings taskmw owns
are refused with the reason; ``--help`` shows the true defaults; ``--version``."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from taskmw import config
from taskmw.cli import gunicorn_cfg
from taskmw.cli.errors import CLIError
from tests.cli.test_cli import cli_env, status, stop_and_check, taskmw, taskmw_server, wait_for
from tests.e2e.servers import free_port

APPS = Path(__file__).resolve().parent / "apps"


def test_file_then_env_then_args(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "gunicorn.conf.py").write_text("workers = 5\nmax_requests = 10\nkeepalive = 7\nunrelated = 1\n")
    monkeypatch.chdir(tmp_path)  # ./gunicorn.conf.py, as gunicorn finds it
    env = {"GUNICORN_CMD_ARGS": "--max-requests 20 --backlog 64"}
    got = gunicorn_cfg.user_settings(None, env, ["--max-requests=30", "--limit-request-line 100"])
    assert got == {"workers": 5, "max_requests": 30, "keepalive": 7, "backlog": 64, "limit_request_line": 100}


def test_taskmw_flags_win_over_gunicorn_settings_which_win_over_taskmw_defaults() -> None:
    settings = config.resolve({"log_level": "debug"}, {})
    rest = gunicorn_cfg.apply(settings, {"workers": 5, "loglevel": "warning", "max_requests": 3})
    assert (settings.num_workers, settings.sources["num_workers"]) == (5, "gunicorn")
    assert (settings.log_level, settings.sources["log_level"]) == ("debug", "flag")
    assert rest == {"max_requests": 3}


@pytest.mark.parametrize(
    ("where", "text", "setting", "reason"),
    [
        ("GUNICORN_CMD_ARGS", "-k gevent", "worker_class", "taskmw picks the worker"),
        ("--gunicorn-arg", "--preload", "preload_app", "the master must not import the app"),
        ("file", "bind = '0.0.0.0:80'", "bind", "use --host and --port"),
        ("file", "def post_fork(server, worker): pass", "post_fork", "taskmw's master runs its own hook"),
        ("--gunicorn-arg", "--daemon", "daemon", "use --daemonize"),
    ],
)
def test_settings_taskmw_owns_are_refused_with_the_reason(
    tmp_path: Path, where: str, text: str, setting: str, reason: str
) -> None:
    conf = tmp_path / "g.py"
    conf.write_text(text if where == "file" else "")
    env = {"GUNICORN_CMD_ARGS": text} if where == "GUNICORN_CMD_ARGS" else {}
    with pytest.raises(CLIError) as err:
        gunicorn_cfg.user_settings(str(conf), env, [text] if where == "--gunicorn-arg" else [])
    source = str(conf) if where == "file" else where
    assert str(err.value).startswith(f"{source} sets gunicorn's {setting}, which taskmw start owns: {reason}")


def test_unknown_arguments_and_missing_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CLIError, match="--gunicorn-arg: not a gunicorn option: --no-such-thing"):
        gunicorn_cfg.user_settings(None, {}, ["--no-such-thing"])
    with pytest.raises(CLIError, match="no such file"):
        gunicorn_cfg.user_settings(str(tmp_path / "none.py"), {}, [])


def test_start_refuses_an_owned_setting_in_one_line_before_importing_anything(tmp_path: Path) -> None:
    done = taskmw("start", "no_such_module:app", "--gunicorn-arg=--preload", "--pid-file", str(tmp_path / "t.pid"),
                  "--port", str(free_port()), env=cli_env(tmp_path), timeout=60)  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("taskmw start: --gunicorn-arg sets gunicorn's preload_app, which taskmw start owns")


def test_help_shows_true_defaults_and_version() -> None:
    done = taskmw("start", "--help", env=cli_env(Path(".")), timeout=30)
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())  # argparse wraps lines
    assert "(default: None)" not in text
    for expected in ("[TASKMW_NUM_WORKERS; 2]", "[TASKMW_NUM_TASK_WORKERS; 4]", "[TASKMW_QUEUE_BYTES; 16M]",
                     "[TASKMW_TASK_TIMEOUT; none]", "[TASKMW_DAEMONIZE; off]", "[TASKMW_PORT; 8000]"):  # fmt: skip
        assert expected in text, expected
    version = taskmw("--version", env=cli_env(Path(".")), timeout=30)
    assert version.returncode == 0 and version.stdout.startswith("taskmw 0."), version


def test_gunicorn_settings_reach_the_server(tmp_path: Path) -> None:
    """--config's workers = 3, GUNICORN_CMD_ARGS's access log format,
    --access-logfile and --gunicorn-arg's request line limit, on a real server."""
    conf = tmp_path / "settings.py"
    conf.write_text("workers = 3\n")
    access = tmp_path / "access.log"
    args = ("--config", str(conf), "--access-logfile", str(access), "--gunicorn-arg=--limit-request-line=200")
    extra = {"GUNICORN_CMD_ARGS": "--access-logformat 'seen %(s)s %(U)s'"}
    with taskmw_server(tmp_path, "examples.demo:app", *args, chdir=APPS.parents[2], ready="/jobs", **extra) as (
        server,
        pid_file,
    ):
        st = wait_for(lambda: (s := status(pid_file, server.cli_env)) and len(s["http_workers"]) == 3 and s, "3 HTTP")
        assert st["num_workers"] == 3
        with server.client() as client:
            assert client.get("/jobs").status_code == 200
            try:
                long = client.get("/jobs", params={"x": "y" * 400}).status_code
            except httpx.RemoteProtocolError:
                long = None
            assert long in (400, 414, None), long  # gunicorn refuses the request line before the app sees it
        wait_for(lambda: access.exists() and "seen 200 /jobs" in access.read_text(), "the access log line")
        stop_and_check(server, pid_file)
