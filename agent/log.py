"""Logging setup: structlog JSON lines for journald, a readable console on a terminal.

structlog is imported on the first `get()`, not at start, so commands that log nothing
(`--help`, `status`, `context`) do not pay for the import.
"""

from __future__ import annotations

import sys

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_settings = {"level": "INFO", "stream": None, "configured": False}


def configure(level: str = "INFO", *, stream=None) -> None:
    """Remember the level and stream; structlog is set up lazily on first use."""
    _settings.update(level=level, stream=stream, configured=False)


def _setup() -> None:
    import logging

    import structlog

    out = _settings["stream"] or sys.stderr
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
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, _settings["level"])),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    _settings["configured"] = True


def get(name: str):
    """A bound logger for one concern (`log.get("toolkit")`)."""
    import structlog

    if not _settings["configured"]:
        _setup()
    return structlog.get_logger(name).bind(component=name)
