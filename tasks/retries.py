"""Retry conditions for Prefect tasks: a retry is for what a second try can fix."""

from __future__ import annotations

BAD_INPUT = (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError)
"""Failures a retry cannot fix: content that breaks a rule (``TableError``, a contract
breach, bytes that are not UTF-8: all ``ValueError``) and a path that names no file."""


def retry_unless_bad_input(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn`` for tasks that read files: retry I/O errors, not bad
    input, which fails the same way every time (and would only delay the message)."""
    return not isinstance(getattr(state, "data", None), BAD_INPUT)
