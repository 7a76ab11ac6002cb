"""Whole boots against the OneGate emulator: the SuperLink's FL_VERSION paired with the local
images (agent/pairing.py fed by observe), and the node key's public half published to OneGate.

The engine is the machine's real one, with fl-agent/supernode:1.25.0 and :1.42.0 built by
images/build-supernode.sh; no SuperLink listens, so a started SuperNode retries and stays up.
"""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest

from agent import tls
from tests.test_boot_onegate import SUPERLINK, boot, onegate, state_puts  # noqa: F401

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def images():
    for version in ("1.25.0", "1.42.0"):
        subprocess.run(["bash", str(REPO / "images/build-supernode.sh"), version], check=True)


def dry(tmp_path, onegate, published: str, **variables: str) -> tuple[int, dict]:  # noqa: F811
    onegate.set_attributes(SUPERLINK, FL_VERSION=published)
    variables = {"FL_SUPERNODE_IMAGE": "", "FL_GPU_ENABLED": "NO", **variables}
    return boot(tmp_path, onegate, "", "--dry-run", **variables)


def test_an_unset_flower_version_takes_the_superlinks_minor_from_a_local_image(
    tmp_path,
    onegate,  # noqa: F811
):
    code, record = dry(tmp_path, onegate, "1.25.7")
    assert code == 0, record["problems"]
    assert record["flower_version"] == "1.25.0"
    spec = record["plan"]["spec"]
    assert spec["image"] == "fl-agent/supernode:1.25.0"
    assert "--clientappio-api-address" in spec["command"]  # argv spelled for 1.25
    assert record["discovery"]["superlink_version"] == "1.25.7"


def test_no_local_image_of_the_superlinks_minor_stops_and_says_which(
    tmp_path,
    onegate,  # noqa: F811
):
    code, record = dry(tmp_path, onegate, "1.36.0")
    assert (code, record["state"]) == (1, "FAILED")
    unpaired = record["problems"][0]
    assert unpaired["name"] == "flower_version_unpaired" and "1.36.0" in unpaired["message"]


def test_a_set_version_is_kept_with_a_mismatch_warning_and_the_public_key_is_published(
    tmp_path,
    onegate,  # noqa: F811
    no_supernode,
):
    files = tls.TlsFiles(tmp_path / "tls")
    tls.ensure_server_tls(files, tls.wanted_sans((), "superlink"))
    ca = base64.b64encode(files.ca_cert.read_bytes()).decode()
    onegate.set_attributes(SUPERLINK, FL_VERSION="1.25.0")
    code, record = boot(
        tmp_path,
        onegate,
        "fl-agent/supernode:1.42.0",
        FLOWER_VERSION="1.42.0",
        FL_TLS_ENABLED="YES",
        FL_SSL_CA_CERT=ca,
        FL_SUPERLINK_ADDRESS="127.0.0.1:8000",
        FL_GPU_ENABLED="NO",
    )
    assert (code, record["state"]) == (0, "RUNNING"), record["problems"]
    assert [p["name"] for p in record["problems"]] == ["flower_version_mismatch"]
    published = [p["FL_NODE_PUBLIC_KEY"] for p in state_puts(onegate) if "FL_NODE_PUBLIC_KEY" in p]
    key = (tmp_path / "root/var/lib/fl-agent/node-key/node.pub").read_text().strip()
    assert published and set(published) == {key} and key.startswith("ecdsa-sha2-nistp384 ")
    sent = "\n".join(line for r in onegate.requests for line in r.data_lines)
    assert "PRIVATE KEY" not in sent
