"""The command line: argparse, output formats and exit codes. Light to import.

Heavy modules (docker, requests, pynvml, pyone, jinja2) are imported inside the command that
needs them, so `fl-agent --help` and `fl-agent context` start fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agent import __version__
from agent.outcome import BootState, ExitCode, exit_code
from agent.terminal import escape_all, escape_controls

SECRET_VARIABLES = ("ONEGATE_TOKEN", "TOKENTXT", "FL_SSL_KEY", "ONEAPP_FL_SSL_KEY")


def _emit(data: object, as_json: bool, text: Callable[[Any], str]) -> None:
    """JSON as is (json.dumps escapes every control character), or `text` of the data with
    every string escaped: human output never carries raw control characters from input."""
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
    else:
        sys.stdout.write(text(escape_all(data)))


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
        shown = {k: "***" if k in SECRET_VARIABLES and v else v for k, v in ctx.variables.items()}
        _emit(shown, args.json, _raw_text)
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
    _emit(data, args.json, _config_text)
    return ExitCode.OK if result.ok else ExitCode.INVALID


def _raw_text(variables: dict[str, str]) -> str:
    return "".join(f"{k}={v}\n" for k, v in variables.items())


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
            sys.stderr.write(f"error: {escape_controls(str(p))}\n")
    return ExitCode.INVALID


# --- boot and status ---


def cmd_boot(args: argparse.Namespace) -> int:
    from agent.boot import BootOptions, boot

    options = BootOptions(
        dry_run=args.dry_run,
        periodic=args.periodic,
        stability_s=args.stability_window,
        lock_wait_s=args.lock_wait,
        discovery_attempts=args.discovery_attempts,
        discovery_interval_s=args.discovery_interval,
        ca_attempts=max(1, args.discovery_attempts // 2),
        ca_interval_s=args.discovery_interval / 2,
        registration_wait_s=args.registration_wait,
    )
    outcome = boot(_root(args), args.context_file, options)
    _emit(outcome.record.to_dict(), args.json, _plan_text if args.dry_run else _outcome_text)
    return outcome.exit_code


def _plan_text(record: dict) -> str:
    plan = record.get("plan")
    if not plan:
        return _outcome_text(record)
    spec = plan["spec"] or {}
    lines = [f"mode: {plan['mode']} ({plan['reason']})"]
    if spec:
        lines += [
            f"container: {spec['name']}  image: {spec['image']}  hash: {spec['spec_hash']}",
            f"args: {' '.join(spec['command'])}",
            "env: " + " ".join(f"{k}={v}" for k, v in spec["environment"].items()),
        ]
        if spec["gpu_count"] == -1 or spec["gpu_device_ids"]:
            lines.append(f"gpus: {spec['gpu_device_ids'] or 'all'}")
    lines.append("actions: " + ", ".join(a["kind"] for a in plan["actions"]))
    published = (record.get("superlink") or {}).get("published") or {}
    if published:  # the superlink role: what it would publish once it serves
        lines.append("publishes: " + " ".join(f"{k}={v}" for k, v in published.items()))
    lines += [f"problem: {p['subject']}: {p['message']}" for p in plan["problems"]]
    lines.append(f"would end: {record['state']}")
    return "\n".join(lines) + "\n"


def _outcome_text(record: dict) -> str:
    lines = [f"state: {record.get('state')}  mode: {record.get('mode')}"]
    container = record.get("container") or {}
    if container:
        lines.append(f"container: {container.get('action')} {container.get('container_id')}")
    lines += [
        f"problem: {p['subject']}: {p['message']} (fix: {p['fix']})"
        for p in record.get("problems", [])
    ]
    lines += [f"  | {line}" for line in container.get("log_tail", [])]
    return "\n".join(lines) + "\n"


def cmd_status(args: argparse.Namespace) -> int:
    from agent.state import read_state

    root = _root(args)
    record = read_state(root)
    data: dict = {"last_boot": record, "watch": _watch_status(root)}
    if args.remote:
        data["remote"] = _remote_status(root, args.context_file)
    _emit(data, args.json, _status_text)
    if record is None or record.get("state") not in tuple(BootState):
        return ExitCode.FAILED
    return exit_code(BootState(record["state"]))


def _remote_status(root, context_file: Path | None) -> dict:
    from agent.errors import AgentError
    from agent.inputs import read_inputs
    from agent.onegate import remote_status

    try:
        return remote_status(read_inputs(root, context_file).platform, root)
    except AgentError as exc:
        return {"error": str(exc.first)}


def _watch_status(root) -> dict | None:
    """The watch's view (health, last XID, GPU access, SuperNode status), when it has run."""
    from agent.watch import WatchState, read_watch_state, status_attributes

    data = read_watch_state(root)
    if data is None:
        return None
    try:
        shown = status_attributes(WatchState.from_dict(data))
    except (TypeError, ValueError, KeyError, AttributeError):
        return {"error": "the watch state is unreadable", "problems": []}
    loss = data.get("gpu_loss") or {}
    if not isinstance(loss, dict) or not isinstance(loss.get("uuids", []), list):
        loss = {}
    return {
        "updated_at": data.get("updated_at"),
        "attributes": shown,
        "supernode_evidence": (data.get("supernode") or {}).get("evidence") or None,
        "gpu_loss": loss if loss.get("observations") else None,
        "problems": data.get("problems") or [],
    }


