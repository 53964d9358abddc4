"""The complete plugin of ``docs/plugins.md``, taken from the page as a
reader would copy it: installed with pip (into a folder of its own, put on
``PYTHONPATH``), then its test, also from the page, run by pytest in a
subprocess, where the taskmw fixtures and the installed plugin load by
themselves."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"


def doc_files() -> dict[str, str]:
    """The code blocks of the page preceded by ``<!-- file: PATH -->``."""
    text = DOC.read_text()
    blocks = re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", text, re.S)
    return dict(blocks)


def test_the_documented_plugin_installs_and_passes_its_documented_tests(tmp_path: Path) -> None:
    files = doc_files()
    assert set(files) == {"taskmw-slowlog/pyproject.toml", "taskmw-slowlog/taskmw_slowlog.py", "test_slowlog.py"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    site = tmp_path / "site"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
         str(tmp_path / "taskmw-slowlog")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert pip.returncode == 0, pip.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKMW_", "PYTEST_"))}
    env.update(PYTHONPATH=str(site), TASKMW_SLOW_SECONDS="0.005")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--log-level=WARNING", "-rA",
         "test_slowlog.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0 and "2 passed" in run.stdout, run.stdout + run.stderr
    assert re.search(r"slow task \d+: 0\.\d\ds, status ok, worker 0", run.stdout), run.stdout
