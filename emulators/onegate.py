"""A OneGate server emulator: a real HTTP server that behaves like OpenNebula's.

Ported from the server's source (OpenNebula/one src/onegate/onegate-server.rb at the release
tags below; docs/onegate.md): token and VMID checks (401 `Not authorized`),
restricted attributes (403), `escape_attr` and then a port of the core's template lexer and
grammar (src/parsers/template_parser.l), so the inputs that break the real server break this one
with a 500; type=2 deletions (500 `attribute not found`); plain-text error bodies under a JSON
content type; XML-born JSON (numbers as strings, `{}` for empty, NIC lists); `/service` with
roles and nodes; `/vms/<id>` within a service. On top, fault injection at run time (down,
slow, bursts of 5xx, 401 mode) and a record of every request for assertions.

Server profiles (`version`), from onegate-server.rb at the release tags:
- every version checks the route's permission (`:permissions:`, 403 `Action (<a>) on resource
  (<r>) not supported`) before the token (401), and answers `/service` with 400
  `Service N does not contain VM M.` while the asking VM is not among the service's nodes;
- 6.10.0 and 7.0.0 send a halted 500's own text (`attribute not found`, a parse error);
- 7.0.1 and later run an `error 500` block after every 500, halted ones included, that
  answers `Internal server error` instead.

Run for the demo: ``python -m emulators.onegate --port 5030 --state state.json``; the
state file lists VMs (id, token, name, user_template, nics) and services (id, name, roles with
vm_ids) and receives every change. Control routes under ``/_emulator/`` (`requests`, `state`,
`faults`) are this emulator's own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import secrets
import threading
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from emulators.template import TemplateError, parse_template

RESTRICTED_ATTRS = ("SCHED_REQUIREMENTS", "SERVICE_ID", "ROLE_NAME")
NIC_VALID_KEYS = (
    "IP",
    "IP6_LINK",
    "IP6_SITE",
    "IP6_GLOBAL",
    "NETWORK",
    "MAC",
    "NAME",
    "PARENT",
    "EXTERNAL",
    "EXTERNAL_IP",
)
UNSUPPORTED = "OneGate server doesn't support this feature"
VERSIONS = ("6.10.0", "7.0.0", "7.0.1")
"""The server profiles: 7.0.1 stands for every later release too (the `error 500` block)."""
INTERNAL_ERROR = "Internal server error"
CONTROL_PREFIX = "/_emulator/"


# --------------------------------------------------------------------------- escaping, parsing


def escape_attr(attr: str) -> str:
    """The server's escape_attr, character for character (Ruby's attr[-1] wraps, as here)."""
    chars = list(attr)

    def at(i: int) -> str | None:
        return chars[i] if -len(chars) <= i < len(chars) else None

    out: list[str] = []
    escape = False
    for idx, s in enumerate(chars):
        if s == "=" and escape:
            out.append(s)
            continue
        prev, nxt = at(idx - 1), at(idx + 1)
        if s == "=" and nxt not in ("[", '"'):
            out.append('="')
            escape = True
        elif s == "," and prev != '"':
            out.append('",')
        elif s == "[" and prev not in ("=", '"'):
            out.append('"[')
        elif s == "]" and prev not in ("=", '"'):
            out.append('"]')
            escape = False
        elif s in ("\\", "\n") and prev != '"':
            out.append('"' + s)
            escape = False
        else:
            out.append(s)
    text = "".join(out).replace("\\n", "\n")
    if escape and text[-1:] not in ("]", '"'):
        text += '"'
    return text


# --------------------------------------------------------------------------- the cloud's state


@dataclass
class EmulatedVM:
    id: int
    token: str
    name: str
    user_template: dict[str, Any] = field(default_factory=dict)
    nics: list[dict[str, str]] = field(default_factory=list)
    state: str = "3"
    lcm_state: str = "3"

    def to_hash(self) -> dict[str, Any]:
        """build_vm_hash: strings, {} for empty, NIC lists filtered to the valid keys."""
        template = {
            k: (v if v != "" else {}) for k, v in self.user_template.items() if k != "SCHED_MESSAGE"
        }
        nics = [{k: v for k, v in nic.items() if k in NIC_VALID_KEYS} for nic in self.nics]
        return {
            "VM": {
                "NAME": self.name,
                "ID": str(self.id),
                "STATE": self.state,
                "LCM_STATE": self.lcm_state,
                "USER_TEMPLATE": template,
                "TEMPLATE": {"NIC": nics, "NIC_ALIAS": []},
            }
        }

    def to_raw_hash(self) -> dict[str, Any]:
        """The unfiltered VirtualMachine#to_hash of `?extended`: one NIC is a dict, not a list."""
        nics: Any = self.nics[0] if len(self.nics) == 1 else list(self.nics)
        vm = self.to_hash()["VM"]
        vm["TEMPLATE"] = {"NIC": nics, "CONTEXT": {}} if self.nics else {"CONTEXT": {}}
        return {"VM": vm}