def _status_text(data: dict) -> str:
    record = data["last_boot"]
    text = _outcome_text(record) if record else "no boot has run yet\n"
    if record:
        text = f"last boot: {record.get('finished_at')}\n" + text
    watch = data.get("watch")
    if watch is not None:
        text += f"watch: {watch.get('updated_at') or watch.get('error')}\n"
        text += "".join(f"  {k}={v}\n" for k, v in (watch.get("attributes") or {}).items())
        if watch.get("supernode_evidence"):
            text += f"  supernode log: {watch['supernode_evidence']}\n"
        hint = _status_hint((watch.get("attributes") or {}).get("FL_SUPERNODE_STATUS"))
        text += f"  fix: {hint}\n" if hint else ""
        if watch.get("gpu_loss"):
            loss = watch["gpu_loss"]
            text += (
                f"  gpu loss: {';'.join(map(str, loss.get('uuids', [])))} on "
                f"{loss.get('observations')} observations"
                f"{' (confirmed)' if loss.get('confirmed') else ''} since {loss.get('since')}\n"
            )
        problems = [p for p in watch.get("problems") or () if isinstance(p, dict)]
        text += "".join(f"  problem: {p.get('name')}: {p.get('message')}\n" for p in problems)
    remote = data.get("remote")
    if remote is not None:
        rows = {k: v for k, v in remote.items() if k != "attributes"}
        rows.update(remote.get("attributes", {}))
        text += "OneGate:\n" + "".join(f"  {k}={v}\n" for k, v in rows.items())
    return text


def _status_hint(status: str | None) -> str | None:
    """What to do about a SuperNode status that names its cause."""
    from agent.outcome import PROBLEMS

    causes = {"AUTH_REJECTED": "node_auth_rejected", "VERSION_MISMATCH": "version_mismatch"}
    return PROBLEMS[causes[status]][1] if status in causes else None


# --- watch ---


def cmd_watch(args: argparse.Namespace) -> int:
    """Runs until SIGTERM (exit 0); `--once`: one observation, exit 0."""
    from agent.watch import run

    if args.interval <= 0:
        print("fl-agent watch: --interval must be positive", file=sys.stderr)
        return ExitCode.INVALID
    state = run(
        _root(args), interval_s=args.interval, context_file=args.context_file, once=args.once
    )
    if args.once:
        _emit(state.to_dict(), args.json, lambda d: json.dumps(d, indent=2) + "\n")
    return ExitCode.OK


# --- validate ---


def cmd_validate(args: argparse.Namespace) -> int:
    """Exit 0 when the verdict is what the config asks for (PASSED for a wanted, present GPU;
    CPU_ONLY for NO, or AUTO without a GPU), 1 otherwise, 2 on an invalid configuration."""
    from agent.errors import AgentError
    from agent.inputs import read_inputs
    from agent.validation import validate

    root = _root(args)
    try:
        inputs = read_inputs(root, args.context_file)
    except AgentError as exc:
        return _report_problems(exc.problems, args.json)
    if inputs.result.config is None:
        return _report_problems(inputs.result.problems, args.json)
    report = validate(inputs.result.config, root, repair=args.repair)
    data = report.to_dict()
    _emit(data, args.json, _validation_text)
    return ExitCode.OK if report.as_requested else ExitCode.FAILED


