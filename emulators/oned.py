"""A stand-in for oned's XML-RPC API, for tests and demos: standard library only.

It answers the calls the operator commands make, the way oned does (OpenNebula/one's
Request::success_response / failure_response):
``[True, value, 0]`` on success and ``[False, message, code]`` on failure, with oned's codes.
Documents follow OpenNebula's XSD as pyone 7.x's bindings read them: a HOST_POOL whose
hosts carry ``HOST_SHARE/PCI_DEVICES/PCI`` entries with the monitoring probe's fields.
The session string is checked on every call and every call is recorded (without it).

    with OnedEmulator() as oned:          # listens on 127.0.0.1, a free port
        pyone.OneServer(oned.url, session=oned.session).hostpool.info()
"""

from __future__ import annotations

import html
import threading
from dataclasses import dataclass, field
from typing import Any
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

from emulators.template import TemplateError, parse_template

# oned's ErrorCode values (include/Request.h; pyone/server_xrpc.py maps them to exceptions).
SUCCESS = 0x0000
AUTHENTICATION = 0x0100
AUTHORIZATION = 0x0200
NO_EXISTS = 0x0400
ACTION = 0x0800
XML_RPC_API = 0x1000
INTERNAL = 0x2000

HOST_MONITORED = 2
HOST_DISABLED = 4


@dataclass(frozen=True)
class Pci:
    """One ``PCI`` entry as the probe reports it (src/im_mad/remotes/node-probes.d/pci.rb)."""

    short_address: str  # bus:slot.func
    vendor: str
    device: str
    device_class: str
    vendor_name: str
    device_name: str
    class_name: str
    numa_node: str = "0"
    vmid: int = -1
    domain: str = "0000"
    uuid: str | None = None
    profiles: str | None = None  # an NVIDIA vGPU virtual function: its creatable profiles
    mdev_mode: str | None = None  # ... and `nvidia` or `legacy` (7.0's probe)

    def xml(self) -> str:
        bus, rest = self.short_address.split(":")
        slot, function = rest.split(".")
        fields = {
            "ADDRESS": f"{self.domain}:{bus}:{slot}:{function}",
            "BUS": bus,
            "CLASS": self.device_class,
            "CLASS_NAME": self.class_name,
            "DEVICE": self.device,
            "DEVICE_NAME": self.device_name,
            "DOMAIN": self.domain,
            "FUNCTION": function,
            "IFNAME": "-",
            "NUMA_NODE": self.numa_node,
            "PROFILES": self.profiles,
            "MDEV_MODE": self.mdev_mode,
            "SHORT_ADDRESS": self.short_address,
            "SLOT": slot,
            "SRIOV": "-",
            "TYPE": f"{self.vendor}:{self.device}:{self.device_class}",
            "UUID": self.uuid,
            "VENDOR": self.vendor,
            "VENDOR_NAME": self.vendor_name,
            "VMID": str(self.vmid),
        }
        return "<PCI>" + _elements(fields) + "</PCI>"


@dataclass(frozen=True)
class Host:
    id: int
    name: str
    pci: tuple[Pci, ...] = ()
    state: int = HOST_MONITORED
    cluster: str = "default"
    ovmf_uefis: str | None = None  # OVMF_UEFIS set in the host's template by the admin

    def xml(self) -> str:
        vms = sorted({p.vmid for p in self.pci if p.vmid >= 0})
        share = _elements(
            {
                "MEM_USAGE": "0",
                "CPU_USAGE": "0",
                "TOTAL_MEM": "528000000",
                "TOTAL_CPU": "12800",
                "MAX_MEM": "528000000",
                "MAX_CPU": "12800",
                "RUNNING_VMS": str(len(vms)),
                "VMS_THREAD": "1",
            }
        )
        share += "<DATASTORES><DISK_USAGE>0</DISK_USAGE><FREE_DISK>900000</FREE_DISK>"
        share += "<MAX_DISK>1000000</MAX_DISK><USED_DISK>100000</USED_DISK></DATASTORES>"
        share += "<PCI_DEVICES>" + "".join(p.xml() for p in self.pci) + "</PCI_DEVICES>"
        share += "<NUMA_NODES></NUMA_NODES>"
        head = _elements(
            {
                "ID": str(self.id),
                "NAME": self.name,
                "STATE": str(self.state),
                "PREV_STATE": str(self.state),
                "IM_MAD": "kvm",
                "VM_MAD": "kvm",
                "CLUSTER_ID": "0",
                "CLUSTER": self.cluster,
            }
        )
        vm_ids = "".join(f"<ID>{v}</ID>" for v in vms)
        template = "<HYPERVISOR><![CDATA[kvm]]></HYPERVISOR>"
        if self.ovmf_uefis is not None:
            template += f"<OVMF_UEFIS><![CDATA[{self.ovmf_uefis}]]></OVMF_UEFIS>"
        template = f"<TEMPLATE>{template}</TEMPLATE>"
        return (
            f"<HOST>{head}<HOST_SHARE>{share}</HOST_SHARE><VMS>{vm_ids}</VMS>"
            f"{template}<MONITORING></MONITORING></HOST>"
        )


