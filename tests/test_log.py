"""Log lines: one JSON object per event for journald, written without importing structlog."""

from __future__ import annotations

import json
import subprocess
import sys

_CHILD = """
import io, json, sys
from agent import log
out = io.StringIO()
log.configure("INFO", stream=out)
log.get("boot").info("state", state="RUNNING", when=object)
log.get("boot").debug("hidden")
try:
    raise ValueError("boom")
except ValueError:
    log.get("stages").exception("stage crashed", stage="pci")
print(json.dumps({"lines": out.getvalue().splitlines(), "structlog": "structlog" in sys.modules}))
"""


def test_json_lines_without_structlog():
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD], capture_output=True, text=True, check=True, timeout=60
    )
    data = json.loads(proc.stdout)
    assert data["structlog"] is False
    first, second = (json.loads(line) for line in data["lines"])
    assert (first["component"], first["event"], first["level"]) == ("boot", "state", "info")
    assert first["state"] == "RUNNING" and first["timestamp"].endswith("Z")
    assert first["when"].startswith("<class")  # what JSON cannot hold is its repr
    assert second["level"] == "error" and "ValueError: boom" in second["exception"]
