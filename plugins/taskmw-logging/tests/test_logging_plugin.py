"""taskmw-logging, installed with pip as a user would (``.ci/run``): a script
that never mentions logging gets every task, and its workers' starts and
stops, in its stderr. Each test runs the script in a real subprocess (its
pool is real too) and checks that none of its processes is left."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from importlib.metadata import distribution, entry_points
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
DEMO = HERE / "log_demo.py"
DIST = HERE.parent


def run_demo(**env: str) -> tuple[dict[str, Any], list[str]]:
    """Run log_demo.py with ``env`` added; returns its report and its stderr lines."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("TASKMW_", "PYTEST_"))}
    environ.update(env)
    proc = subprocess.run(
        [sys.executable, str(DEMO)], env=environ, capture_output=True, text=True, timeout=120, cwd=HERE
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["tasks"] == [[1, "ok"], [2, "error"], [3, "lost"], [4, "ok"]], proc.stderr
    deadline = time.monotonic() + 20
    while any(Path(f"/proc/{p}").exists() for p in report["pool"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(Path(f"/proc/{p}").exists() for p in report["pool"]), "pool processes left behind"
    return report, proc.stderr.splitlines()


def test_installed_as_a_distribution_with_an_entry_point() -> None:
    import taskmw_logging

    dist = distribution("taskmw-logging")
    assert [ep.value for ep in entry_points(group="taskmw") if ep.name == "logging"] == ["taskmw_logging:plugin"]
    assert dist.locate_file("taskmw_logging/__init__.py") == Path(taskmw_logging.__file__)
    assert DIST not in Path(taskmw_logging.__file__).parents  # installed, not the source tree


def test_importing_the_module_has_no_side_effect() -> None:
    """The settings are read, and the stderr handler added, when the plugin
    is loaded (the entry point reads ``plugin``), not at import."""
    code = """if True:
        import json, logging
        import taskmw_logging

        before = [h.name for h in logging.getLogger("taskmw").handlers]
        try:
            taskmw_logging.plugin
        except ValueError as exc:
            error = str(exc)
        print(json.dumps({"before": before, "error": error}))
    """
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("TASKMW_", "PYTEST_"))}
    environ["TASKMW_LOGGING_FORMAT"] = "xml"  # a bad setting: raised when loaded, not at import
    proc = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["before"] == [] and "format must be one of text, json, got 'xml'" in got["error"], got


def parse(lines: list[str]) -> list[list[str]]:
    """The text-format lines as [pid, level, logger, message]; a traceback's
    lines are joined to the line of the task that raised."""
    pattern = re.compile(r"^\S+ \S+ \[(\d+)\] (\w+) (\S+): (.*)$")
    parsed: list[list[str]] = []
    for line in lines:
        if m := pattern.match(line):
            parsed.append(list(m.groups()))
        else:
            assert parsed and parsed[-1][3].startswith("task 2 error:"), f"unexpected stderr line {line!r}: {lines}"
            parsed[-1][3] += "\n" + line
    return parsed


def test_by_default_every_finish_and_worker_is_logged_and_starts_are_debug() -> None:
    report, lines = run_demo()
    parsed = parse(lines)
    texts = [text for _pid, _level, logger, text in parsed if logger == "taskmw.tasks"]
    assert not [t for t in texts if " started: " in t], lines  # start lines are DEBUG
    finishes = [t.split(":", 1)[0] for t in texts if re.match(r"task \d+ \w+: ", t)]
    assert finishes == ["task 1 ok", "task 2 error", "task 3 lost", "task 4 ok"], lines
    assert len([t for t in texts if re.fullmatch(r"task worker 0 (started|stopped) \(pid \d+\)", t)]) == 3, lines


def test_every_task_and_worker_is_logged_with_no_code_change() -> None:
    report, lines = run_demo(TASKMW_LOGGING_START_LEVEL="INFO")
    main = report["pid"]
    by_text = {text: (int(pid), level, logger) for pid, level, logger, text in parse(lines)}

    def one(regex: str) -> tuple[re.Match[str], int, str, str]:
        found = [(m, *by_text[t]) for t in by_text if (m := re.fullmatch(regex, t, re.DOTALL))]
        assert len(found) == 1, f"{regex!r} matched {len(found)} lines: {lines}"
        return found[0]

    # starts in the task worker, with the callable's name
    first = one(r"task 1 started: __main__\.add on worker 0")
    assert first[1] != main and first[3] == "taskmw.tasks" and first[2] == "INFO"
    one(r"task 2 started: __main__\.boom on worker 0")
    # finishes in the process that queued the task, with status, duration and the error
    ok = one(r"task 1 ok: __main__\.add in (\d+\.\d+)s on worker 0")
    assert ok[1] == main and ok[2] == "INFO"
    err = one(
        r"task 2 error: __main__\.boom in \d+\.\d+s on worker 0: ValueError: bad input\n"
        r"Traceback \(most recent call last\):\n.*, in boom\n(.*\n)?ValueError: bad input"
    )
    assert err[1] == main and err[2] == "WARNING"
    lost = one(  # the name the worker noted when the task started: the supervisor's finish has none
        r"task 3 lost: __main__\.die in \d+\.\d+s on worker 0: WorkerLost: task worker 0 \(pid (\d+)\) was killed "
        r"by SIGKILL.*"
    )
    dead = int(lost[0].group(1))
    # worker start, death (the supervisor's line), replacement, stop
    starts = [int(m.group(1)) for t in by_text if (m := re.fullmatch(r"task worker 0 started \(pid (\d+)\)", t))]
    assert len(starts) == 2 and starts[0] == dead and starts[1] != dead
    died = one(rf"task worker 0 \(pid {dead}\) was killed by SIGKILL; 1 task\(s\) lost")
    assert died[3] == "taskmw.supervisor"
    stop = one(rf"task worker 0 stopped \(pid {starts[1]}\)")
    assert stop[1] == starts[1]
    replaced = one(r"task 4 started: __main__\.add on worker 0")
    assert replaced[1] == starts[1]


def test_json_lines_logger_name_and_level_are_settings() -> None:
    report, lines = run_demo(
        TASKMW_LOGGING_FORMAT="json", TASKMW_LOGGING_LOGGER="shop.tasks", TASKMW_LOGGING_LEVEL="debug"
    )
    records = [json.loads(line) for line in lines]  # every line is a JSON object
    tasks = [r for r in records if r["logger"] == "shop.tasks"]
    finishes = {r["task_id"]: r for r in tasks if r["event"] == "task.finish"}
    assert {r["task_id"] for r in tasks if r["event"] == "task.start"} == {1, 2, 3, 4}
    assert finishes[1]["name"] == "__main__.add" and finishes[2]["name"] == "__main__.boom"
    assert finishes[1]["status"] == "ok" and finishes[1]["level"] == "DEBUG" and finishes[1]["duration"] >= 0
    assert finishes[2]["level"] == "WARNING" and finishes[2]["error"]["type"] == "ValueError"
    assert "bad input" in finishes[2]["error"]["traceback"]
    assert [r["event"] for r in tasks if r["event"].startswith("worker.")] == [
        "worker.start",
        "worker.start",
        "worker.stop",
    ]
    assert any(r["logger"] == "taskmw.supervisor" and "SIGKILL" in r["message"] for r in records)


def test_disabled_by_name_it_logs_nothing() -> None:
    _, lines = run_demo(TASKMW_DISABLE_PLUGINS="logging")
    assert not [line for line in lines if "taskmw.tasks" in line], lines


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("TASKMW_LOGGING_FORMAT", "xml", "format must be one of text, json, got 'xml'"),
        ("TASKMW_LOGGING_BATCH", "lots", "batch must be a whole number of lines, 1 or more, got 'lots'"),
    ],
)
def test_a_bad_setting_is_reported_once_by_name_and_the_pool_still_runs(setting: str, value: str, message: str) -> None:
    _, lines = run_demo(**{setting: value})  # run_demo checks that every task still ran
    failures = [line for line in lines if "taskmw plugin 'logging'" in line]
    assert len(failures) == 1 and "failed to load" in failures[0], lines
    assert any(message in line for line in lines), lines