def _nvidia(address: str, device: str, name: str, cls: str = "0302", **kw: Any) -> Pci:
    class_name = {"0300": "VGA compatible controller", "0302": "3D controller"}.get(cls, "")
    class_name = class_name or "Audio device"
    return Pci(address, "10de", device, cls, "NVIDIA Corporation", name, class_name, **kw)


H200 = "NVIDIA Corporation GH100 [H200 SXM 141GB]"
A6000 = "NVIDIA Corporation GA102GL [RTX A6000]"

DEFAULT_HOSTS: tuple[Host, ...] = (
    Host(
        0,
        "gpu-node-01",
        (
            _nvidia("41:00.0", "2335", H200, numa_node="0"),
            _nvidia("c1:00.0", "2335", H200, numa_node="1", vmid=12),
            Pci(
                "02:00.0",
                "8086",
                "1521",
                "0200",
                "Intel Corporation",
                "I350 Gigabit",
                "Ethernet controller",
            ),
        ),
    ),
    Host(
        1,
        "gpu-node-02",
        (
            _nvidia("41:00.0", "2335", H200, vmid=17),
            _nvidia("61:00.0", "2230", A6000, cls="0300"),
            _nvidia("61:00.1", "1aef", "NVIDIA Corporation GA102 High Definition Audio", "0403"),
            Pci(
                "81:00.0",
                "15b3",
                "101b",
                "0207",
                "Mellanox Technologies",
                "MT28908 Family [ConnectX-6]",
                "Infiniband controller",
                numa_node="1",
            ),
        ),
    ),
    Host(2, "gpu-node-03", (_nvidia("41:00.0", "2335", H200),), state=HOST_DISABLED),
    Host(3, "cpu-node-01"),
)
"""Three GPU hosts (one disabled) and a CPU host: H200s free and used, an RTX A6000 with its
audio function, and non-NVIDIA devices the probe's filter let through."""


@dataclass(frozen=True)
class Image:
    id: int
    name: str
    owner: str = "oneadmin"
    type: int = 0  # IMAGE_TYPES: 0 OS, 1 CDROM, 2 DATABLOCK, ...

    def xml(self) -> str:
        extra = {"TYPE": str(self.type), "STATE": "1"}
        return _pool_object("IMAGE", self.id, self.name, self.owner, extra)


@dataclass(frozen=True)
class Vnet:
    id: int
    name: str
    owner: str = "oneadmin"

    def xml(self) -> str:
        return _pool_object("VNET", self.id, self.name, self.owner, {})


def _pool_object(tag: str, oid: int, name: str, owner: str, extra: dict[str, str]) -> str:
    """An owned pool element (IMAGE, VNET) with its ownership fields, as oned serves it."""
    fields = {
        "ID": str(oid),
        "UID": "0",
        "GID": "0",
        "UNAME": owner,
        "GNAME": "oneadmin",
        "NAME": name,
        **extra,
    }
    return f"<{tag}>{_elements(fields)}<TEMPLATE></TEMPLATE></{tag}>"


DEFAULT_IMAGES = (
    Image(12, "fl-supernode"),
    Image(13, "scratch", type=2),
    Image(14, "ubuntu-24.04", "alice"),
    Image(15, "ubuntu-24.04", "bob"),
)
"""An OS image, a datablock, and two OS images of one name owned by different users."""
DEFAULT_VNETS = (Vnet(0, "public"), Vnet(1, "lab", "alice"))


