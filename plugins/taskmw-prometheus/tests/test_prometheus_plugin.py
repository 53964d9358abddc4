"""taskmw-prometheus does its work where it is needed, not when imported: the
multiprocess directory, ``PROMETHEUS_MULTIPROC_DIR`` and the removal at exit
are set up when the plugin is loaded (a pool being built, before it forks), a
metric is used or a scrape is served. Every test runs a script in a
subprocess with its own temporary folder (``TMPDIR``) and checks what it left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def run(code: str, tmp_path: Path) -> dict[str, Any]:
    """Run ``code`` with ``TMPDIR`` an empty folder of ``tmp_path`` and no
    ``PROMETHEUS_MULTIPROC_DIR``; returns the JSON of its last stdout line."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKMW_", "PYTEST_", MULTIPROC_ENV))}
    env["TMPDIR"] = str(tmp)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=tmp_path, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    out["stderr"] = proc.stderr
    out["left"] = sorted(p.name for p in tmp.iterdir())
    return out


def test_importing_the_module_has_no_side_effect(tmp_path: Path) -> None:
    got = run(
        """
        import atexit, json, os, sys
        import taskmw  # the core's own import-time work is not the plugin's

        env = dict(os.environ)
        registered = []
        register = atexit.register
        atexit.register = lambda f, *a, **k: registered.append(repr(f)) or register(f, *a, **k)
        import taskmw_prometheus

        print(json.dumps({
            "env_changed": sorted(set(os.environ.items()) ^ set(env.items())),
            "atexit": registered,
            "prometheus_client": "prometheus_client" in sys.modules,
            "files": os.listdir(os.environ["TMPDIR"]),
        }))
        """,
        tmp_path,
    )
    assert got["env_changed"] == [] and got["atexit"] == [] and got["files"] == [], got
    assert not got["prometheus_client"], "prometheus_client was imported (its mode would be fixed by then)"
    assert got["left"] == []


def test_loading_the_plugin_sets_up_the_directory_once_and_removes_it_at_exit(tmp_path: Path) -> None:
    got = run(
        """
        import json, os
        import taskmw_prometheus
        from prometheus_client import values

        plugin = taskmw_prometheus.plugin  # what the entry point loads
        path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
        taskmw_prometheus.TASKS.labels("ok").inc()
        print(json.dumps({
            "path": path, "again": taskmw_prometheus.setup(), "same_plugin": plugin is taskmw_prometheus.plugin,
            "multiprocess": values.ValueClass is not values.MutexValue, "files": sorted(os.listdir(path)),
        }))
        """,
        tmp_path,
    )
    assert Path(got["path"]).parent == tmp_path / "tmp" and Path(got["path"]).name.startswith("taskmw-prometheus-")
    assert got["again"] == got["path"] and got["same_plugin"] and got["multiprocess"]
    assert any(name.startswith("counter_") for name in got["files"]), got["files"]
    assert got["left"] == [], "the directory outlived the process that made it"


def test_prometheus_client_imported_first_still_counts_across_processes(tmp_path: Path) -> None:
    got = run(
        """
        import json, os
        import prometheus_client  # before the plugin set the variable: its mode is per process
        import taskmw_prometheus

        taskmw_prometheus.TASKS.labels("ok").inc()
        path = taskmw_prometheus.MULTIPROC_DIR
        print(json.dumps({"files": sorted(os.listdir(path))}))
        """,
        tmp_path,
    )
    assert "prometheus_client was imported before taskmw_prometheus set PROMETHEUS_MULTIPROC_DIR" in got["stderr"]
    assert any(name.startswith("counter_") for name in got["files"]), got["files"]


def test_a_pool_built_with_the_entry_point_counts_in_every_process(tmp_path: Path) -> None:
    got = run(
        """
        import json, os, struct, time
        import taskmw
        import taskmw_prometheus

        def add(a, b):
            return a + b

        with taskmw.TaskServer(2) as server:  # loads the plugin (entry point) before forking its workers
            assert server.taskwait(add, 1, 2, timeout=30) == 3
            deadline = time.monotonic() + 30  # both workers past on_worker_start (a worker is idle after it)
            while any(w["state"] != "idle" for w in server.stats()["workers"]) and time.monotonic() < deadline:
                time.sleep(0.01)
            text = ""
            # The finish's counter is written by the on_finish hook, which runs just after taskwait()
            # returns, and prometheus_client cannot read a metrics file another thread is creating.
            while 'taskmw_tasks_total{status="ok"} 1.0' not in text and time.monotonic() < deadline:
                try:
                    text = taskmw_prometheus.metrics_text(server).decode()
                except struct.error:
                    time.sleep(0.01)
        print(json.dumps({"text": text}))
        """,
        tmp_path,
    )
    lines = got["text"].splitlines()
    assert 'taskmw_tasks_total{status="ok"} 1.0' in lines
    assert {'taskmw_task_worker_starts_total{worker_id="0"} 1.0',
            'taskmw_task_worker_starts_total{worker_id="1"} 1.0'} <= set(lines), got["text"]  # fmt: skip
    assert got["left"] == []
