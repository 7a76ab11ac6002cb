"""The one-apps appliance surface: the service report and the ready marker in /etc/motd.

OpenNebula's appliances (one-apps) leave a report of what runs in /etc/one-appliance/config
(root-only, INI-like sections) and say "All set and ready to serve" in /etc/motd once the
service is up; the community marketplace's certification checks look for both. The boot writes
them from its record (the state file's content), so the renderers are pure functions of that
record and the writers only add an atomic write under the root prefix.
"""

from __future__ import annotations

from collections.abc import Sequence

from agent.atomicfile import write_atomic
from agent.outcome import READY
from agent.paths import Root
from agent.plan import CONTAINER_NAME

SERVICE_REPORT = "/etc/one-appliance/config"
MOTD = "/etc/motd"
READY_MARKER = "All set and ready to serve 8)"
_HELP = (
    ("status", "fl-agent status"),
    ("agent log", "journalctl -u fl-agent"),
    ("node log", "docker logs {supernode}"),
    ("validate", "fl-agent validate"),
)


def render_service_report(outcome: dict) -> str:
    """The report of one boot's record: what runs, which Flower version, GPU or CPU and why."""
    plan = outcome.get("plan") or {}
    spec = plan.get("spec") or {}
    container = outcome.get("container") or {}
    state = outcome.get("state", "UNKNOWN")
    running = state in READY
    problems = outcome.get("problems") or []
    names = _container_names(plan)
    service = [
        ("state", state),
        ("runs", f"container {' and '.join(names)}" if running else "nothing"),
        ("container id", (container.get("container_id") or "")[:12] if running else ""),
        ("image", spec.get("image", "")),
        ("flower version", outcome.get("flower_version", "")),
        ("superlink", _option(spec.get("command") or (), "--superlink")),
        ("mode", outcome.get("mode", "NONE")),
        ("why", _why(outcome, plan, problems)),
        ("updated", outcome.get("finished_at", "")),
        ("agent version", outcome.get("agent_version", "")),
    ]
    sections = [_section("Flower SuperNode", service)]
    if problems:
        sections.append(_section("Problems", [_problem_line(i, p) for i, p in enumerate(problems)]))
    help_rows = [(k, v.format(supernode=names[0])) for k, v in _HELP]
    sections.append(_section("Help", help_rows))
    return "\n".join(sections)


def render_motd(ready: bool) -> str:
    """The login banner: the one-apps ready marker only while the node runs."""
    head = "Flower SuperNode appliance (fl-agent)\n\n"
    if ready:
        return f"{head}    {READY_MARKER}\n\nReport: {SERVICE_REPORT}  Status: fl-agent status\n"
    return (
        f"{head}    The SuperNode is not running.\n\n"
        f"Why: {SERVICE_REPORT}, `fl-agent status`, `journalctl -u fl-agent`\n"
    )


def write_service_report(root: Root, outcome: dict) -> None:
    """Write /etc/one-appliance/config (mode 0600: it may name internal endpoints)."""
    write_atomic(root.path(SERVICE_REPORT), render_service_report(outcome), mode=0o600)


def mark_ready(root: Root) -> None:
    write_atomic(root.path(MOTD), render_motd(True), mode=0o644)


def clear_ready(root: Root) -> None:
    write_atomic(root.path(MOTD), render_motd(False), mode=0o644)


def _container_names(plan: dict) -> list[str]:
    """The SuperNode's container name first, then its SuperExec's (FL_ISOLATION=process)."""
    spec, companion = plan.get("spec") or {}, plan.get("companion") or {}
    names = [companion.get("name"), spec.get("name")] if companion else [spec.get("name")]
    return [n for n in names if n] or [CONTAINER_NAME]


def _section(title: str, rows: Sequence[tuple[str, str]]) -> str:
    width = max(len(key) for key, _ in rows)
    lines = [f"{key.ljust(width)} = {_one_line(value)}" for key, value in rows]
    return f"[{title}]\n" + "\n".join(lines) + "\n"


def _one_line(value: object) -> str:
    """Values stay on one line, whatever an error message carried."""
    return " ".join(str(value).split())


def _option(command: Sequence[str], name: str) -> str:
    """The value of `--name value` or `--name=value` in an argument list, else ''."""
    for i, arg in enumerate(command):
        if arg == name and i + 1 < len(command):
            return command[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return ""


def _why(outcome: dict, plan: dict, problems: Sequence[dict]) -> str:
    """The plan's reason, unless what runs differs from the plan (a GPU start fell back)."""
    if plan.get("reason") and plan.get("mode") == outcome.get("mode"):
        return plan["reason"]
    return _problem_text(problems[0]) if problems else plan.get("reason", "")


def _problem_line(index: int, problem: dict) -> tuple[str, str]:
    return (str(index + 1), _problem_text(problem))


def _problem_text(problem: dict) -> str:
    text = f"{problem.get('subject', '')}: {problem.get('message', '')}"
    return f"{text} (fix: {problem['fix']})" if problem.get("fix") else text
