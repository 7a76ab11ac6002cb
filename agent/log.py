"""Logging setup: structlog JSON lines for journald, a readable console on a terminal."""

from __future__ import annotations

import logging
import sys

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def configure(level: str = "INFO", *, stream=None) -> None:
    """Configure structlog once per process. Logs go to stderr so stdout stays for results."""
    import structlog

    out = stream or sys.stderr
    renderer = (
        structlog.dev.ConsoleRenderer(colors=False)
        if out.isatty()
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level)),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def get(name: str):
    """A bound logger for one concern (`log.get("toolkit")`)."""
    import structlog

    return structlog.get_logger(name)
