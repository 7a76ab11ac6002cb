"""`fl-agent one hosts|template|service` against the oned stand-in, called by the real pyone."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from agent.cli import main
from agent.one.inputs import INPUTS
from agent.one.syntax import parse
from emulators import oned as oned_codes
from emulators import oneflow
from emulators.oned import DEFAULT_HOSTS, Host, OnedEmulator, Pci

PASSWORD = "s3cr3t-pw"
H200 = "NVIDIA Corporation GH100 [H200 SXM 141GB]"


def h200(address: str, vmid: int = -1) -> Pci:
    return Pci(address, "10de", "2335", "0302", "NVIDIA Corporation", H200, "3D controller",
               vmid=vmid)  # fmt: skip


def start(
    monkeypatch, tmp_path, hosts=DEFAULT_HOSTS, templates=None, version="7.0.0"
) -> OnedEmulator:
    oned = OnedEmulator(hosts, session=f"oneadmin:{PASSWORD}", templates=templates,
                        version=version)  # fmt: skip
    monkeypatch.setenv("FL_AGENT_ROOT", str(tmp_path / "root"))  # no front-end files here
    oned.start()
    auth = tmp_path / "one_auth"
    auth.write_text(f"oneadmin:{PASSWORD}\n")
    monkeypatch.setenv("ONE_XMLRPC", oned.url)
    monkeypatch.setenv("ONE_AUTH", str(auth))
    monkeypatch.setenv("HOME", str(tmp_path))
    return oned


@pytest.fixture
def oned(monkeypatch, tmp_path):
    server = start(monkeypatch, tmp_path, templates={3: "flower-superlink", 4: "fl-supernode"})
    yield server
    server.stop()


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["one", *argv])
    out, err = capsys.readouterr()
    assert PASSWORD not in out + err
    return code, out, err


def methods(oned: OnedEmulator) -> list[str]:
    return [c.method for c in oned.calls]


# --- hosts ---


def test_hosts_lists_every_nvidia_device_with_its_state(oned, capsys):
    code, out, _ = run(capsys, "hosts")
    assert code == 0
    rows = [line.split() for line in out.splitlines()[1:7]]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("gpu-node-01", "41:00.0", "10de:2335"),
        ("gpu-node-01", "c1:00.0", "10de:2335"),
        ("gpu-node-02", "41:00.0", "10de:2335"),
        ("gpu-node-02", "61:00.0", "10de:2230"),
        ("gpu-node-02", "61:00.1", "10de:1aef"),
        ("gpu-node-03", "41:00.0", "10de:2335"),
    ]
    assert "VM 12" in out.splitlines()[2] and "VM 17" in out.splitlines()[3]
    assert "free, host DISABLED" in out.splitlines()[6]
    assert "not a GPU: Audio device" in out.splitlines()[5]
    assert "8086:1521" not in out and "15b3:101b" not in out
    assert "10de:2335  1 of 4 free" in out and "10de:2230  1 of 1 free" in out
    assert [c.authenticated for c in oned.calls] == [True]
    assert methods(oned) == ["one.hostpool.info"]


def test_hosts_json(oned, capsys):
    code, out, _ = run(capsys, "hosts", "--json")
    data = json.loads(out)
    assert code == 0
    assert data["hosts"]["gpu-node-03"] == "DISABLED" and data["hosts"]["cpu-node-01"] == "usable"
    devs = {(d["host"], d["short_address"]): d for d in data["devices"]}
    assert len(devs) == 6
    used = devs[("gpu-node-01", "c1:00.0")]
    assert (used["vmid"], used["free"], used["numa_node"], used["gpu"]) == (12, False, "1", True)
    assert devs[("gpu-node-02", "61:00.1")]["gpu"] is False
    assert devs[("gpu-node-01", "41:00.0")]["device_name"] == H200
    models = {m["model"]: (m["total"], m["free"]) for m in data["models"]}
    assert models == {"10de:2335": (4, 1), "10de:2230": (1, 1)}


# --- template ---


def attributes(text: str) -> dict[str, list]:
    out: dict[str, list] = {}
    for name, value in parse(text):
        out.setdefault(name, []).append(value)
    return out


def test_template_by_address_has_every_passthrough_attribute(oned, capsys):
    code, out, err = run(capsys, "template", "--gpu-address", "41:00.0", "--cores", "16",
                         "--memory", "65536", "--image", "12", "--network", "lab")  # fmt: skip
    assert code == 0, err
    t = attributes(out)
    assert t["NAME"] == ["fl-supernode-gpu"]
    assert (t["CPU"], t["VCPU"], t["MEMORY"]) == (["16"], ["16"], ["65536"])
    assert t["OS"] == [{"ARCH": "x86_64", "FIRMWARE": "UEFI", "FIRMWARE_SECURE": "false",
                        "MACHINE": "q35"}]  # fmt: skip
    assert "FEATURES" not in t
    assert t["CPU_MODEL"] == [{"MODEL": "host-passthrough"}]
    assert t["TOPOLOGY"] == [{"PIN_POLICY": "CORE", "SOCKETS": "1", "CORES": "16", "THREADS": "1"}]
    assert t["PCI"] == [{"SHORT_ADDRESS": "41:00.0"}]
    assert t["DISK"] == [{"IMAGE_ID": "12"}]
    assert t["NIC"] == [{"NETWORK": "lab", "NETWORK_UNAME": "alice"}]
    context = t["CONTEXT"][0]
    assert (context["TOKEN"], context["NETWORK"], context["REPORT_READY"]) == ("YES",) * 3
    inputs = t["USER_INPUTS"][0]
    for i in INPUTS:
        assert context[i.name] == f"${i.name}"
        assert inputs[i.name] == i.spec()
        assert len(inputs[i.name].split("|")) == 5
    assert set(inputs) == {i.name for i in INPUTS}
    assert t["INPUTS_ORDER"] == [",".join(i.name for i in INPUTS)]
    assert "gpu-node-01" in err
    assert methods(oned) == [
        "one.hostpool.info", "one.system.version", "one.imagepool.info", "one.vnpool.info"
    ]  # fmt: skip
    assert oned.calls[2].args == (-2, -1, -1) and oned.calls[3].args == (-2, -1, -1)


def test_template_image_and_network_by_name_carry_their_owner(oned, capsys):
    code, out, _ = run(capsys, "template", "--gpu-model", "10de:2335",
                       "--image", "fl-supernode", "--network", "0")  # fmt: skip
    assert code == 0
    t = attributes(out)
    assert t["DISK"] == [{"IMAGE": "fl-supernode", "IMAGE_UNAME": "oneadmin"}]
    assert t["NIC"] == [{"NETWORK_ID": "0"}]


@pytest.mark.parametrize("address", ["0000:41:00.0", "0000:41:00:0", "41:00.0", " 41:00.0 "])
def test_template_address_forms(oned, capsys, address):
    code, out, _ = run(capsys, "template", "--gpu-address", address)
    assert code == 0
    assert attributes(out)["PCI"] == [{"SHORT_ADDRESS": "41:00.0"}]


def test_template_by_model(oned, capsys):
    code, out, _ = run(capsys, "template", "--gpu-model", "10DE:2230", "--pin-policy", "thread")
    assert code == 0
    t = attributes(out)
    assert t["PCI"] == [{"VENDOR": "10de", "DEVICE": "2230", "CLASS": "0300"}]
    assert t["TOPOLOGY"][0]["PIN_POLICY"] == "THREAD"


def test_template_register_allocates_the_rendered_text(oned, capsys):
    _, rendered, _ = run(capsys, "template", "--gpu-address", "41:00.0")
    code, out, _ = run(capsys, "template", "--gpu-address", "41:00.0", "--register")
    assert code == 0
    assert out == "ID: 5\n"
    allocate = [c for c in oned.calls if c.method == "one.template.allocate"]
    assert [c.args for c in allocate] == [(rendered,)]
    assert oned.state.templates[5] == ("fl-supernode-gpu", rendered)


def test_template_register_json(oned, capsys):
    code, out, _ = run(capsys, "template", "--gpu-model", "10de:2335", "--register", "--json")
    data = json.loads(out)
    assert code == 0
    assert data["id"] == 5 and data["hosts"] == ["gpu-node-01"] and data["warnings"] == []
    assert data["pci"] == [{"VENDOR": "10de", "DEVICE": "2335", "CLASS": "0302"}]
    assert oned.state.templates[5][1] == data["template"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--gpu-address", "99:00.0"], "no host has a PCI device at 99:00.0"),
        (["--gpu-address", "c1:00.0"], "not free: gpu-node-01: used by VM 12"),
        (["--gpu-address", "81:00.0"], "(15b3:101b, class 0207) on gpu-node-02, not an NVIDIA GPU"),
        (["--gpu-address", "61:00.1"], "not an NVIDIA GPU"),
        (["--gpu-address", "gpu0"], "'gpu0' is not a PCI address"),
        (["--gpu-address", "41:00.0", "--gpu-address", "61:00.0"], "no usable host has all"),
        (["--gpu-address", "41:00.0", "--gpu-address", "0000:41:00.0"], "given twice"),
        (["--gpu-model", "10de:9999"], "no NVIDIA GPU 10de:9999 in the host pool"),
        (["--gpu-model", "15b3:101b"], "no NVIDIA GPU 15b3:101b"),
        (["--gpu-model", "nvidia"], "'nvidia' is not VENDOR:DEVICE"),
        ([], "the pool has 2 NVIDIA GPU models: 10de:2230"),
        (["--gpu-model", "10de:2335", "--cores", "0"], "--cores: 0"),
        (["--gpu-address", "41:00.0", "--gpus", "2"], "--gpus: goes with --gpu-model"),
        (["--gpu-model", "10de:2335", "--memory", "512"], "--memory: 512 MB"),
        (["--gpu-model", "10de:2335", "--pin-policy", "PINNED"], "--pin-policy"),
        (["--gpu-model", "10de:2335", "--name", "ends\\"], "cannot end with a backslash"),
        (["--gpu-model", "10de:2335", "--image", "99"], "--image: no image '99' visible"),
        (["--gpu-model", "10de:2335", "--image", "13"], "13 (scratch) is a DATABLOCK image"),
        (["--gpu-model", "10de:2335", "--image", "ubuntu-24.04"], "several images are named"),
        (["--gpu-model", "10de:2335", "--network", "wan"], "--network: no network 'wan'"),
    ],
)
def test_template_invalid_input_exits_2_and_registers_nothing(oned, capsys, argv, message):
    code, out, err = run(capsys, "template", *argv, "--register")
    assert code == 2
    assert message in err and out == ""
    assert "one.template.allocate" not in methods(oned)


def test_template_gpu_on_a_disabled_host_only_is_not_free(monkeypatch, tmp_path, capsys):
    hosts = (Host(0, "h0", (h200("41:00.0"),), state=4), Host(1, "h1", (h200("41:00.0", 3),)))
    oned = start(monkeypatch, tmp_path, hosts)
    try:
        code, _, err = run(capsys, "template", "--gpu-address", "41:00.0")
    finally:
        oned.stop()
    assert code == 2
    assert "h0: host not usable, h1: used by VM 3" in err


def test_template_several_gpus_of_one_host(monkeypatch, tmp_path, capsys):
    hosts = (Host(0, "h0", (h200("41:00.0"), h200("c1:00.0"))), Host(1, "h1", (h200("41:00.0"),)))
    oned = start(monkeypatch, tmp_path, hosts)
    try:
        by_address = run(capsys, "template", "--gpu-address", "41:00.0", "--gpu-address", "c1:00.0")
        by_model = run(capsys, "template", "--gpus", "2")
    finally:
        oned.stop()
    assert by_address[0] == 0 and by_model[0] == 0
    assert attributes(by_address[1])["PCI"] == [{"SHORT_ADDRESS": "41:00.0"},
                                                 {"SHORT_ADDRESS": "c1:00.0"}]  # fmt: skip
    assert attributes(by_model[1])["PCI"] == [{"VENDOR": "10de", "DEVICE": "2335",
                                               "CLASS": "0302"}] * 2  # fmt: skip
    assert "can run now on: h0\n" in by_model[2]


def test_template_model_with_none_free_warns_but_renders(monkeypatch, tmp_path, capsys):
    oned = start(monkeypatch, tmp_path, (Host(0, "h0", (h200("41:00.0", 9),)),))
    try:
        code, out, err = run(capsys, "template", "--gpu-model", "10de:2335")
    finally:
        oned.stop()
    assert code == 0
    assert attributes(out)["PCI"] == [{"VENDOR": "10de", "DEVICE": "2335", "CLASS": "0302"}]
    assert "warning: no usable host has 1 free 10de:2335 GPU(s) now (0 free in all)" in err


# --- service ---


def test_service_template_json(capsys):
    code, out, _ = run(capsys, "service", "--template", "5", "--supernodes", "3:8")
    body = json.loads(out)
    assert code == 0
    assert body["ready_status_gate"] is True and body["deployment"] == "straight"
    link, node = body["roles"]
    assert (link["name"], link["vm_template"], link["cardinality"]) == ("superlink", 5, 1)
    assert (link["min_vms"], link["max_vms"]) == (1, 1)
    assert (node["name"], node["vm_template"]) == ("supernode", 5)
    assert node["parents"] == ["superlink"]
    assert (node["cardinality"], node["min_vms"], node["max_vms"]) == (3, 3, 8)
    assert link["vm_template_contents"].startswith('FL_ROLE = "superlink"\n')
    assert node["vm_template_contents"].startswith('FL_ROLE = "supernode"\n')
    shared = {"FLOWER_VERSION", "FL_TLS_ENABLED", "FL_LOG_LEVEL", "FL_NODE_AUTH"}
    assert set(body["custom_attrs"]) == shared
    assert set(link["custom_attrs"]) == {"FL_SSL_CA_CERT", "FL_SSL_CERT", "FL_SSL_KEY"}
    asked = {**body["custom_attrs"], **node["custom_attrs"], **link["custom_attrs"]}
    assert asked == {i.name: i.spec() for i in INPUTS if i.name != "FL_ROLE"}
    for version in ("6.10.0", "7.0.0", "7.0.1"):  # the shape both OneFlow releases accept
        assert oneflow.validate(body, version) == [], version
    converted = oneflow.convert(body)["roles"][1]  # what 7.0 makes of it
    assert (converted["type"], converted["template_id"]) == ("vm", 5)
    assert converted["user_inputs"] == node["custom_attrs"]


def test_service_keeps_a_template_per_role(capsys):
    code, out, _ = run(capsys, "service", "--superlink-template", "3", "--supernode-template", "4")
    assert code == 0
    assert [r["vm_template"] for r in json.loads(out)["roles"]] == [3, 4]
    _, out, _ = run(capsys, "service", "--template", "5", "--superlink-template", "3")
    assert [r["vm_template"] for r in json.loads(out)["roles"]] == [3, 5]


@pytest.mark.parametrize("argv", [(), ("--superlink-template", "3"), ("--supernode-template", "4")])
def test_service_without_a_template_for_each_role_exits_2(capsys, argv):
    code, out, err = run(capsys, "service", *argv)
    assert code == 2 and out == ""
    assert "--template:" in err and "no VM template for the" in err


def test_service_default_range_is_the_peers(capsys):
    _, out, _ = run(capsys, "service", "--template", "5")
    node = json.loads(out)["roles"][1]
    assert (node["cardinality"], node["min_vms"], node["max_vms"]) == (2, 2, 10)


@pytest.mark.parametrize("spec", ["5:2", "0:0", "two", "2:", "-1:3"])
def test_service_bad_range_exits_2(capsys, spec):
    code, out, err = run(capsys, "service", "--template", "5", f"--supernodes={spec}")
    assert code == 2 and out == "" and "--supernodes" in err


def stored(oned: OnedEmulator, doc_id: int) -> dict:
    doc_type, xml = oned.state.documents[doc_id]
    assert doc_type == 101
    root = ET.fromstring(xml)
    assert root.tag == "TEMPLATE" and root.findtext("NAME") == "flower-federation"
    body = json.loads(root.findtext("BODY"))
    assert isinstance(body.pop("registration_time"), int)
    return body


def appliance_template(oned: OnedEmulator, capsys) -> int:
    """The appliance template as `one template --register` leaves it in oned."""
    code, out, _ = run(capsys, "template", "--gpu-model", "10de:2335", "--register")
    assert code == 0
    return int(out.removeprefix("ID: "))


@pytest.mark.parametrize(("version", "series"), [("6.10.0", "6.10"), ("7.0.1", "7.0")])
def test_service_register_stores_the_front_ends_own_shape(monkeypatch, tmp_path, capsys,
                                                          version, series):  # fmt: skip
    oned = start(monkeypatch, tmp_path, hosts=(Host(0, "gpu-1", (h200("41:00.0"),)),),
                 version=version)  # fmt: skip
    try:
        tid = appliance_template(oned, capsys)
        before = len(oned.calls)
        code, out, err = run(capsys, "service", "--template", str(tid), "--register", "--json")
        assert code == 0 and err == ""
        assert methods(oned)[before:] == ["one.system.version", "one.template.info",
                                          "one.document.allocate"]  # fmt: skip
        result = json.loads(out)
        body = stored(oned, result["id"])
        assert body == result["template"]
        assert oneflow.validate(body, version) == []
        key = "template_id" if series == "7.0" else "vm_template"
        assert [r[key] for r in body["roles"]] == [tid, tid]
        if series == "7.0":
            assert oneflow.validate(body, "6.10.0")  # 6.10 could not read it
            assert [r["template_contents"] for r in body["roles"]] == [
                {"FL_ROLE": "superlink"}, {"FL_ROLE": "supernode"}]  # fmt: skip
            assert set(body["user_inputs"]) == {"FLOWER_VERSION", "FL_TLS_ENABLED",
                                                "FL_LOG_LEVEL", "FL_NODE_AUTH"}  # fmt: skip
    finally:
        oned.stop()


def test_service_register_one_template_that_drops_the_role_exits_2(oned, capsys):
    code, out, err = run(capsys, "service", "--template", "3", "--register")
    assert code == 2 and out == ""
    assert '--template: VM template 3 has no CONTEXT FL_ROLE = "$FL_ROLE"' in err
    assert "would boot as SuperNodes" in err
    assert "one.document.allocate" not in methods(oned)


def test_service_register_two_templates_warns_for_a_superlink_one_without_the_role(oned, capsys):
    code, out, err = run(capsys, "service", "--superlink-template", "3",
                         "--supernode-template", "4", "--register", "--json")  # fmt: skip
    assert code == 0
    assert methods(oned) == ["one.system.version", "one.template.info", "one.template.info",
                             "one.document.allocate"]  # fmt: skip
    assert [c.args[0] for c in oned.calls[1:3]] == [3, 4]
    assert err.count("warning:") == 1 and "VM template 3 has no CONTEXT FL_ROLE" in err
    result = json.loads(out)
    assert stored(oned, result["id"]) == result["template"]


def test_service_register_with_unknown_template_exits_2(oned, capsys):
    code, out, err = run(capsys, "service", "--superlink-template", "3",
                         "--supernode-template", "42", "--register")  # fmt: skip
    assert code == 2 and out == ""
    assert "--supernode-template: VM template 42 does not exist" in err
    assert "one.document.allocate" not in methods(oned)


# --- connection ---


def test_wrong_password_is_authentication_failed(oned, tmp_path, capsys):
    bad = tmp_path / "bad_auth"
    bad.write_text("oneadmin:wrong-one\n")
    code, out, err = run(capsys, "hosts", "--auth", str(bad))
    assert code == 1 and out == ""
    assert "authentication failed" in err and str(bad) in err
    assert "wrong-one" not in err
    assert [c.authenticated for c in oned.calls] == [False]


def test_not_authorized(oned, capsys):
    oned.fail("one.template.allocate")
    code, _, err = run(capsys, "template", "--gpu-address", "41:00.0", "--register")
    assert code == 1
    assert "one.template.allocate: not authorized" in err


@pytest.mark.parametrize(
    ("error", "words", "exit_code"),
    [
        (oned_codes.AUTHORIZATION, "not authorized", 1),
        (oned_codes.NO_EXISTS, "no such object", 2),
        (oned_codes.ACTION, "oned refused the action", 1),
        (oned_codes.XML_RPC_API, "oned rejected the call's arguments", 1),
        (oned_codes.INTERNAL, "oned internal error", 1),
    ],
)
def test_every_oned_error_code_is_said_plainly(oned, capsys, error, words, exit_code):
    oned.fail("one.hostpool.info", error, "something went wrong")
    code, out, err = run(capsys, "hosts")
    assert (code, out) == (exit_code, "")
    assert f"one.hostpool.info: {words}: [one.hostpool.info] something went wrong" in err


def test_server_down_is_unreachable(oned, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, out, err = run(capsys, "hosts", "--endpoint", f"http://127.0.0.1:{port}/RPC2")
    assert code == 1 and out == ""
    assert f"127.0.0.1:{port}/RPC2: server unreachable" in err


def test_server_that_never_answers_times_out(oned, capsys):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/RPC2"
        code, _, err = run(capsys, "hosts", "--endpoint", url, "--timeout", "0.3")
    assert code == 1
    assert "no answer in time" in err
    assert socket.getdefaulttimeout() is None


def test_hosts_without_nvidia_devices_says_why(monkeypatch, tmp_path, capsys):
    oned = start(monkeypatch, tmp_path, (Host(3, "cpu-node-01"),))
    try:
        code, out, _ = run(capsys, "hosts")
    finally:
        oned.stop()
    assert code == 0
    assert "no NVIDIA PCI devices in the host pool" in out and "10de:*" in out
    assert out.rstrip().endswith("none")


def test_wrong_path_is_not_oned(oned, capsys):
    code, _, err = run(capsys, "hosts", "--endpoint", oned.url.replace("/RPC2", "/wrong"))
    assert code == 1
    assert "HTTP 404" in err


def test_credentials_in_the_endpoint_are_not_shown(oned, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = run(capsys, "hosts", "--endpoint", f"http://u:{PASSWORD}@127.0.0.1:{port}/RPC2")
    assert code == 1 and "server unreachable" in err


@pytest.mark.parametrize(
    ("content", "message"), [(None, "No such file"), ("oneadmin\n", "not user:password")]
)
def test_bad_credentials_file_exits_2(oned, tmp_path, capsys, content, message):
    auth = tmp_path / "auth"
    if content is not None:
        auth.write_text(content)
    code, _, err = run(capsys, "hosts", "--auth", str(auth))
    assert code == 2 and message in err
    assert oned.calls == []


def test_endpoint_must_be_xmlrpc(capsys):
    code, _, err = run(capsys, "hosts", "--endpoint", "frontend:2634")
    assert code == 2 and "is not an XML-RPC URL" in err


def test_defaults_are_opennebulas(tmp_path):
    from agent.one.connection import resolve

    (tmp_path / ".one").mkdir()
    (tmp_path / ".one" / "one_auth").write_text("\noneadmin:pw\n")
    conn = resolve(env={}, home=tmp_path)
    assert conn.endpoint == "http://localhost:2633/RPC2"
    assert conn.auth_file == tmp_path / ".one" / "one_auth"
    assert conn.session.reveal() == "oneadmin:pw" and "pw" not in repr(conn)
    env = {"ONE_XMLRPC": "https://one:2633/RPC2", "ONE_AUTH": str(tmp_path / ".one" / "one_auth")}
    assert resolve(env=env, home=tmp_path / "nowhere").endpoint == "https://one:2633/RPC2"
    assert resolve("http://flag/RPC2", env=env).endpoint == "http://flag/RPC2"


def test_registering_the_one_group_imports_neither_pyone_nor_jinja2():
    code = (
        "import sys, agent.cli; agent.cli.build_parser(); "
        "print(sorted(m for m in ('pyone', 'jinja2', 'requests') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- OpenNebula versions ---


@pytest.mark.parametrize(
    ("version", "host_ovmf", "flags", "firmware"),
    [
        ("7.0.0", None, (), "UEFI"),
        ("7.0.1", "/x/OVMF_CODE.fd", ("--ovmf", "/y.fd"), "UEFI"),  # 7.0 needs no path
        ("6.10.0", "/a/AAVMF_CODE.fd /usr/share/OVMF/OVMF_CODE.secboot.fd /u/OVMF_CODE.fd",
         (), "/u/OVMF_CODE.fd"),
        ("6.10.0", None, ("--ovmf", "/opt/ovmf.fd"), "/opt/ovmf.fd"),
        ("6.10.0", None, (), "/usr/share/OVMF/OVMF_CODE.fd"),  # 6.10's default, with a warning
    ],
)  # fmt: skip
def test_template_firmware_is_what_the_version_accepts(
    monkeypatch, tmp_path, capsys, version, host_ovmf, flags, firmware
):
    host = Host(0, "gpu-6", (h200("41:00.0"),), ovmf_uefis=host_ovmf)
    oned = start(monkeypatch, tmp_path, hosts=(host,), version=version)
    try:
        code, out, err = run(capsys, "template", "--gpu-address", "41:00.0", *flags)
    finally:
        oned.stop()
    assert code == 0, err
    assert attributes(out)["OS"][0]["FIRMWARE"] == firmware
    assert ("OVMF_UEFIS" in err) is (version == "6.10.0" and not host_ovmf and not flags)


def test_template_on_6_10_reads_the_front_ends_kvm_conf(monkeypatch, tmp_path, capsys):
    oned = start(monkeypatch, tmp_path, hosts=(Host(0, "gpu-6", (h200("41:00.0"),)),),
                 version="6.10.0")  # fmt: skip
    conf = tmp_path / "root/etc/one/vmm_exec/vmm_exec_kvm.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text(
        '# comment\nOVMF_UEFIS = "/srv/OVMF_CODE_4M.fd /usr/share/AAVMF/AAVMF_CODE.fd"\n'
    )
    try:
        code, out, err = run(capsys, "template", "--gpu-address", "41:00.0", "--json")
    finally:
        oned.stop()
    assert code == 0, err
    result = json.loads(out)
    assert result["firmware"] == {
        "value": "/srv/OVMF_CODE_4M.fd",
        "source": f"OVMF_UEFIS of {conf}",
    }


def test_vgpu_functions_are_listed_apart_and_never_free_gpus(monkeypatch, tmp_path, capsys):
    vf = [
        Pci(f"41:00.{n}", "10de", "2335", "0302", "NVIDIA Corporation", H200, "3D controller",
            uuid=f"0b6c-{n}", profiles="nvidia-1043,nvidia-1044", mdev_mode="nvidia")
        for n in (4, 5)
    ]  # fmt: skip
    oned = start(monkeypatch, tmp_path, hosts=(Host(0, "vgpu-host", tuple(vf)),))
    try:
        code, out, _ = run(capsys, "hosts")
        assert code == 0
        assert "vGPU virtual functions" in out and "nvidia-1043,nvidia-1044" in out
        assert "10de:2335  0 of" not in out and "  none" in out  # no passthrough GPU counted
        _, out, _ = run(capsys, "hosts", "--json")
        data = json.loads(out)
        assert data["models"] == [] and data["devices"] == []
        assert [d["short_address"] for d in data["vgpu_functions"]] == ["41:00.4", "41:00.5"]
        code, _, err = run(capsys, "template", "--gpu-address", "41:00.4")
        assert code == 2 and "not an NVIDIA GPU" in err
    finally:
        oned.stop()


def test_registering_the_same_template_name_twice_is_refused_as_oned_does(oned, capsys):
    """VMTemplatePool::allocate (OpenNebula release-7.0.0): one NAME per owner, INTERNAL."""
    assert run(capsys, "template", "--gpu-address", "41:00.0", "--register")[0] == 0
    code, _, err = run(capsys, "template", "--gpu-address", "41:00.0", "--register")
    assert code == 1 and "NAME is already taken by TEMPLATE 5" in err
