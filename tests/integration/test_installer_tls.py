"""The installer trusts the API server only through the service account's ca.crt.

The API server is the in-test stand-in (tests/support/kubeapi.py): no kube-apiserver runs here.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.installer import Daemon, Host
from tests.support.node import daemonset_fixture, wait_for

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cni"
OTHER_API_PORT = "6444"


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def certificate_from_another_ca(directory: Path) -> tuple[Path, Path]:
    """A CA the cluster does not know, and a server certificate for 127.0.0.1 it signed."""
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-days", "1", "-subj", "/CN=another-ca", "-keyout", str(directory / "other-ca.key"),
            "-out", str(directory / "other-ca.crt"))
    openssl("req", "-new", *ec, "-subj", "/CN=kube-apiserver", "-keyout", str(directory / "server.key"),
            "-out", str(directory / "server.csr"))
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", str(directory / "server.csr"), "-CA", str(directory / "other-ca.crt"),
            "-CAkey", str(directory / "other-ca.key"), "-CAcreateserial", "-days", "1",
            "-extfile", str(directory / "san.ext"), "-out", str(directory / "server.crt"))
    return directory / "server.crt", directory / "server.key"


def test_refuses_an_api_server_whose_certificate_another_ca_signed_and_says_why(node, capsys):
    cert, key = certificate_from_another_ca(node.dir)
    node.write_daemonsets(daemonset_fixture())
    node.spawn(node.netns, [sys.executable, "-m", "tests.support.kubeapi", "--port", OTHER_API_PORT,
                            "--cert", str(cert), "--key", str(key), "--token", node.token,
                            "--fixtures", str(node.fixtures), "--journal", str(node.journal)])
    host = Host.for_node(node)
    shutil.copy(FIXTURES / "10-calico.conflist", host.net_dir / "10-calico.conflist")
    kubeconfig = host.net_dir / "microgateway-cni-kubeconfig"

    untrusted = Daemon(node, host, MGW_REPAIR_MODE="none", KUBERNETES_SERVICE_PORT=OTHER_API_PORT)

    def taint_refused() -> list[dict]:
        return [e for e in untrusted.log() if e["message"].startswith("cannot remove the start-up taint")]

    assert wait_for(taint_refused, timeout=15), untrusted.log()
    assert taint_refused()[0]["reason"] == "certificate_rejected", taint_refused()
    assert not untrusted.ready(), "a node whose API server cannot be verified keeps its start-up taint"
    assert untrusted.stop() == 0
    warnings = [e for e in untrusted.log() if e["message"].startswith("cannot tell whether the DaemonSet")]
    assert len(warnings) == 1, untrusted.log()
    reason = warnings[0]["error"]
    assert reason.startswith("API server certificate rejected: unable to get local issuer certificate"), reason
    assert f"verified against {host.sa / 'ca.crt'}" in reason
    assert kubeconfig.exists(), "a DaemonSet the installer could not verify as deleted must not uninstall"

    trusted = Daemon(node, host, MGW_REPAIR_MODE="none")  # the stand-in whose certificate is the cluster's CA
    assert wait_for(trusted.ready, timeout=15), trusted.log()
    assert trusted.stop() == 0
    assert any(e["message"].startswith("uninstalled") for e in trusted.log()), trusted.log()
    assert not kubeconfig.exists()
    with capsys.disabled():
        print(f"\nrefused: {reason}")