_runs: list[int] = []


def fails_once() -> str:
    _runs.append(1)
    if len(_runs) == 1:
        raise RuntimeError("first run fails")
    return "ok"


def test_retries_show_their_attempts(caplog: pytest.LogCaptureFixture) -> None:
    import taskmw

    from taskmw_logging import TaskLogger

    caplog.set_level(logging.INFO, logger="shop.tasks")
    _runs.clear()
    logger = TaskLogger("shop.tasks", stderr=False, start_level="INFO")  # given in code, instead of the installed one
    with taskmw.TaskServer(1, backend="eager", disable_plugins=["logging"], plugins=[logger]) as eager:
        task_id = eager.task(taskmw.Task(fails_once), retries=1)
    lines = [r.getMessage() for r in caplog.records if r.name == "shop.tasks"]
    assert f"task {task_id} started: {__name__}.fails_once on worker 0" in lines
    assert f"task {task_id} started: {__name__}.fails_once on worker 0 (attempt 2)" in lines
    done = rf"task {task_id} ok: {__name__}\.fails_once in \d+\.\d+s on worker 0 after 2 attempts"
    assert any(re.fullmatch(done, line) for line in lines)
    assert lines[0] == f"task worker 0 started (pid {os.getpid()})" and lines[-1].startswith("task worker 0 stopped")


