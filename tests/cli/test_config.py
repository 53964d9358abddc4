"""The settings of ``taskmw start``: which source wins, how values parse, and
that docs/configuration.md lists every option."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from taskmw import TaskMiddleware, TaskServer, config, middleware

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_flag_beats_env_beats_app_beats_default() -> None:
    env = {"TASKMW_NUM_TASK_WORKERS": "3", "TASKMW_QUEUE_TIMEOUT": "2.5", "TASKMW_PORT": "9000"}
    app = {"task_workers": 7, "queue_timeout": 9.0, "shutdown_timeout": 11.0}
    got = config.resolve({"num_task_workers": 5}, env, app)
    assert (got.num_task_workers, got.sources["num_task_workers"]) == (5, "flag")
    assert (got.queue_timeout, got.sources["queue_timeout"]) == (2.5, "env")
    assert (got.shutdown_timeout, got.sources["shutdown_timeout"]) == (11.0, "app")
    assert (got.port, got.sources["port"]) == (9000, "env")
    assert (got.host, got.sources["host"]) == ("127.0.0.1", "default")
    # the pool gets what was given, under TaskServer's names, and nothing left at its default
    assert got.pool_settings() == {"task_workers": 5, "queue_timeout": 2.5, "shutdown_timeout": 11.0}


def test_app_settings_do_not_set_http_options() -> None:
    app = {"num_workers": 9, "task_workers": 2, "entrypoints": False, "disable_plugins": ["logging"], "other": 1}
    got = config.resolve({}, {}, app)
    assert got.num_workers == 2 and got.sources["num_workers"] == "default"
    assert got.num_task_workers == 2
    assert got.pool_settings() == {"task_workers": 2, "entrypoints": False, "disable_plugins": ["logging"]}


@pytest.mark.parametrize(
    ("name", "text", "value"),
    [
        ("TASKMW_DAEMONIZE", "yes", True),
        ("TASKMW_DAEMONIZE", "0", False),
        ("TASKMW_QUEUE_BYTES", "64M", 64 << 20),
        ("TASKMW_MAX_PAYLOAD_BYTES", "1GiB", 1 << 30),
        ("TASKMW_TASK_TIMEOUT", "none", None),
        ("TASKMW_TASK_TIMEOUT", "2.5", 2.5),
        ("TASKMW_MAX_TASKS_PER_WORKER", "500", 500),
    ],
)
def test_env_values_parse(name: str, text: str, value: object) -> None:
    opt = next(o for o in config.OPTIONS if o.env == name)
    assert getattr(config.resolve({}, {name: text}), opt.name) == value


def test_a_bad_env_value_is_named() -> None:
    with pytest.raises(ValueError, match="TASKMW_NUM_WORKERS='two'"):
        config.resolve({}, {"TASKMW_NUM_WORKERS": "two"})


def test_pool_options_are_taskserver_settings_with_its_defaults() -> None:
    params = inspect.signature(TaskServer.__init__).parameters
    for opt in config.OPTIONS:
        if opt.pool:
            name = config.pool_name(opt)
            assert name in params, f"{opt.name}: TaskServer has no setting {name!r}"
            assert params[name].default == opt.default, f"{opt.name}: default differs from TaskServer's"


def test_docs_list_every_option_with_flag_env_and_default() -> None:
    text = DOCS.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    for opt in config.OPTIONS:
        row = next((r for r in rows if f"`{opt.env}`" in r), None)
        assert row is not None, f"docs/configuration.md has no row for {opt.env}"
        for flag in opt.flags:
            assert f"`{flag}" in row, f"{opt.env}: flag {flag} missing from its row"


def test_pid_file_and_socket_defaults() -> None:
    assert config.pid_file_from(None, {}) == "taskmw.pid"
    assert config.pid_file_from(None, {"TASKMW_PID_FILE": "/run/x.pid"}) == "/run/x.pid"
    assert config.pid_file_from("a.pid", {"TASKMW_PID_FILE": "/run/x.pid"}) == "a.pid"
    assert config.socket_path("/run/x.pid") == "/run/x.pid.sock"


def test_middleware_joins_an_adopted_pool() -> None:
    """What an HTTP or task worker does under ``taskmw start``: a
    TaskMiddleware built while a pool is adopted registers its plugins there
    and builds no pool of its own."""

    class Plugin:
        pass

    def wsgi_app(environ, start_response):  # pragma: no cover - never called
        return []

    with TaskServer(task_workers=1, entrypoints=False) as server:
        middleware.adopt_pool(server)
        try:
            plugin = Plugin()
            wrapped = TaskMiddleware(wsgi_app, task_workers=3, plugins=[plugin], listeners={int: [str]})
            assert wrapped.server is server
            assert server.plugins.is_registered(plugin)
            assert server.plugins.get_plugin("taskmw.dispatcher").listeners[int] == [str]
        finally:
            middleware.adopt_pool(None)


def test_inspecting_records_settings_without_a_pool() -> None:
    seen: dict = {}
    middleware.inspect_only(seen)
    try:
        wrapped = TaskMiddleware(lambda e, s: [], task_workers=3, queue_timeout=1.5)
    finally:
        middleware.inspect_only(None)
    assert wrapped.server is None
    assert seen == {"task_workers": 3, "queue_timeout": 1.5}
