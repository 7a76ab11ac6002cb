"""The command line: argparse, output formats and exit codes. Light to import.

Heavy modules (docker, requests, pynvml, pyone, jinja2) are imported inside the command that
needs them, so `fl-agent --help` and `fl-agent context` start fast.
"""

from __future__ import annotations

import argparse
import enum
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from agent import __version__


class ExitCode(enum.IntEnum):
    """One table of exit codes for every command (documented in the README)."""

    OK = 0  # RUNNING / valid / verdict as asked
    FAILED = 1  # FAILED, or a verdict other than what the config asks for
    INVALID = 2  # invalid context or configuration
    DEGRADED = 3  # running on CPU after a GPU failure
    NOT_BUILT = 4  # a command whose issue has not landed yet


def _emit(data: object, as_json: bool, text: Callable[[], str]) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n" if as_json else text())


def _root(args: argparse.Namespace):
    from agent.paths import Root

    return Root.from_env(args.root)


# --- context ---


def cmd_context(args: argparse.Namespace) -> int:
    from agent.errors import AgentError
    from agent.inputs import read_inputs

    try:
        inputs = read_inputs(_root(args), args.context_file)
    except AgentError as exc:
        return _report_problems(exc.problems, args.json)
    ctx, result = inputs.context, inputs.result
    if args.raw:
        _emit(ctx.variables, args.json, lambda: _raw_text(ctx.variables))
        return ExitCode.OK
    data = {
        "source": ctx.source,
        "token": "***" if ctx.token else None,
        "token_source": ctx.token_source,
        "valid": result.ok,
        "config": result.config.to_dict() if result.config else None,
        "sources": result.sources,
        "errors": [p.to_dict() for p in result.problems],
    }
    _emit(data, args.json, lambda: _config_text(data))
    return ExitCode.OK if result.ok else ExitCode.INVALID


def _raw_text(variables: dict[str, str]) -> str:
    return "".join(f"{k}={json.dumps(v, ensure_ascii=False)}\n" for k, v in variables.items())


def _config_text(data: dict) -> str:
    lines = [f"context: {data['source']}", f"token: {'present' if data['token'] else 'none'}"]
    if data["config"]:
        width = max(len(k) for k in data["config"])
        lines += [f"  {k.ljust(width)}  {v}" for k, v in data["config"].items()]
    lines += [f"error: {e['subject']}: {e['message']} ({e['fix']})" for e in data["errors"]]
    lines.append("valid" if data["valid"] else f"invalid: {len(data['errors'])} error(s)")
    return "\n".join(lines) + "\n"


def _report_problems(problems, as_json: bool) -> int:
    if as_json:
        _emit({"valid": False, "errors": [p.to_dict() for p in problems]}, True, str)
    else:
        for p in problems:
            sys.stderr.write(f"error: {p}\n")
    return ExitCode.INVALID


# --- commands whose issues have not landed ---


def _not_built(issue: str) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        sys.stderr.write(f"fl-agent {args.command}: not built yet ({issue}).\n")
        return ExitCode.NOT_BUILT

    return command


# --- parser ---


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fl-agent",
        description="Boot agent: turns an OpenNebula VM into a Flower SuperNode, GPU or CPU.",
    )
    parser.add_argument("--version", action="version", version=f"fl-agent {__version__}")
    parser.add_argument(
        "--root", help="root prefix for every system path (default: $FL_AGENT_ROOT or /)"
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR")
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def context_file(p: argparse.ArgumentParser) -> None:
        p.add_argument("--context-file", type=Path, help="read this context.sh instead")

    p = sub.add_parser("context", help="show the context and the validated configuration")
    context_file(p)
    p.add_argument("--raw", action="store_true", help="the variables exactly as read")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_context)

    p = sub.add_parser("boot", help="converge this VM to a running Flower SuperNode")
    context_file(p)
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_not_built("the boot pipeline issue"))

    p = sub.add_parser("validate", help="validate the GPU stack stage by stage")
    context_file(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_not_built("the GPU validation issue"))

    p = sub.add_parser("status", help="the last boot's outcome")
    p.add_argument("--json", action="store_true")
    p.add_argument("--remote", action="store_true", help="also what OneGate holds for this VM")
    p.set_defaults(func=_not_built("the boot pipeline issue"))

    p = sub.add_parser("host-check", help="check a KVM host for GPU passthrough")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_not_built("the GPU validation issue"))

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from agent import log

    log.configure(args.log_level)
    return int(args.func(args))
