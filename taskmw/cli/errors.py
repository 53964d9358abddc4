"""The one exception of the ``taskmw`` command."""

from __future__ import annotations


class CLIError(Exception):
    """A problem to report to the user in one line (exit code 1)."""
