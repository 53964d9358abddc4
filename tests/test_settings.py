"""The pool's settings (:mod:`taskmw.settings`): an invalid one is a
``ValueError`` naming it, the same in every backend, and the CLI's pool
options default to them. Tests marked ``no_process_left`` count this
process's descendants before and after: none may be left.
"""

from __future__ import annotations

from typing import Any

import pytest

import taskmw
from taskmw import TaskServer


def test_invalid_settings_name_the_problem() -> None:
    with pytest.raises(ValueError, match="task_workers must be an int in 1..1024, got 0"):
        TaskServer(0)
    with pytest.raises(ValueError, match="queue_timeout"):
        TaskServer(1, queue_timeout=-1)


@pytest.mark.usefixtures("no_process_left")
@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"task_timeout": 0}, "task_timeout must be a number of seconds > 0"),
        ({"retries": -1}, "retries must be"),
        ({"retry_backoff": "1"}, "retry_backoff must be a number of seconds >= 0"),
        ({"max_tasks_per_worker": 0}, "max_tasks_per_worker must be"),
        ({"max_payload_bytes": 0}, "max_payload_bytes must be"),
    ],
)
def test_invalid_settings_are_value_errors_naming_them(setting: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TaskServer(1, **setting)


def test_the_cli_table_and_every_backend_share_one_settings_type() -> None:
    """``taskmw start``'s pool options default to the pool's own defaults,
    and every backend checks settings the same way (taskmw.settings)."""
    from taskmw import config
    from taskmw.settings import Settings

    for opt in config.OPTIONS:
        if opt.pool:
            assert opt.default == Settings.default(config.pool_name(opt)), opt.name
    for backend in ("local", "eager"):
        with pytest.raises(ValueError, match="queue_timeout must be a number of seconds >= 0, got -1"):
            taskmw.create_server(1, backend=backend, queue_timeout=-1)