def _validation_text(data: dict) -> str:
    head = f"FL_GPU_ENABLED={data['requested']}  mode: {data['mode']}"
    if data["selected"] is not None:
        head += f"  GPUs: {', '.join(data['selected'])}"
    text = head + "\n" + _stages_text(data)
    problem = data["problem"]
    return text + (f"error class: {problem['name']}\n" if problem else "")


# --- host-check ---


def cmd_host_check(args: argparse.Namespace) -> int:
    from agent.host import check_host

    report = check_host(_root(args))
    _emit(report.to_dict(), args.json, _stages_text)
    return ExitCode.OK if report.ok else ExitCode.FAILED


def _stages_text(data: dict) -> str:
    lines = []
    for stage in data["stages"]:
        lines.append(f"[{stage['status'].upper():>4}] {stage['name']}: {stage['detail']}")
        if stage["hint"]:
            lines.append(f"       FIX: {stage['hint']}")
    lines.append(data["verdict"])
    return "\n".join(lines) + "\n"


# --- dev-char-links ---


def cmd_dev_char_links(args: argparse.Namespace) -> int:
    """Run at boot and by the udev rule when the nvidia driver binds (udev/)."""
    from agent.devchar import ensure_dev_char_links
    from agent.toolkit import detect

    root = _root(args)
    result = ensure_dev_char_links(root, detect(root).ctk_path)
    data = {
        "via": result.via,
        "created": list(result.created),
        "present": list(result.present),
        "ctk_output": result.ctk_output,
        "problem": result.problem.to_dict() if result.problem else None,
    }
    _emit(data, args.json, _dev_char_text)
    return ExitCode.FAILED if result.problem else ExitCode.OK


def _dev_char_text(data: dict) -> str:
    lines = [f"/dev/char links via {data['via']}: {len(data['present'])} present"]
    lines += [f"  created {name}" for name in data["created"]]
    if data["ctk_output"]:
        lines.append(f"  nvidia-ctk failed: {data['ctk_output']}")
    if data["problem"]:
        lines.append(f"  {data['problem']['message']} (fix: {data['problem']['fix']})")
    return "\n".join(lines) + "\n"


# --- trust ---


def cmd_trust(args: argparse.Namespace) -> int:
    """The SuperLink identity pinned at the first successful boot against what OneGate
    publishes now; with --accept, pin what it publishes now."""
    from agent.discovery import Pin, discover, read_pin, write_pin
    from agent.errors import AgentError
    from agent.inputs import read_inputs
    from agent.onegate import Reporter

    root = _root(args)
    try:
        inputs = read_inputs(root, args.context_file)
    except AgentError as exc:
        return _report_problems(exc.problems, args.json)
    config = inputs.result.config
    if config is None:
        return _report_problems(inputs.result.problems, args.json)
    pinned, pin_problem = read_pin(root)
    reporter = Reporter.from_platform(inputs.platform, root, total_timeout_s=args.timeout)
    found = discover(config, reporter, attempts=1, interval_s=0, ca_attempts=1, ca_interval_s=0)
    published = found.learned or Pin()
    differs = pinned is not None and _pin_differs(pinned, published)
    problems = [*([pin_problem] if pin_problem else []), *found.problems]
    accepted = False
    if args.accept and not found.problems and found.learned is not None:
        write_problem = write_pin(root, found.learned)
        problems += [write_problem] if write_problem else []
        accepted = write_problem is None
    data = {
        "pinned": pinned.to_dict() if pinned else None,
        "published": published.to_dict(),
        "differs": differs,
        "accepted": accepted,
        "problems": [p.to_dict() for p in problems],
    }
    _emit(data, args.json, _trust_text)
    if args.accept:
        return ExitCode.OK if accepted else ExitCode.FAILED
    return ExitCode.FAILED if differs or problems else ExitCode.OK


