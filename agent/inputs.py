"""Read everything the configuration depends on: the context and the image's baked defaults."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent import flower
from agent.config import ConfigResult, build_config
from agent.context import Context, load_context
from agent.paths import Root

BAKED_VERSION_FILE = "/etc/fl-agent/flower-version"


@dataclass(frozen=True)
class Inputs:
    context: Context
    result: ConfigResult


def baked_flower_version(root: Root) -> str:
    """The Flower version the image was built with (written by the Packer scripts)."""
    try:
        text = root.path(BAKED_VERSION_FILE).read_text().strip()
    except OSError:
        return flower.DEFAULT_FLOWER_VERSION
    return text if flower.release_for(text) else flower.DEFAULT_FLOWER_VERSION


def read_inputs(root: Root, context_file: Path | None = None) -> Inputs:
    """Context -> validated config. Raises AgentError only when no context can be read."""
    context = load_context(root, context_file)
    result = build_config(
        context.variables, token=context.token, baked_flower_version=baked_flower_version(root)
    )
    return Inputs(context, result)
