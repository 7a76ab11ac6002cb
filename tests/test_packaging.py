"""What `pip wheel .` ships: the agent, never the emulators the tests and benchmarks use."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_wheel_ships_the_agent_and_no_emulator(tmp_path):
    # Built from a copy: setuptools writes build/ and *.egg-info beside the sources.
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__")
    for package in ("agent", "emulators"):
        shutil.copytree(REPO / package, source / package, ignore=ignore)
    out = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         str(source), "-w", str(out)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    (wheel,) = out.glob("fl_agent-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"agent"}
    assert "agent/onegate.py" in names or "agent/onegate/__init__.py" in names
    assert not [n for n in names if "emulator" in n]


def test_emulators_import_nothing_from_the_agent():
    for path in (REPO / "emulators").glob("*.py"):
        text = path.read_text()
        assert "from agent" not in text and "import agent" not in text, path.name