def _pin_differs(pinned, published) -> bool:
    return any(
        new is not None and old is not None and new != old
        for old, new in (
            (pinned.superlink_address, published.superlink_address),
            (pinned.ca_pem, published.ca_pem),
        )
    )


def _trust_text(data: dict) -> str:
    def row(label: str, pin: dict | None) -> str:
        if pin is None:
            return f"{label}: nothing pinned yet\n"
        ca = ", ".join(pin["ca_sha256"]) or "none"
        return f"{label}: address {pin['superlink_address'] or 'none'}  CA sha256 {ca}\n"

    text = row("pinned", data["pinned"]) + row("OneGate now", data["published"])
    text += "".join(f"problem: {p['subject']}: {p['message']}\n" for p in data["problems"])
    if data["accepted"]:
        return text + "accepted: OneGate's values are pinned\n"
    if data["differs"]:
        return text + "differs: run `fl-agent trust --accept` if the change is yours\n"
    return text


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
    parser.add_argument(
        "--instance",
        metavar="N",
        help="only for several SuperNode agents on one Docker engine (tests, a demo), each "
        "with its own --root: containers flower-supernode-N / flower-superexec-N and a local "
        "API port of their own (default: $FL_AGENT_INSTANCE, unset on an appliance)",
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
    p.add_argument(
        "--stability-window",
        type=float,
        default=3.0,
        metavar="S",
        help="seconds the container must stay up after a start (default 3)",
    )
    p.add_argument(
        "--registration-wait",
        type=float,
        default=300.0,
        metavar="S",
        help="a SuperNode whose key the SuperLink refused: wait this long for the key's "
        "registration before ending FAILED (default 300; 0: do not wait)",
    )
    p.add_argument(
        "--lock-wait",
        type=float,
        default=0.0,
        metavar="S",
        help="wait this long for another running boot, then exit (default: exit at once)",
    )
    p.add_argument(
        "--periodic",
        action="store_true",
        help="a periodic re-convergence (the timer): send OneGate only the outcome, so READY "
        "stays while the node keeps running; undelivered reports are sent first",
    )
    p.add_argument(
        "--discovery-attempts",
        type=int,
        default=30,
        metavar="N",
        help="OneGate lookups of the SuperLink while it boots (default 30; the CA gets half)",
    )
    p.add_argument(
        "--discovery-interval",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds between those lookups (default 10)",
    )
    p.set_defaults(func=cmd_boot)

    p = sub.add_parser("validate", help="validate the GPU stack stage by stage")
    context_file(p)
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--repair",
        action="store_true",
        help="install the NVIDIA Container Toolkit when missing, as boot does "
        "(default: observe only, change nothing)",
    )
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("status", help="the last boot's outcome")
    p.add_argument("--json", action="store_true")
    p.add_argument("--remote", action="store_true", help="also what OneGate holds for this VM")
    context_file(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "watch", help="life after boot: GPU health, the SuperNode's GPU access and its status"
    )
    context_file(p)
    p.add_argument(
        "--interval",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds between full observations; NVML events are reported at once (default 60)",
    )
    p.add_argument("--once", action="store_true", help="one observation, then exit")
    p.add_argument("--json", action="store_true", help="with --once: print the state")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser(
        "trust", help="the SuperLink endpoint and CA pinned at the first boot vs OneGate's"
    )
    context_file(p)
    p.add_argument("--accept", action="store_true", help="pin what OneGate publishes now")
    p.add_argument("--json", action="store_true")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S", help="OneGate budget")
    p.set_defaults(func=cmd_trust)

    p = sub.add_parser("host-check", help="check a KVM host for GPU passthrough")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_host_check)

    p = sub.add_parser(
        "dev-char-links", help="create the /dev/char links of the NVIDIA device nodes"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_dev_char_links)

    from agent.one.commands import register as _register_one

    _register_one(sub)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from agent import instance, log
    from agent.errors import AgentError

    if args.instance is not None:
        os.environ[instance.ENV] = args.instance
    try:
        instance.current()
    except AgentError as exc:
        print(f"fl-agent: {exc.first.message}", file=sys.stderr)
        return ExitCode.INVALID

    log.configure(args.log_level)
    return int(args.func(args))
