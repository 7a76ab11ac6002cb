"""The OneGate emulator answers like onegate-server.rb (docs/onegate.md)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest
import requests

from emulators.onegate import VERSIONS, OneGateEmulator, escape_attr
from emulators.template import TemplateError, parse_template


@pytest.fixture(params=VERSIONS)
def emulator(request):
    with OneGateEmulator(version=request.param) as em:
        em.add_vm(41, token="tok-41", ips=("10.0.0.41",))
        em.add_vm(42, token="tok-42", ips=("10.0.0.42",))
        em.add_vm(99, token="tok-99")
        em.add_service(7, "flower", {"superlink": [41], "supernode": [42]})
        yield em


def call(em, method, path, vm=42, token=None, **kwargs):
    headers = {"X-ONEGATE-TOKEN": token or f"tok-{vm}", "X-ONEGATE-VMID": str(vm)}
    return requests.request(method, em.endpoint + path, headers=headers, timeout=5, **kwargs)


def put(em, data, kind="1", vm=42):
    return call(em, "PUT", "/vm", vm=vm, data={"data": data, "type": kind})


def body_500(em, text: str) -> str:
    """A halted 500's body: its own text up to 7.0.0, rewritten by 7.0.1's `error 500` block."""
    return text if em.version < "7.0.1" else "Internal server error"


# What onegate-server.rb's escape_attr does to each value (docs/onegate.md).
@pytest.mark.parametrize(
    ("given", "escaped"),
    [
        ("READY=YES", 'READY="YES"'),
        ("A=1\\nB=2", 'A="1"\nB="2"'),
        ("A=1\nB=2", 'A="1"\nB="2"'),
        ("MSG=hello world", 'MSG="hello world"'),
        ("URL=http://x:1/a?b=c", 'URL="http://x:1/a?b=c"'),
        ("K=YWJj==", 'K="YWJj=="'),
        ("APP_LOAD = 9.7", 'APP_LOAD =" 9.7"'),
        ('K=say "hi"', 'K="say "hi"'),
        ("LIST=a,b", 'LIST="a",b"'),
        ("K=a\\b", 'K="a"\\b'),
        ("K=a[b", 'K="a"[b"'),
        ("K=a]b", 'K="a"]b'),
        ("EMPTY=", 'EMPTY="'),
        ("V=[A=1,B=2]", 'V=[A="1",B=2"]'),
    ],
)
def test_escape_attr_matches_the_server(given, escaped):
    assert escape_attr(given) == escaped


def test_template_parser_reads_quoted_values_and_vectors():
    assert parse_template('a="x y"\nB = "say \\"hi\\""\nC=\nV=[K="1",L="2"]') == [
        ("A", "x y"),
        ("B", 'say "hi"'),
        ("C", ""),
        ("V", {"K": "1", "L": "2"}),
    ]
    with pytest.raises(TemplateError, match="Parse error"):
        parse_template('K="a",b"')


@pytest.mark.parametrize("data", ['K=say "hi"', "LIST=a,b", "K=a[b", "K=a]b"])
def test_values_that_break_escape_attr_get_a_500_parse_error(emulator, data):
    resp = put(emulator, data)
    assert resp.status_code == 500
    assert ("Parse error" in resp.text) is (emulator.version < "7.0.1")
    assert resp.text == body_500(emulator, resp.text)
    assert resp.headers["Content-Type"] == "application/json;charset=utf-8"
    assert "K" not in emulator.user_template(42) and "LIST" not in emulator.user_template(42)


def test_form_update_merges_and_delete_removes(emulator):
    assert put(emulator, "A=1\nb=two words").status_code == 200
    assert put(emulator, "A=3").text == ""
    assert emulator.user_template(42)["A"] == "3"
    assert emulator.user_template(42)["B"] == "two words"
    assert put(emulator, "A", kind="2").status_code == 200
    resp = put(emulator, "A", kind="2")
    assert (resp.status_code, resp.text) == (500, body_500(emulator, "attribute not found"))


def test_permission_is_checked_before_the_token(emulator):
    emulator.deny("vm", "update")
    resp = call(emulator, "PUT", "/vm", token="wrong", data={"data": "A=1", "type": "1"})
    assert (resp.status_code, resp.text) == (403, "Action (update) on resource (vm) not supported")
    assert call(emulator, "GET", "/vm", token="wrong").status_code == 401
    assert call(emulator, "GET", "/vm").status_code == 200


def test_unknown_routes_need_no_token(emulator):
    resp = call(emulator, "POST", "/nothing", token="wrong")
    assert (resp.status_code, resp.text) == (400, "OneGate server doesn't support this feature")


def test_service_answers_400_until_the_vm_is_a_node(emulator):
    emulator.remove_node(7, "supernode", 42)
    resp = call(emulator, "GET", "/service")
    assert (resp.status_code, resp.text) == (400, "Service 7 does not contain VM 42.")
    emulator.add_node(7, "supernode", 42)
    assert call(emulator, "GET", "/service").status_code == 200


def test_raw_body_is_used_without_a_data_parameter(emulator):
    resp = call(emulator, "PUT", "/vm", data="APP_LOAD = 9.7")
    assert resp.status_code == 200
    assert emulator.user_template(42)["APP_LOAD"] == " 9.7"


@pytest.mark.parametrize(
    ("headers", "vm"),
    [
        ({"X-ONEGATE-VMID": "42"}, 42),
        ({"X-ONEGATE-TOKEN": "tok-42"}, 42),
        ({"X-ONEGATE-TOKEN": "tok-41", "X-ONEGATE-VMID": "42"}, 42),
        ({"X-ONEGATE-TOKEN": "tok-42", "X-ONEGATE-VMID": "1234"}, 1234),
    ],
)
def test_token_and_vmid_are_checked(emulator, headers, vm):
    resp = requests.get(emulator.endpoint + "/vm", headers=headers, timeout=5)
    assert (resp.status_code, resp.text) == (401, "Not authorized")


@pytest.mark.parametrize("name", ["SERVICE_ID", "role_name", "SCHED_REQUIREMENTS"])
def test_restricted_attributes(emulator, name):
    resp = put(emulator, f"{name}=1")
    assert (resp.status_code, resp.text) == (403, f"Attribute ({name}) cannot be modified")
    resp = put(emulator, name, kind="2")
    assert (resp.status_code, resp.text) == (403, f"Attribute ({name}) cannot be deleted")


def test_vm_json_is_xml_shaped(emulator):
    put(emulator, "EMPTY=\n")
    vm = call(emulator, "GET", "/vm").json()["VM"]
    assert vm["ID"] == "42" and vm["STATE"] == "3" and vm["LCM_STATE"] == "3"
    assert vm["USER_TEMPLATE"]["EMPTY"] == {}
    assert vm["USER_TEMPLATE"]["SERVICE_ID"] == "7"
    assert vm["TEMPLATE"]["NIC"][0]["IP"] == "10.0.0.42"
    assert vm["TEMPLATE"]["NIC_ALIAS"] == []
    assert call(emulator, "GET", "/vm", vm=99).json()["VM"]["TEMPLATE"]["NIC"] == []


def test_service_shape_and_errors(emulator):
    service = call(emulator, "GET", "/service").json()["SERVICE"]
    assert service["id"] == "7" and service["state"] == 2
    superlink = service["roles"][0]
    assert superlink["name"] == "superlink" and superlink["cardinality"] == 1
    node = superlink["nodes"][0]
    assert node["deploy_id"] == 41 and node["running"] is None
    assert set(node["vm_info"]["VM"]) == {"ID", "UID", "GID", "UNAME", "GNAME", "NAME"}
    assert node["vm_info"]["VM"]["ID"] == "41"
    extended = call(emulator, "GET", "/service?extended=false").json()["SERVICE"]
    assert extended["roles"][0]["nodes"][0]["vm_info"]["VM"]["TEMPLATE"]["NIC"]["IP"] == (
        "10.0.0.41"
    )
    resp = call(emulator, "GET", "/service", vm=99)
    assert (resp.status_code, resp.text) == (400, "Empty or invalid SERVICE_ID")
    emulator.set_attributes(99, SERVICE_ID="8")
    resp = call(emulator, "GET", "/service", vm=99)
    assert (resp.status_code, resp.text) == (404, "Service 8 not found")


def test_vms_by_id_only_within_the_service(emulator):
    assert call(emulator, "GET", "/vms/41").json()["VM"]["ID"] == "41"
    resp = call(emulator, "GET", "/vms/99")
    assert (resp.status_code, resp.text) == (400, "Service 7 does not contain VM 99.")
    resp = call(emulator, "GET", "/vms/41", vm=99)
    assert resp.status_code == 400 and "does not belong to any" in resp.text
    resp = call(emulator, "POST", "/vm")
    assert (resp.status_code, resp.text) == (400, "OneGate server doesn't support this feature")


def test_faults_and_the_record(emulator):
    emulator.set_faults(fail_next=2, fail_status=503)
    assert [call(emulator, "GET", "/vm").status_code for _ in range(3)] == [503, 503, 200]
    emulator.set_faults(unauthorized=True)
    assert call(emulator, "GET", "/vm").status_code == 401
    emulator.clear_faults()
    emulator.set_faults(drop=True)
    with pytest.raises(requests.ConnectionError):
        call(emulator, "GET", "/vm")
    emulator.clear_faults()
    emulator.set_faults(fail_for_s=0.5)
    assert call(emulator, "GET", "/vm").status_code == 500
    time.sleep(0.55)
    assert call(emulator, "GET", "/vm").status_code == 200
    statuses = [r.status for r in emulator.requests]
    assert statuses == [503, 503, 200, 401, None, 500, 200]
    assert all(r.headers["X-ONEGATE-TOKEN"] == "***" for r in emulator.requests)
    assert "tok-42" not in repr(emulator.requests)


def test_stopped_refuses_and_restarts_on_the_same_port(emulator):
    port = emulator.port
    emulator.stop()
    with pytest.raises(requests.ConnectionError):
        call(emulator, "GET", "/vm")
    emulator.start()
    assert emulator.port == port
    assert call(emulator, "GET", "/vm").status_code == 200


def test_command_line_server_with_a_state_file(tmp_path):
    state = tmp_path / "state.json"
    state.write_text(
        json.dumps(
            {
                "vms": [{"id": 5, "token": "t5", "ips": ["10.0.0.5"]}],
                "services": [
                    {"id": 3, "name": "fl", "roles": [{"name": "supernode", "vm_ids": [5]}]}
                ],
            }
        )
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "emulators.onegate", "--port", str(port), "--state", state],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert "OneGate emulator on" in proc.stdout.readline()
        url = f"http://127.0.0.1:{port}"
        headers = {"X-ONEGATE-TOKEN": "t5", "X-ONEGATE-VMID": "5"}
        resp = requests.put(url + "/vm", data={"data": "FL_STATE=RUNNING", "type": "1"},
                            headers=headers, timeout=5)  # fmt: skip
        assert resp.status_code == 200
        requests.put(url + "/_emulator/faults", json={"fail_next": 1}, timeout=5)
        assert requests.get(url + "/vm", headers=headers, timeout=5).status_code == 500
        saved = json.loads(state.read_text())
        assert saved["vms"][0]["user_template"]["FL_STATE"] == "RUNNING"
        recorded = requests.get(url + "/_emulator/requests", timeout=5).json()
        assert [r["status"] for r in recorded] == [200, 500]
    finally:
        proc.terminate()
        proc.wait(timeout=5)
