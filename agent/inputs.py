"""Read everything the configuration depends on: the context and the image's baked defaults."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent import flower
from agent.config import ConfigResult, build_config
from agent.context import Context, Platform, load_context
from agent.paths import Root

BAKED_VERSION_FILE = "/etc/fl-agent/flower-version"


@dataclass(frozen=True)
class Inputs:
    context: Context
    platform: Platform  # always there, even when the config is invalid
    result: ConfigResult  # invalid also when a platform value is


def baked_flower_version(root: Root) -> str:
    """The Flower version the image was built with (written by the Packer scripts)."""
    try:
        text = root.path(BAKED_VERSION_FILE).read_text().strip()
    except OSError:
        return flower.DEFAULT_FLOWER_VERSION
    return text if flower.release_for(text) else flower.DEFAULT_FLOWER_VERSION


def read_inputs(root: Root, context_file: Path | None = None) -> Inputs:
    """Context -> platform and validated config. Raises AgentError only when no context can be
    read."""
    context = load_context(root, context_file)
    platform = context.platform
    result = build_config(context.variables, baked_flower_version=baked_flower_version(root))
    if platform.problems:
        result = ConfigResult(None, result.problems + platform.problems, result.sources)
    return Inputs(context, platform, result)
