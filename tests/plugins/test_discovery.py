"""Plugin discovery: installed plugins (entry-point group ``taskmw``) load by
default in every pool and run in its task workers; a setting or an
environment variable disables one by name or all of them; a plugin that
fails to import is reported once, by name, and the pool runs without it.

The installed distribution here is real metadata (a ``.dist-info`` folder
with ``entry_points.txt``) on ``sys.path``, which is all that
``importlib.metadata`` (and so taskmw) looks at."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskmw import TaskFailed, TaskServer, plugins
from taskmw.testing import close_pool

PLUGIN = '''
import os
import taskmw

class Pong:
    """Answers the data object "ping" in the task worker."""

    @taskmw.hookimpl
    def on_task(self, event):
        if event.data == "ping":
            event.set_return_value(("pong", os.getpid()))
            event.complete()

plugin = Pong()
'''


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A distribution with two taskmw plugins: ``pong`` and ``broken`` (its
    module does not exist)."""
    (tmp_path / "pong_plugin.py").write_text(PLUGIN)
    info = tmp_path / "pong_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pong-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[taskmw]\npong = pong_plugin:plugin\nbroken = no_such_module:plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "_failed_plugins", set())
    monkeypatch.delenv("TASKMW_DISABLE_PLUGINS", raising=False)
    yield tmp_path
    sys.modules.pop("pong_plugin", None)


def test_installed_plugins_load_by_default_and_a_broken_one_is_reported_once(
    installed: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="taskmw.server")
    pool = TaskServer(1, backend="local")
    try:
        assert pool.plugins.has_plugin("pong") and not pool.plugins.has_plugin("broken")
        answer, pid = pool.taskwait("ping", timeout=20)
        assert answer == "pong" and pid != os.getpid()  # it ran in the task worker
        second = TaskServer(1, backend="eager")  # another pool in this process: not reported again
        assert second.taskwait("ping") == ("pong", os.getpid())
        second.close()
    finally:
        close_pool(pool)
    reports = [r for r in caplog.records if "failed to load" in r.getMessage()]
    assert len(reports) == 1
    assert "'broken'" in reports[0].getMessage() and "no_such_module" in reports[0].getMessage()
    assert reports[0].exc_info is not None  # with the import error's traceback


def test_disable_one_by_name(installed: Path) -> None:
    pool = TaskServer(1, backend="local", disable_plugins=["pong"])
    try:
        assert not pool.plugins.has_plugin("pong")
        with pytest.raises(TaskFailed, match="nothing handled the task"):
            pool.taskwait("ping", timeout=20)
    finally:
        close_pool(pool)


@pytest.mark.parametrize(
    ("env", "kwargs", "loaded"),
    [
        ("", {}, {"pong"}),
        ("pong", {}, set()),
        (" other , pong ", {}, set()),
        ("*", {}, set()),
        ("", {"entrypoints": False}, set()),
        ("other", {"disable_plugins": ["pong"]}, set()),
        ("other", {}, {"pong"}),
    ],
)
def test_disable_by_environment_or_all(
    installed: Path, monkeypatch: pytest.MonkeyPatch, env: str, kwargs: dict[str, object], loaded: set[str]
) -> None:
    monkeypatch.setenv("TASKMW_DISABLE_PLUGINS", env)
    with TaskServer(1, backend="eager", **kwargs) as eager:  # the plugin manager every backend builds
        assert eager.plugins.has_plugin("pong") == ("pong" in loaded)
        assert not eager.plugins.has_plugin("broken")
        if env == "*" or kwargs.get("entrypoints") is False:  # no installed plugin at all (taskmw-logging neither)
            assert [n for n, _ in eager.plugins.list_name_plugin() if not n.startswith("taskmw.")] == []


def test_disable_plugins_must_be_a_list_of_names() -> None:
    with pytest.raises(ValueError, match="disable_plugins must be a list of plugin names, got 'logging'"):
        TaskServer(1, backend="eager", disable_plugins="logging")  # type: ignore[arg-type]
