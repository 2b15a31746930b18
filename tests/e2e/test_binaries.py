"""The self-contained binaries (scripts/build-binaries.sh) on a simulated node, end to end."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.e2e.conftest import ROOT, binary
from tests.integration.helpers import client_pod, target
from tests.support.installer import Daemon, Host
from tests.support.node import pod_fixture, wait_for


def test_runs_without_python_or_iptables_in_the_environment(binaries):
    done = subprocess.run([binary("microgateway-cni")], input=b'{"cniVersion": "0.4.0"}',
                          env={"CNI_COMMAND": "VERSION"}, capture_output=True)
    assert done.returncode == 0 and json.loads(done.stdout)["cniVersion"] == "0.4.0"
    bad = subprocess.run([binary("microgateway-cni")], input=b"{", env={"CNI_COMMAND": "ADD"}, capture_output=True)
    assert bad.returncode == 1 and json.loads(bad.stdout)["code"] == 6 and b"Traceback" not in bad.stderr


def test_installer_plugin_and_validator_binaries_protect_a_pod(binaries, node):
    host = Host(node.dir / "host", node.token, node.ca_pem, net_dir=node.conf_dir, bin_dir=node.bin_dir,
                log_file=node.log_file)
    primary = node.write_conflist(chained=False, name="10-primary.conflist")
    daemon = Daemon(node, host, installer=str(binary("microgateway-cni-installer")),
                    MGW_PLUGIN_BINARY=str(binary("microgateway-cni")), MGW_REPAIR_MODE="none")
    assert wait_for(daemon.ready, timeout=30), daemon.log()
    installed = node.bin_dir / "microgateway-cni"
    assert installed.is_symlink() and (installed.resolve().parent / "_internal").is_dir()
    node.add_pod_fixture(pod_fixture("web"))
    pod = node.new_pod("web", primary)
    code, verdict, message = node.validate(pod, validator=str(binary("microgateway-network-validator")))
    assert code == 0 and json.loads(verdict)["verdict"] == "pass", verdict + message
    node.start_workloads(pod, [8080])
    client = client_pod(node)
    assert node.connect(client.netns, [target(pod, 8080), target(pod, 4321)]) == {
        target(pod, 8080): "engine=web orig=8080 -> app=web port=8080", target(pod, 4321): "engine=web orig=4321"}
    # the installer writes netfilterBackend auto; this node has no legacy tables, so: nftables
    assert any("redirect to :13378" in line for line in node.mgw_rules(pod, 6)), node.mgw_rules(pod, 6)
    node.cni("check", pod, primary)
    node.cni("del", pod, primary)
    assert node.mgw_rules(pod) == [] and node.mgw_rules(pod, 6) == []
    assert daemon.stop() == 0


@pytest.mark.xfail(strict=True, reason="known gap: built on Debian 12, the bundles need GLIBC_2.36 (libexpat) and "
                   "GLIBC_2.35 (libpython); 2.28 needs an older-glibc builder stage")
def test_bundles_need_no_glibc_newer_than_rhel8(binaries):
    done = subprocess.run(["bash", str(ROOT / "scripts" / "glibc-check.sh"), "2.28"], capture_output=True, text=True)
    lines = done.stdout.splitlines()
    assert len(lines) == 3 and all("needs GLIBC_2." in line for line in lines), done.stdout + done.stderr
    assert done.returncode == 0, done.stdout