@dataclass(frozen=True)
class Call:
    method: str
    args: tuple[Any, ...]
    authenticated: bool


@dataclass
class _State:
    hosts: tuple[Host, ...]
    images: tuple[Image, ...] = DEFAULT_IMAGES
    vnets: tuple[Vnet, ...] = DEFAULT_VNETS
    templates: dict[int, tuple[str, str]] = field(default_factory=dict)  # id -> (name, body)
    documents: dict[int, tuple[int, str]] = field(default_factory=dict)  # id -> (type, xml)
    calls: list[Call] = field(default_factory=list)
    failing: dict[str, tuple[str, int]] = field(default_factory=dict)  # method -> (msg, code)


class OnedEmulator:
    """oned's XML-RPC API for hosts, VM templates and documents (OneFlow service templates)."""

    def __init__(
        self,
        hosts: tuple[Host, ...] = DEFAULT_HOSTS,
        session: str = "oneadmin:opennebula",
        templates: dict[int, str] | None = None,
        version: str = "7.0.0",
    ) -> None:
        self.session = session
        self.version = version
        self.state = _State(hosts)
        for tid, name in (templates or {}).items():
            self.state.templates[tid] = (name, f'NAME="{name}"\n')
        self._lock = threading.Lock()
        self._server: SimpleXMLRPCServer | None = None

    # --- what tests look at ---

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self.state.calls)

    def add_template(self, text: str) -> int:
        """Register a VM template as one.template.allocate would; its ID."""
        with self._lock:
            ok, tid, _ = self._template_allocate("one.template.allocate", text)
        assert ok, tid
        return tid

    def fail(self, method: str, code: int = AUTHORIZATION, message: str = "") -> None:
        """Make `method` answer [False, message, code] (default: a user without the right)."""
        text = message or "User [0] : Not authorized to perform this operation."
        with self._lock:
            self.state.failing[method] = (f"[{method}] {text}", code)

    # --- server ---

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/RPC2"

    def start(self, port: int = 0) -> str:
        server = SimpleXMLRPCServer(
            ("127.0.0.1", port), requestHandler=_Handler, logRequests=False, allow_none=False
        )
        for method, fn in self._methods().items():
            server.register_function(self._guarded(method, fn), method)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        self._server = server
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> OnedEmulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _guarded(self, method: str, fn: Any) -> Any:
        def handler(session: str, *args: Any) -> list[Any]:
            ok = session == self.session
            with self._lock:
                self.state.calls.append(Call(method, args, ok))
                if not ok:
                    msg = f"[{method}] User couldn't be authenticated, aborting call."
                    return [False, msg, AUTHENTICATION]
                if method in self.state.failing:
                    return [False, *self.state.failing[method]]
                return fn(method, *args)

        return handler

    def _methods(self) -> dict[str, Any]:
        return {
            "one.hostpool.info": self._hostpool_info,
            "one.imagepool.info": self._imagepool_info,
            "one.vnpool.info": self._vnpool_info,
            "one.template.allocate": self._template_allocate,
            "one.template.info": self._template_info,
            "one.document.allocate": self._document_allocate,
            "one.system.version": self._system_version,
        }

    # --- the calls (the lock is held) ---

    def _system_version(self, method: str) -> list[Any]:
        return [True, self.version, SUCCESS]

    def _hostpool_info(self, method: str) -> list[Any]:
        return [
            True,
            "<HOST_POOL>" + "".join(h.xml() for h in self.state.hosts) + "</HOST_POOL>",
            SUCCESS,
        ]

    def _imagepool_info(self, method: str, who: int, start: int, end: int) -> list[Any]:
        return [True, "<IMAGE_POOL>" + "".join(i.xml() for i in self.state.images) +
                "</IMAGE_POOL>", SUCCESS]  # fmt: skip

    def _vnpool_info(self, method: str, who: int, start: int, end: int) -> list[Any]:
        return [True, "<VNET_POOL>" + "".join(v.xml() for v in self.state.vnets) + "</VNET_POOL>",
                SUCCESS]  # fmt: skip

    def _template_allocate(self, method: str, body: str) -> list[Any]:
        try:
            attrs = parse_template(body)
        except TemplateError as exc:
            return [False, f"[{method}] Parse error: {exc}", INTERNAL]
        names = [v for k, v in attrs if k == "NAME" and isinstance(v, str)]
        if not names or not names[0]:  # PoolObjectSQL::name_is_valid (release-7.0.0)
            return [False, f"[{method}] Invalid NAME, it cannot be empty", INTERNAL]
        taken = [t for t, (name, _) in self.state.templates.items() if name == names[0]]
        if taken:  # VMTemplatePool::allocate: one name per owner (every template is oneadmin's)
            return [False, f"[{method}] NAME is already taken by TEMPLATE {taken[0]}.", INTERNAL]
        tid = max(self.state.templates, default=-1) + 1
        self.state.templates[tid] = (names[0], body)
        return [True, tid, SUCCESS]

    def _template_info(self, method: str, tid: int, *flags: Any) -> list[Any]:
        if tid not in self.state.templates:
            return [False, f"[{method}] Error getting template [{tid}].", NO_EXISTS]
        name, body = self.state.templates[tid]
        xml = (
            f"<VMTEMPLATE><ID>{tid}</ID><UID>0</UID><GID>0</GID><UNAME>oneadmin</UNAME>"
            f"<GNAME>oneadmin</GNAME><NAME>{html.escape(name)}</NAME><LOCK/>"
            "<PERMISSIONS><OWNER_U>1</OWNER_U><OWNER_M>1</OWNER_M><OWNER_A>0</OWNER_A>"
            "<GROUP_U>0</GROUP_U><GROUP_M>0</GROUP_M><GROUP_A>0</GROUP_A><OTHER_U>0</OTHER_U>"
            "<OTHER_M>0</OTHER_M><OTHER_A>0</OTHER_A></PERMISSIONS><REGTIME>0</REGTIME>"
            f"<TEMPLATE>{_template_xml(_without_name(parse_template(body)))}</TEMPLATE>"
            "</VMTEMPLATE>"
        )
        return [True, xml, SUCCESS]

    def _document_allocate(self, method: str, xml: str, doc_type: int) -> list[Any]:
        import xml.etree.ElementTree as ET

        try:
            root = ET.fromstring(xml)
        except ET.ParseError as exc:
            return [False, f"[{method}] Parse error: {exc}", INTERNAL]
        if root.tag != "TEMPLATE":
            return [False, f"[{method}] Parse error: root element must be TEMPLATE", INTERNAL]
        did = max(self.state.documents, default=-1) + 1
        self.state.documents[did] = (int(doc_type), xml)
        return [True, did, SUCCESS]