@dataclass
class EmulatedRole:
    name: str
    vm_ids: list[int]
    cardinality: int | None = None
    state: int = 2


@dataclass
class EmulatedService:
    id: int
    name: str
    roles: list[EmulatedRole] | None  # None: a service document without roles
    state: int = 2


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it; the token's value is never kept."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    params: dict[str, str]
    body: str
    time: float  # time.monotonic() at arrival
    status: int | None = None  # None: the connection was dropped

    @property
    def data_lines(self) -> list[str]:
        return self.params.get("data", "").split("\n") if "data" in self.params else []


@dataclass
class Faults:
    """Failures to inject; settable while the server runs."""

    drop: bool = False  # close connections without an answer
    slow_s: float = 0.0  # delay before answering
    fail_next: int = 0  # answer the next N requests with fail_status
    fail_until: float = 0.0  # time.monotonic() until which every request fails
    fail_status: int = 500
    fail_body: str = "Internal Server Error"
    unauthorized: bool = False  # answer every request 401 (after the permission check)


class OneGateEmulator:
    """The server; `start()` returns its endpoint (http://127.0.0.1:<port>)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        state_file: Path | None = None,
        version: str = VERSIONS[-1],
    ) -> None:
        if version not in VERSIONS:
            raise ValueError(f"unknown OneGate version {version!r}; one of {VERSIONS}")
        self.host = host
        self.port = port
        self.state_file = state_file
        self.version = version
        self.denied: set[tuple[str, str]] = set()  # (resource, action) set false in the conf
        self.vms: dict[int, EmulatedVM] = {}
        self.services: dict[int, EmulatedService] = {}
        self.faults = Faults()
        self.lock = threading.RLock()
        self._requests: list[RecordedRequest] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        if state_file and state_file.exists():
            self._load(json.loads(state_file.read_text()))

    # -- lifecycle

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> str:
        handler = type("Handler", (_Handler,), {"emulator": self})
        self._server = ThreadingHTTPServer((self.host, self.port), handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self.endpoint

    def stop(self) -> None:
        """Stop listening: connections are refused (the port is kept for `start`)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> OneGateEmulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the cloud

    def add_vm(
        self,
        vm_id: int,
        *,
        token: str | None = None,
        name: str | None = None,
        user_template: dict[str, Any] | None = None,
        ips: tuple[str, ...] = (),
    ) -> EmulatedVM:
        nics = [
            {"IP": ip, "MAC": f"02:00:{i:02x}:00:00:{vm_id % 256:02x}", "NAME": f"NIC{i}"}
            for i, ip in enumerate(ips)
        ]
        vm = EmulatedVM(
            vm_id, token or secrets.token_urlsafe(24), name or f"vm-{vm_id}",
            dict(user_template or {}), nics,
        )  # fmt: skip
        with self.lock:
            self.vms[vm_id] = vm
        return vm

    def add_service(self, service_id: int, name: str, roles: dict[str, list[int]]) -> None:
        """A OneFlow service; its VMs get SERVICE_ID and ROLE_NAME as OneFlow sets them."""
        with self.lock:
            self.services[service_id] = EmulatedService(
                service_id, name, [EmulatedRole(r, list(ids)) for r, ids in roles.items()]
            )
            for role, ids in roles.items():
                for vm_id in ids:
                    self._join(service_id, role, vm_id)

    def add_node(self, service_id: int, role: str, vm_id: int) -> None:
        """Scale a role up by one VM (which must exist)."""
        with self.lock:
            self._role(service_id, role).vm_ids.append(vm_id)
            self._join(service_id, role, vm_id)

    def remove_node(self, service_id: int, role: str, vm_id: int) -> None:
        with self.lock:
            self._role(service_id, role).vm_ids.remove(vm_id)

    def set_attributes(self, vm_id: int, **attributes: str) -> None:
        """Change a VM's USER_TEMPLATE directly, as another client of oned would."""
        with self.lock:
            self.vms[vm_id].user_template.update(attributes)
            self._save()

    def user_template(self, vm_id: int) -> dict[str, Any]:
        with self.lock:
            return dict(self.vms[vm_id].user_template)

    def _join(self, service_id: int, role: str, vm_id: int) -> None:
        vm = self.vms[vm_id]
        vm.user_template.update({"SERVICE_ID": str(service_id), "ROLE_NAME": role})
        vm.name = f"{role}_{vm_id}_(service_{service_id})"

    def _role(self, service_id: int, role: str) -> EmulatedRole:
        return next(r for r in self.services[service_id].roles or [] if r.name == role)

    # -- faults and the record

    def set_faults(self, **changes: Any) -> None:
        """Change fault fields (see Faults); `fail_for_s=T` fails every request for T seconds."""
        with self.lock:
            if "fail_for_s" in changes:
                changes["fail_until"] = time.monotonic() + float(changes.pop("fail_for_s"))
            for key, value in changes.items():
                if not hasattr(self.faults, key):
                    raise ValueError(f"unknown fault {key!r}")
                setattr(self.faults, key, value)

    def clear_faults(self) -> None:
        with self.lock:
            self.faults = Faults()

    @property
    def requests(self) -> list[RecordedRequest]:
        with self.lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self.lock:
            self._requests.clear()

    def record(self, request: RecordedRequest) -> None:
        with self.lock:
            self._requests.append(request)

    # -- persistence (demo)

    def _load(self, data: dict[str, Any]) -> None:
        for vm in data.get("vms", []):
            self.add_vm(
                int(vm["id"]),
                token=vm["token"],
                name=vm.get("name"),
                user_template=vm.get("user_template"),
                ips=tuple(vm.get("ips", ())),
            )
        for service in data.get("services", []):
            roles = {r["name"]: [int(i) for i in r["vm_ids"]] for r in service["roles"]}
            self.add_service(int(service["id"]), service["name"], roles)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "vms": [
                    {
                        "id": vm.id,
                        "token": vm.token,
                        "name": vm.name,
                        "user_template": vm.user_template,
                        "ips": [nic["IP"] for nic in vm.nics],
                    }
                    for vm in self.vms.values()
                ],
                "services": [
                    {
                        "id": s.id,
                        "name": s.name,
                        "roles": [{"name": r.name, "vm_ids": r.vm_ids} for r in s.roles or []],
                    }
                    for s in self.services.values()
                ],
            }

    def _save(self) -> None:
        if self.state_file is not None:
            temp = self.state_file.with_name(self.state_file.name + ".tmp")
            temp.write_text(json.dumps(self.snapshot(), indent=2))
            temp.chmod(0o600)
            temp.replace(self.state_file)

    # -- the API, as onegate-server.rb answers it

    def deny(self, resource: str, action: str) -> None:
        """Set `:permissions: :<resource>: :<action>:` false, as an operator may."""
        with self.lock:
            self.denied.add((resource, action))

    def handle(self, method: str, path: str, headers, params, body: str) -> tuple[int, str]:
        """(status, body) for one API request, after faults; 7.0.1+ rewrites every 500."""
        status, text = self._route(method, path, headers, params, body)
        if status == 500 and self.version >= "7.0.1":
            return 500, INTERNAL_ERROR
        return status, text

    def _route(self, method: str, path: str, headers, params, body: str) -> tuple[int, str]:
        match = re.fullmatch(r"/vms/(\d+)", path)
        permission = {
            ("GET", "/vm"): ("vm", "show"),
            ("PUT", "/vm"): ("vm", "update"),
            ("GET", "/service"): ("service", "show"),
        }.get((method, path))
        if match and method in ("GET", "PUT"):
            permission = ("vm", "show_by_id" if method == "GET" else "update_by_id")
        if permission is None and (method, path) != ("GET", "/"):
            return 400, UNSUPPORTED  # the catch-all route: no permission, no token
        with self.lock:
            if permission in self.denied:
                return 403, f"Action ({permission[1]}) on resource ({permission[0]}) not supported"
            vm = self._authenticate(headers)
            if vm is None:
                return 401, "Not authorized"
            if path == "/":
                return 200, json.dumps(
                    {"vm_info": f"{self.endpoint}/vm", "service_info": f"{self.endpoint}/service"}
                )
            if path == "/vm":
                return self._vm(vm, method, params, body)
            if match:
                target, error = self._peer(vm, int(match[1]))
                return error or self._vm(target, method, params, body)
            return self._service(vm, extended="extended" in params)

    def _authenticate(self, headers) -> EmulatedVM | None:
        token, vmid = headers.get("X-ONEGATE-TOKEN"), headers.get("X-ONEGATE-VMID")
        if self.faults.unauthorized or not token or not vmid or not vmid.strip().isdigit():
            return None
        vm = self.vms.get(int(vmid))
        return vm if vm is not None and secrets.compare_digest(vm.token, token) else None

    def _vm(self, vm: EmulatedVM, method: str, params, body: str) -> tuple[int, str]:
        if method == "GET":
            return 200, json.dumps(vm.to_hash())
        status, text = self._update(vm, params, body)
        if status == 200:
            self._save()
        return status, text

    def _update(self, vm: EmulatedVM, params, body: str) -> tuple[int, str]:
        attr = params.get("data", body)
        kind = _ruby_to_i(params["type"]) if "type" in params else 1
        attr = escape_attr(attr)
        error = "cannot be modified" if kind == 1 else "cannot be deleted"
        for line in attr.split("\n"):
            key = line.split("=")[0]
            if key and key.upper() in RESTRICTED_ATTRS:
                return 403, f"Attribute ({key}) {error}"
        if kind != 1:
            if attr not in vm.user_template:
                return 500, "attribute not found"
            del vm.user_template[attr]
            return 200, ""
        try:
            attributes = parse_template(attr)
        except TemplateError as exc:
            return 500, f"[one.vm.update] Cannot update template. {exc}"
        vm.user_template.update(attributes)
        return 200, ""

    def _peer(self, vm: EmulatedVM, target_id: int) -> tuple[EmulatedVM, tuple[int, str] | None]:
        if target_id == vm.id:
            return vm, None
        service_id = str(vm.user_template.get("SERVICE_ID", ""))
        if not service_id:
            return vm, (
                400,
                "This VM does not belong to any Virtual Router or Service, so it cannot "
                "retrieve information from other VMs",
            )
        status, text = self._service(vm, member=target_id)
        if status != 200:
            return vm, (status, text)
        if target_id not in self.vms:
            return vm, (404, f"Error getting virtual machine [{target_id}].")
        return self.vms[target_id], None

    def _service(
        self, vm: EmulatedVM, *, extended: bool = False, member: int | None = None
    ) -> tuple[int, str]:
        """check_vm_in_service: the service, when `member` (default: the asking VM) is a node."""
        service_id = str(vm.user_template.get("SERVICE_ID", ""))
        if not service_id.isdigit():
            return 400, "Empty or invalid SERVICE_ID"
        service = self.services.get(int(service_id))
        if service is None:
            return 404, f"Service {service_id} not found"
        if service.roles is None:
            return 400, f"Service {service_id} is empty."
        member = vm.id if member is None else member
        if not any(member in r.vm_ids for r in service.roles):
            return 400, f"Service {service_id} does not contain VM {member}."
        roles = [self._role_hash(r, extended) for r in service.roles]
        body = {"name": service.name, "id": str(service.id), "state": service.state, "roles": roles}
        return 200, json.dumps({"SERVICE": body})

    def _role_hash(self, role: EmulatedRole, extended: bool) -> dict[str, Any]:
        nodes = []
        for vm_id in role.vm_ids:
            vm = self.vms.get(vm_id)
            if extended and vm is not None:
                info = vm.to_raw_hash()
            else:
                name = vm.name if vm else f"{role.name}_{vm_id}"
                info = {"VM": {"ID": str(vm_id), "UID": "0", "GID": "0", "UNAME": "oneadmin",
                               "GNAME": "oneadmin", "NAME": name}}  # fmt: skip
            nodes.append({"deploy_id": vm_id, "running": None, "vm_info": info})
        cardinality = role.cardinality if role.cardinality is not None else len(role.vm_ids)
        return {"name": role.name, "cardinality": cardinality, "state": role.state, "nodes": nodes}

    def control(self, method: str, path: str, body: str) -> tuple[int, str]:
        """This emulator's own routes: the request record, the state, the faults."""
        name = path.removeprefix(CONTROL_PREFIX)
        if method == "GET" and name == "requests":
            return 200, json.dumps([asdict(r) for r in self.requests])
        if method == "GET" and name == "state":
            return 200, json.dumps(self.snapshot())
        if method == "PUT" and name == "faults":
            try:
                changes = json.loads(body or "{}")
                self.clear_faults()
                self.set_faults(**changes)
            except (ValueError, TypeError) as exc:
                return 400, str(exc)
            return 200, json.dumps(asdict(self.faults))
        return 400, UNSUPPORTED


