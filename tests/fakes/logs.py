"""Capture what our code and the HTTP clients log, at DEBUG, to check that no secret is there."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

WATCHED_LOGGERS = ("openai", "httpx2", "httpcore2", "hal_core", "tasks", "flows")


class _LogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextmanager
def captured_logs(names: tuple[str, ...] = WATCHED_LOGGERS) -> Iterator[list[str]]:
    """Every formatted log line of the root logger and of ``names`` at DEBUG (if headers or
    keys were ever logged, they would be here), kept out of the console while it runs."""
    captured = _LogCapture()
    logging.getLogger().addHandler(captured)
    watched = [logging.getLogger(name) for name in names]
    states = [(logger.level, logger.propagate) for logger in watched]
    for logger in watched:
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        logger.addHandler(captured)
    try:
        yield captured.lines
    finally:
        logging.getLogger().removeHandler(captured)
        for logger, (level, propagate) in zip(watched, states, strict=True):
            logger.setLevel(level)
            logger.propagate = propagate
            logger.removeHandler(captured)
