"""Record what real SuperNodes print in each connection situation, as test fixtures.

For one Flower release, on the real image: a SuperLink with TLS and SuperNode authentication,
then SuperNodes that are registered (connected; SuperLink stopped; SuperLink back), not
registered, trusting another CA, dialing a port nothing listens on, and one of the other release
dialing this SuperLink's endpoint. Logs go to
tests/fixtures/supernode-logs/<SuperNode version>/<situation>.log, colours stripped; the other
release's SuperNode is saved as <its version>/superlink-<this version>.log.
With LINK:NODE (e.g. 1.42.0:1.41.0), a registered SuperNode of release NODE dials a SuperLink
of release LINK, and a SuperNode of release LINK with --isolation process is paired with a
SuperExec of release NODE (saved as LINK/superexec-NODE.log and .superexec.log) and one of its
own (LINK/process-pair.log). flwr/supernode:NODE must exist: only the base image is needed.

    PYTHONPATH=. python scripts/record_supernode_logs.py 1.42.0 1.25.0 1.42.0:1.41.0
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent import flower, tls  # noqa: E402
from tests.flower_federation import Federation  # noqa: E402

OTHER = {"1.25.0": "1.42.0", "1.42.0": "1.25.0"}
RETRY = r"(?s)Connection attempt failed.*Connection attempt failed"


def record(version: str, out: Path, situations) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        fed = Federation(version, Path(tmp))
        try:
            situations(fed, Path(tmp), out)
        finally:
            fed.close()


def _neighbour(node_version: str):
    def situations(fed: Federation, _tmp: Path, out: Path) -> None:
        fed.start_superlink()
        fed.wait_for("superlink", "Starting Flower SuperExec")
        assert fed.register("neighbour") is not None, "registration failed"
        fed.start_supernode("neighbour", image_version=node_version)
        for node in ("paired", "mispaired"):
            fed.register(node)
            fed.start_supernode(node, isolation="process")
            fed.wait_for(node, r"SuperNode ID: \d+")
        fed.start_superexec("paired")
        fed.start_superexec("mispaired", image_version=node_version)
        time.sleep(20)
        _save(out.parent / node_version, f"superlink-{fed.version}", fed.logs("neighbour"))
        _save(out, "process-pair", fed.logs("paired"))
        _save(out, "process-pair.superexec", fed.logs("paired-superexec"))
        _save(out, f"superexec-{node_version}", fed.logs("mispaired"))
        _save(out, f"superexec-{node_version}.superexec", fed.logs("mispaired-superexec"))

    return situations


def _situations(fed: Federation, tmp: Path, out: Path) -> None:
    other_ca = tls.TlsFiles(tmp / "other-ca")
    tls.ensure_server_tls(other_ca, tls.wanted_sans((), fed.superlink_host))
    fed.start_superlink()
    fed.wait_for("superlink", "Starting Flower SuperExec")
    assert fed.register("connected") is not None, "registration failed"
    fed.start_supernode("connected")
    fed.start_supernode("unregistered")
    fed.start_supernode("wrong-ca", ca=other_ca.ca_cert)
    fed.start_supernode("unreachable", superlink=f"{fed.superlink_host}:9999")
    other = OTHER[fed.version]
    fed.start_supernode(
        "version-mismatch",
        image_version=other,
        superlink=flower.fleet_endpoint(fed.version, fed.superlink_host),
    )
    _save(out, "connected", fed.wait_for("connected", r"SuperNode ID: \d+"))
    time.sleep(20)
    for node in ("unregistered", "wrong-ca", "unreachable"):
        _save(out, node, fed.logs(node))
    _save(out.parent / other, f"superlink-{fed.version}", fed.logs("version-mismatch"))
    fed.stop("superlink")
    _save(out, "superlink-stopped", fed.wait_for("connected", RETRY, timeout=90))
    fed.start("superlink")
    _save(out, "superlink-back", fed.wait_for("connected", "Connection successful", 120))


def _save(out: Path, situation: str, text: str) -> None:
    (out / f"{situation}.log").write_text(text)
    print(f"{out.name}/{situation}.log: {len(text.splitlines())} lines")


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        link, _, node = arg.partition(":")
        out = REPO / "tests" / "fixtures" / "supernode-logs" / link
        record(link, out, _neighbour(node) if node else _situations)
