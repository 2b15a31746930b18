"""The installer daemon as a process on a simulated node: the kube-API stand-in, inotify, libcni with the
real plugin. Its file work alone is tests/unit/test_installer_files.py."""

from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path

from daemonset import conflist
from tests.support.installer import Daemon
from tests.support.node import daemonset_fixture, pod_fixture, wait_for
from tests.support.pods import client_pod, target

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cni"


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
    node.write_daemonsets(daemonset_fixture(deleted=False))  # SIGTERM at the end is a restart
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
    node.write_fixture("tokens", ["token-rotated"])  # the API server issued it: the kubelet rotates to it
    host.rotate("token-rotated")
    assert wait_for(lambda: "token-rotated" in kubeconfig.read_text(), timeout=2)
    assert daemon.stop() == 0
    assert any(e.get("message", "").startswith("chained entry was removed") for e in daemon.log())
    assert kubeconfig.exists(), "an ordinary restart (DaemonSet still there) must not uninstall"


def test_sigterm_uninstalls_when_the_daemonset_is_deleted(node_host):
    node, host = node_host
    shutil.copy(FIXTURES / "10-calico.conflist", host.net_dir / "10-calico.conflist")
    node.write_daemonsets(daemonset_fixture())
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
    metrics = daemon.metrics()
    assert 'microgateway_cni_repairs_total{result="success"} 1.0' in metrics
    assert "microgateway_cni_ready 1.0" in metrics
    assert daemon.stop() == 0


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