class _Handler(SimpleXMLRPCRequestHandler):
    rpc_paths = ("/RPC2",)


def _without_name(attrs: list) -> list:
    """VMTemplate::insert erases NAME from the template (release-7.0.0): it lives in <NAME>."""
    return [(key, value) for key, value in attrs if key != "NAME"]


def _template_xml(attrs: list[tuple[str, str | dict[str, str]]]) -> str:
    """Template::to_xml: an element per attribute, values in CDATA, a vector's inside it."""

    def cdata(value: str) -> str:
        return "<![CDATA[" + value.replace("]]>", "]]]]><![CDATA[>") + "]]>"

    def element(name: str, value: str | dict[str, str]) -> str:
        inner = (
            cdata(value)
            if isinstance(value, str)
            else "".join(element(k, v) for k, v in value.items())
        )
        return f"<{name}>{inner}</{name}>"

    return "".join(element(name, value) for name, value in attrs)


def _elements(fields: dict[str, str | None]) -> str:
    return "".join(f"<{k}>{html.escape(v)}</{k}>" for k, v in fields.items() if v is not None)


def main(argv: list[str] | None = None) -> int:
    """``python -m emulators.oned [--port 2633]``: serve the default pool until interrupted."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="oned XML-RPC stand-in (hosts with GPUs)")
    parser.add_argument("--port", type=int, default=2633)
    parser.add_argument("--session", default="oneadmin:opennebula", help="the user:password")
    parser.add_argument("--version", default="7.0.0", help="what one.system.version answers")
    args = parser.parse_args(argv)
    oned = OnedEmulator(session=args.session, version=args.version)
    sys.stdout.write(f"oned stand-in on {oned.start(args.port)}\n")
    sys.stdout.flush()
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        oned.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
