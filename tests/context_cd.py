"""A VM's context CD as the tests write it: context.sh (rendered as oned renders it) beside the
token.txt one-context copies the OneGate token from. The agent reads both from the directory of
the context file it is given."""

from __future__ import annotations

from pathlib import Path

from agent.context import render_context


def write_context_cd(directory: Path, variables: dict[str, str], token: str | None = None) -> Path:
    """context.sh with `variables` and, with `token`, token.txt; the path of context.sh."""
    directory.mkdir(parents=True, exist_ok=True)
    if token is not None:
        (directory / "token.txt").write_text(token + "\n")
    path = directory / "context.sh"
    path.write_text(render_context(variables))
    return path
