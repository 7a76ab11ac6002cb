"""Logging: one JSON line per event for journald, structlog's readable console on a terminal.

The JSON lines are written here with the standard library's `json` (keys: the logger's
`component`, the event's own keys, `event`, `level`, `timestamp`), because importing structlog
costs a boot about 30 ms (it pulls in asyncio and logging): that is the path every boot under
systemd takes. structlog renders the console, where a person reads, and is imported only then.
"""

from __future__ import annotations

import json
import sys
import time

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_settings: dict = {"level": "INFO", "stream": None, "console": None}


def configure(level: str = "INFO", *, stream=None) -> None:
    """Remember the level and stream; the renderer is chosen on first use."""
    _settings.update(level=level, stream=stream, console=None)


class JsonLogger:
    """The methods the agent logs through, each writing one JSON line."""

    def __init__(self, component: str, stream, level: str) -> None:
        self.component = component
        self.stream = stream
        self.threshold = LEVELS.index(level) if level in LEVELS else 1

    def _write(self, level: str, event: str, fields: dict) -> None:
        if LEVELS.index(level.upper()) < self.threshold:
            return
        line = {"component": self.component, **fields, "event": event, "level": level}
        line["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z"
        self.stream.write(json.dumps(line, default=repr) + "\n")
        self.stream.flush()

    def debug(self, event: str, **fields) -> None:
        self._write("debug", event, fields)

    def info(self, event: str, **fields) -> None:
        self._write("info", event, fields)

    def warning(self, event: str, **fields) -> None:
        self._write("warning", event, fields)

    def error(self, event: str, **fields) -> None:
        self._write("error", event, fields)

    def exception(self, event: str, **fields) -> None:
        import traceback

        self._write("error", event, {**fields, "exception": traceback.format_exc()})


def get(name: str):
    """A bound logger for one concern (`log.get("toolkit")`)."""
    out = _settings["stream"] or sys.stderr
    if not out.isatty():
        return JsonLogger(name, out, _settings["level"])
    if _settings["console"] is None:
        _settings["console"] = _console(out)
    return _settings["console"].get_logger(name).bind(component=name)


def _console(out):
    import logging

    import structlog

    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, _settings["level"])),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    return structlog
