"""The installer against a temporary host root, the kube-API stand-in, and libcni with the real plugin."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daemonset import conflist
from daemonset.install import Installer
from tests.integration.helpers import client_pod, target
from tests.support.installer import PLUGIN, Daemon, Host
from tests.support.node import pod_fixture, wait_for

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cni"
PRIMARIES = ["10-calico.conflist", "10-flannel.conflist", "05-cilium.conflist", "10-kindnet.conflist",
             "10-weave.conflist", "10-bridge.conf"]


@pytest.fixture
def host(tmp_path):
    return Host(tmp_path, "token-1", b"-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n")


def installer_for(host: Host, **extra: str) -> Installer:
    return Installer(host.settings(**extra), lambda *a, **k: None)


@pytest.mark.parametrize("primary", PRIMARIES)
def test_install_reinstall_uninstall(host, primary):
    shutil.copy(FIXTURES / primary, host.net_dir / primary)
    shutil.copy(FIXTURES / "00-invalid.conflist", host.net_dir / "00-invalid.conflist")
    original = (FIXTURES / primary).read_bytes()
    installer = installer_for(host)
    assert installer.reconcile() == "written"
    name = primary.replace(".conf", ".conflist") if primary.endswith(".conf") else primary
    chained = host.conf(name)
    entries = [p for p in chained["plugins"] if p["type"] == "microgateway-cni"]
    assert len(entries) == 1 and chained["plugins"][-1] == entries[0]
    assert chained["cniVersion"] == json.loads(original)["cniVersion"]
    assert (host.bin_dir / "microgateway-cni").read_bytes() == Path(PLUGIN).read_bytes()
    assert os.stat(host.bin_dir / "microgateway-cni").st_mode & 0o777 == 0o755
    kubeconfig = host.net_dir / "microgateway-cni-kubeconfig"
    assert os.stat(kubeconfig).st_mode & 0o777 == 0o600
    assert json.loads(kubeconfig.read_text())["users"][0]["user"]["token"] == "token-1"
    assert installer.ready()
    before = {p.name: p.stat().st_mtime_ns for p in host.net_dir.iterdir()}
    assert installer_for(host).reconcile() == "unchanged"  # a restarted installer: idempotent
    assert {p.name: p.stat().st_mtime_ns for p in host.net_dir.iterdir()} == before
    installer.uninstall()
    if primary.endswith(".conf"):
        assert (host.net_dir / primary).read_bytes() == original
        assert not (host.net_dir / name).exists()
    else:
        assert host.conf(primary) == json.loads(original)
    assert not kubeconfig.exists() and (host.bin_dir / "microgateway-cni").exists()
    assert (host.net_dir / "00-invalid.conflist").read_bytes() == (FIXTURES / "00-invalid.conflist").read_bytes()


def test_waits_without_primary_and_readiness_follows_the_entry(host):
    installer = installer_for(host)
    assert installer.reconcile() == "waiting" and not installer.ready()
    shutil.copy(FIXTURES / "00-invalid.conflist", host.net_dir / "00-invalid.conflist")
    assert installer.reconcile() == "waiting"
    shutil.copy(FIXTURES / "10-flannel.conflist", host.net_dir / "10-flannel.conflist")
    assert installer.reconcile() == "written" and installer.ready()
    shutil.copy(FIXTURES / "10-flannel.conflist", host.net_dir / "10-flannel.conflist")  # primary rewrites
    assert not installer.ready()
    assert installer.reconcile() == "written" and installer.ready()


def test_standalone_and_manual_modes(host):
    shutil.copy(FIXTURES / "10-calico.conflist", host.net_dir / "10-calico.conflist")
    standalone = installer_for(host, MGW_MODE="standalone")
    assert standalone.reconcile() == "written" and standalone.ready()
    assert host.conf(conflist.STANDALONE_NAME)["plugins"][0]["type"] == "microgateway-cni"
    assert host.conf("10-calico.conflist") == json.loads((FIXTURES / "10-calico.conflist").read_text())
    standalone.uninstall()
    assert not (host.net_dir / conflist.STANDALONE_NAME).exists()
    manual = installer_for(host, MGW_MODE="manual")
    assert manual.reconcile() == "unchanged"
    assert host.conf("10-calico.conflist") == json.loads((FIXTURES / "10-calico.conflist").read_text())


# -- the daemon as a process, on a simulated node -----------------------------------------------------

@pytest.fixture
def node_host(node):
    return node, Host(node.dir / "host", node.token, node.ca_pem, net_dir=node.conf_dir, bin_dir=node.bin_dir,
                log_file=node.log_file)


def test_installed_chain_works_end_to_end_through_libcni(node_host):
    node, host = node_host
    primary = node.write_conflist(chained=False, name="10-primary.conflist")
    daemon = Daemon(node, host, MGW_REPAIR_MODE="none")
    assert wait_for(daemon.ready, timeout=15), daemon.log()
    assert not (node.bin_dir / "microgateway-cni").is_symlink()  # a copy, installed atomically
    node.add_pod_fixture(pod_fixture("web"))
    pod = node.new_pod("web", primary)
    node.start_workloads(pod, [8080])
    client = client_pod(node)
    assert node.connect(client.netns, [target(pod, 8080)])[target(pod, 8080)] == \
        "engine=web orig=8080 -> app=web port=8080"
    node.cni("check", pod, primary)
    node.cni("del", pod, primary)
    assert node.mgw_rules(pod) == []
    assert daemon.stop() == 0


def test_reinserts_after_rewrites_and_renames_and_follows_token_rotation(node_host, capsys):
    node, host = node_host
    shutil.copy(FIXTURES / "10-flannel.conflist", host.net_dir / "10-flannel.conflist")
    daemon = Daemon(node, host, MGW_REPAIR_MODE="none", MGW_REVERT_WARNING_THRESHOLD="100")
    assert wait_for(daemon.ready, timeout=15), daemon.log()
    path = host.net_dir / "10-flannel.conflist"
    delays = []
    for _ in range(20):
        start = time.monotonic()
        shutil.copy(FIXTURES / "10-flannel.conflist", path)  # the primary agent rewrites its file
        assert wait_for(lambda: conflist.is_chained(host.conf("10-flannel.conflist"),
                                                    host.settings().plugin_entry()), timeout=1.0, interval=0.005)
        delays.append((time.monotonic() - start) * 1000)
    with capsys.disabled():
        print(f"\nre-insert delay after a rewrite: median {statistics.median(delays):.1f} ms, "
              f"max {max(delays):.1f} ms over 20 rewrites")
    path.unlink()  # the primary replaces its file under a new name
    shutil.copy(FIXTURES / "10-flannel.conflist", host.net_dir / "11-flannel.conflist")
    assert wait_for(lambda: conflist.is_chained(host.conf("11-flannel.conflist"), host.settings().plugin_entry()),
                    timeout=2)
    kubeconfig = host.net_dir / "microgateway-cni-kubeconfig"
    host.rotate("token-rotated")
    assert wait_for(lambda: "token-rotated" in kubeconfig.read_text(), timeout=2)
    assert daemon.stop() == 0
    assert any(e.get("message", "").startswith("chained entry was removed") for e in daemon.log())
    assert kubeconfig.exists(), "an ordinary restart (DaemonSet still there) must not uninstall"


def test_sigterm_uninstalls_when_the_daemonset_is_deleted(node_host):
    node, host = node_host
    shutil.copy(FIXTURES / "10-calico.conflist", host.net_dir / "10-calico.conflist")
    node.write_daemonsets({"kube-system/microgateway-cni": {
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "microgateway-cni", "namespace": "kube-system", "uid": "ds-uid",
                     "deletionTimestamp": "2026-11-22T00:00:00Z"},
        "spec": {"selector": {"matchLabels": {"app": "microgateway-cni"}},
                 "template": {"metadata": {"labels": {"app": "microgateway-cni"}},
                              "spec": {"containers": [{"name": "installer", "image": "microgateway-cni"}]}}}}})
    daemon = Daemon(node, host, MGW_REPAIR_MODE="none")
    assert wait_for(daemon.ready, timeout=15)
    assert daemon.stop() == 0, daemon.log()
    assert any(e.get("message", "").startswith("uninstalled") for e in daemon.log()), daemon.log()
    assert host.conf("10-calico.conflist") == json.loads((FIXTURES / "10-calico.conflist").read_text())
    assert not (host.net_dir / "microgateway-cni-kubeconfig").exists()
    assert (host.bin_dir / "microgateway-cni").exists()


def with_validator(pod, exit_code):
    """The status the kubelet reports for a pod whose validator init container exited."""
    terminated = {"exitCode": exit_code, "reason": "Error" if exit_code else "Completed"}
    pod["status"] = {"phase": "Pending", "initContainerStatuses": [{
        "name": "airlock-microgateway-network-validator", "image": "microgateway-network-validator:1",
        "imageID": "", "ready": False, "restartCount": 1,
        "state": {"waiting": {"reason": "CrashLoopBackOff"}}, "lastState": {"terminated": terminated}}]}
    return pod


def test_repair_deletes_failed_pods_once_with_an_event(node_host):
    node, host = node_host
    shutil.copy(FIXTURES / "10-flannel.conflist", host.net_dir / "10-flannel.conflist")
    broken = with_validator(pod_fixture("broken", uid="uid-broken"), 3)
    node.write_pods({"default/broken": broken,
                     "default/fine": with_validator(pod_fixture("fine"), 0),
                     "default/plain": with_validator(pod_fixture("plain", protected=False), 3),
                     "default/elsewhere": with_validator(pod_fixture("elsewhere", node="node-2"), 3)})
    daemon = Daemon(node, host)
    assert wait_for(lambda: any(e["verb"] == "event" for e in node.journal_entries()), timeout=15), daemon.log()
    node.add_pod_fixture(broken)  # the same UID seen again must not be acted on twice
    time.sleep(1.5)
    deletes = [e for e in node.journal_entries() if e["verb"] == "delete"]
    events = [e for e in node.journal_entries() if e["verb"] == "event"]
    assert [d["pod"] for d in deletes] == ["default/broken"]
    assert deletes[0]["body"]["preconditions"]["uid"] == "uid-broken"
    assert len(events) == 1 and events[0]["body"]["type"] == "Warning"
    assert events[0]["body"]["involvedObject"]["uid"] == "uid-broken"
    metrics = subprocess.run(["ip", "netns", "exec", node.netns, sys.executable, "-c",
                              "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:8000/metrics')"
                              ".read().decode())"], capture_output=True, text=True).stdout
    assert 'microgateway_cni_repairs_total{result="success"} 1.0' in metrics
    assert "microgateway_cni_ready 1.0" in metrics
    assert daemon.stop() == 0


def make_bundle(root: Path, version: str) -> Path:
    """A PyInstaller one-dir layout: the executable beside the _internal directory it owns."""
    bundle = root / f"bundle-{version}"
    (bundle / "_internal").mkdir(parents=True)
    (bundle / "_internal" / "VERSION").write_text(version)
    shutil.copy(PLUGIN, bundle / "microgateway-cni")
    return bundle / "microgateway-cni"


def test_one_dir_bundle_installed_atomically_and_kept_for_running_dels(host, tmp_path):
    shutil.copy(FIXTURES / "10-flannel.conflist", host.net_dir / "10-flannel.conflist")
    first = installer_for(host, MGW_PLUGIN_BINARY=str(make_bundle(tmp_path, "1")))
    assert first.reconcile() == "written"
    link = host.bin_dir / "microgateway-cni"
    assert link.is_symlink() and link.resolve().parent.name.startswith(".microgateway-cni-")
    assert (link.resolve().parent / "_internal" / "VERSION").read_text() == "1"
    v1 = link.resolve().parent.name
    assert not first.install_binary()  # idempotent
    second = installer_for(host, MGW_PLUGIN_BINARY=str(make_bundle(tmp_path, "2")))
    assert second.install_binary()
    assert (link.resolve().parent / "_internal" / "VERSION").read_text() == "2"
    assert (host.bin_dir / v1).is_dir(), "the previous version stays for DELs in flight"
    assert installer_for(host, MGW_PLUGIN_BINARY=str(make_bundle(tmp_path, "3"))).install_binary()
    versions = sorted(p.name for p in host.bin_dir.iterdir() if p.name.startswith(".microgateway-cni-"))
    assert len(versions) == 2 and v1 not in versions
    assert not [p for p in host.bin_dir.iterdir() if ".tmp-" in p.name or ".link-" in p.name]


NEEDS_NEWER_GLIBC = """#!/bin/sh
echo "/lib64/libc.so.6: version \\`GLIBC_2.99' not found (required by microgateway-cni)" >&2
exit 1
"""


def bundle_running(root: Path, version: str, script: str) -> Path:
    """A one-dir layout whose executable is the given shell script."""
    bundle = root / f"bundle-{version}"
    (bundle / "_internal").mkdir(parents=True)
    executable = bundle / "microgateway-cni"
    executable.write_text(script)
    executable.chmod(0o755)
    return executable


@pytest.mark.parametrize("script", [NEEDS_NEWER_GLIBC, "#!/bin/sh\necho not json\n", "not an executable"])
def test_a_plugin_bundle_that_cannot_run_never_replaces_a_working_one(host, tmp_path, script):
    shutil.copy(FIXTURES / "10-flannel.conflist", host.net_dir / "10-flannel.conflist")
    working = installer_for(host, MGW_PLUGIN_BINARY=str(make_bundle(tmp_path, "1")))
    assert working.reconcile() == "written" and working.ready()
    link = host.bin_dir / "microgateway-cni"
    before = os.readlink(link)
    logs: list[tuple[str, str, dict]] = []
    broken = Installer(host.settings(MGW_PLUGIN_BINARY=str(bundle_running(tmp_path, "2", script))),
                       lambda level, msg, **fields: logs.append((level, msg, fields)))
    assert broken.reconcile() == "unchanged"  # still chained, to the previous plugin
    assert os.readlink(link) == before and (host.bin_dir / before).is_file()
    assert not broken.ready(), "a node whose plugin could not be updated must stay not ready"
    errors = [(msg, fields) for level, msg, fields in logs if level == "error"]
    assert len(errors) == 1 and "cannot run on this node" in errors[0][0], logs
    assert errors[0][1]["previous"] == before
    expected = {NEEDS_NEWER_GLIBC: "GLIBC_2.99", "not an executable": "cannot execute"}.get(script, "not json")
    assert expected in errors[0][1]["error"], errors
    broken.reconcile()
    assert len([1 for level, *_ in logs if level == "error"]) == 1, "the same failure is logged once"


def test_a_plugin_bundle_that_cannot_run_is_not_chained_on_a_fresh_node(host, tmp_path):
    shutil.copy(FIXTURES / "10-flannel.conflist", host.net_dir / "10-flannel.conflist")
    installer = installer_for(host, MGW_PLUGIN_BINARY=str(bundle_running(tmp_path, "1", NEEDS_NEWER_GLIBC)))
    with pytest.raises(RuntimeError, match=r"GLIBC_2\.99"):
        installer.reconcile()
    assert not (host.bin_dir / "microgateway-cni").exists() and not installer.ready()
    assert "microgateway-cni" not in (host.net_dir / "10-flannel.conflist").read_text()


def test_repeated_reverts_warn_naming_the_culprit_and_throttle(host):
    shutil.copy(FIXTURES / "05-cilium.conflist", host.net_dir / "05-cilium.conflist")
    logged: list[tuple[str, str]] = []
    reverts: list[int] = []
    installer = Installer(host.settings(MGW_REVERT_WARNING_THRESHOLD="3"),
                          lambda level, msg, **fields: logged.append((level, msg)),
                          on_revert=lambda: reverts.append(1))
    installer.reconcile()
    timings = []
    for _ in range(4):  # Cilium with cni.exclusive=true rewrites its file without us
        shutil.copy(FIXTURES / "05-cilium.conflist", host.net_dir / "05-cilium.conflist")
        start = time.monotonic()
        assert installer.reconcile() == "written"
        timings.append(time.monotonic() - start)
    warnings = [msg for level, msg in logged if level == "warn"]
    assert len(reverts) == 4 and len(warnings) == 2
    assert "cni.exclusive" in warnings[0] and "MGW_MODE=standalone" in warnings[0]
    assert timings[0] < 0.2 and timings[2] >= 0.5 and timings[3] >= 1.0  # backing off


def test_repair_label_mode_marks_instead_of_deleting(node_host):
    node, host = node_host
    shutil.copy(FIXTURES / "10-flannel.conflist", host.net_dir / "10-flannel.conflist")
    node.write_pods({"default/broken": with_validator(pod_fixture("broken", uid="uid-b"), 3)})
    daemon = Daemon(node, host, MGW_REPAIR_MODE="labelPods")
    assert wait_for(lambda: any(e["verb"] == "event" for e in node.journal_entries()), timeout=15), daemon.log()
    verbs = [e["verb"] for e in node.journal_entries()]
    assert verbs == ["patch", "event"]
    pods = json.loads(node.fixtures.read_text())["pods"]
    labels = pods["default/broken"]["metadata"]["labels"]
    assert labels["sidecar.microgateway.airlock.com/network-validation"] == "failed"
    assert daemon.stop() == 0