def sleeps(seconds: float) -> None:
    time.sleep(seconds)


def dies() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_lost_and_timed_out_tasks_show_their_name(caplog: pytest.LogCaptureFixture) -> None:
    import taskmw

    from taskmw_logging import TaskLogger

    caplog.set_level(logging.INFO, logger="shop.tasks")
    logger = TaskLogger("shop.tasks", stderr=False)
    with taskmw.TaskServer(1, disable_plugins=["logging"], plugins=[logger]) as server:
        timed = server.task(taskmw.Task(sleeps, 30), task_timeout=0.3)  # its worker is killed at 0.3 s
        lost = server.task(dies)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            lines = [r.getMessage() for r in caplog.records if r.name == "shop.tasks"]
            if sum(line.startswith((f"task {timed} timeout", f"task {lost} lost")) for line in lines) == 2:
                break
            time.sleep(0.05)
    # before, both showed "?": the supervisor, which reports them, knows no names
    assert any(re.match(rf"task {timed} timeout: {__name__}\.sleeps in ", line) for line in lines), lines
    assert any(re.match(rf"task {lost} lost: {__name__}\.dies in ", line) for line in lines), lines


def test_finishes_close_together_share_records_and_every_line_is_written() -> None:
    """300 tasks queued at once: their ok lines go in a few records (batches),
    each finish once, every line with its prefix (TextFormatter);
    the last batch is written by the flusher thread without another finish."""
    import io

    import taskmw

    from taskmw_logging import TaskLogger, TextFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter("%(levelname)s %(name)s: %(message)s"))
    records: list[logging.LogRecord] = []
    counter = logging.Handler()
    counter.emit = records.append  # type: ignore[method-assign]
    target = logging.getLogger("shop.batches")
    target.addHandler(handler)
    target.addHandler(counter)
    target.setLevel(logging.INFO)
    try:
        logger = TaskLogger("shop.batches", stderr=False)
        with taskmw.TaskServer(2, disable_plugins=["logging"], plugins=[logger]) as server:
            ids = [server.task(len, b"x") for _ in range(300)]
            server.result(ids[-1], timeout=30)
            deadline = time.monotonic() + 30
            while stream.getvalue().count(" ok: ") < 300 and time.monotonic() < deadline:
                time.sleep(0.02)
        lines = [line for line in stream.getvalue().splitlines() if " ok: " in line]
    finally:
        target.removeHandler(handler)
        target.removeHandler(counter)
    assert all(
        re.fullmatch(r"INFO shop\.batches: task \d+ ok: builtins\.len in \d+\.\d+s on worker [01]", ln) for ln in lines
    )
    logged = [int(line.split()[3]) for line in lines]
    assert sorted(logged) == ids, "each finish logged once"
    finish_records = [r for r in records if " ok: " in r.getMessage()]
    assert len(finish_records) < 300 / 4, f"{len(finish_records)} records for 300 finishes: not batched"


def test_batch_of_one_is_a_record_per_finish(caplog: pytest.LogCaptureFixture) -> None:
    import taskmw

    from taskmw_logging import TaskLogger

    caplog.set_level(logging.INFO, logger="shop.single")
    logger = TaskLogger("shop.single", stderr=False, batch=1)
    with taskmw.TaskServer(2, disable_plugins=["logging"], plugins=[logger]) as server:
        ids = [server.task(len, b"x") for _ in range(50)]
        server.result(ids[-1], timeout=30)
        deadline = time.monotonic() + 30
        while len([r for r in caplog.records if r.name == "shop.single" and " ok: " in r.getMessage()]) < 50:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.02)
    messages = [r.getMessage() for r in caplog.records if r.name == "shop.single" and " ok: " in r.getMessage()]
    assert len(messages) == 50 and all("\n" not in m for m in messages)
    with pytest.raises(ValueError, match="batch must be a whole number of lines, 1 or more, got 0"):
        TaskLogger("shop.single", stderr=False, batch=0)