def _ruby_to_i(text: str) -> int:
    """Ruby's String#to_i: the leading integer, 0 when there is none."""
    match = re.match(r"\s*([-+]?\d+)", text)
    return int(match[1]) if match else 0


class _Handler(BaseHTTPRequestHandler):
    """One request: record, apply faults, answer like the Sinatra app."""

    emulator: OneGateEmulator
    protocol_version = "HTTP/1.0"  # one request per connection: `stop` refuses at once

    def do_GET(self) -> None:
        self._serve("GET")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read the record
        pass

    def _serve(self, method: str) -> None:
        arrived = time.monotonic()
        url = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        if url.path.startswith(CONTROL_PREFIX):
            self._answer(*self.emulator.control(method, url.path, body))
            return
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        params = {k: v[-1] for k, v in query.items()}
        media = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if media == "application/x-www-form-urlencoded":
            form = urllib.parse.parse_qs(body, keep_blank_values=True)
            params.update({k: v[-1] for k, v in form.items()})
        status = self._faulted()
        if status is None and self.emulator.faults.drop:
            self._record(method, url.path, query, params, body, arrived, None)
            self.close_connection = True
            return
        if status is None:
            status, text = self.emulator.handle(method, url.path, self.headers, params, body)
        else:
            text = self.emulator.faults.fail_body
            if status == 500 and self.emulator.version >= "7.0.1":
                text = INTERNAL_ERROR
        self._record(method, url.path, query, params, body, arrived, status)
        self._answer(status, text)

    def _faulted(self) -> int | None:
        emulator = self.emulator
        with emulator.lock:
            faults = emulator.faults
            slow = faults.slow_s
            if faults.fail_next > 0:
                faults.fail_next -= 1
                status = faults.fail_status
            elif time.monotonic() < faults.fail_until:
                status = faults.fail_status
            else:
                status = None
        if slow:
            time.sleep(slow)
        return status

    def _record(self, method, path, query, params, body, arrived, status) -> None:
        headers = {k: v for k, v in self.headers.items() if k.upper() != "X-ONEGATE-TOKEN"}
        if self.headers.get("X-ONEGATE-TOKEN"):
            headers["X-ONEGATE-TOKEN"] = "***"
        self.emulator.record(
            RecordedRequest(method, path, query, headers, params, body, arrived, status)
        )

    def _answer(self, status: int, text: str) -> None:
        payload = text.encode()
        # A client that gave up (its own timeout) has nobody left to answer.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.send_response(status)
            self.send_header("Content-Type", "application/json;charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5030)
    parser.add_argument("--state", type=Path, help="JSON file: VMs and services, kept updated")
    parser.add_argument("--version", choices=VERSIONS, default=VERSIONS[-1])
    args = parser.parse_args(argv)
    emulator = OneGateEmulator(args.host, args.port, args.state, args.version)
    emulator.start()
    print(f"OneGate emulator on {emulator.endpoint}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        emulator.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
