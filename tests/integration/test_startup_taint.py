"""The start-up taint gate against the kube-API stand-in (tests/support/kubeapi.py).

The installer's real API client (the official Kubernetes client, HTTPS, bearer token) talks to the stand-in,
which implements node GET and merge PATCH with the apiserver's resourceVersion preconditions (409) and RBAC
denials (403) as a test's fixtures ask, next to the installer running as a process. The gate runs in-process
with a fake clock for its back-off, inside the node's network namespace. The real API server's RBAC and
admission policy meet the same gate in tests/cluster/.
"""

from __future__ import annotations

import http.client
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from daemonset import conflist
from daemonset.api import FIRST_BACKOFF_SECONDS, MAX_BACKOFF_SECONDS, api_client
from daemonset.taint import TaintGate
from tests.support.fake_clock import FakeClock
from tests.support.installer import INSTALLER, PLUGIN, Daemon, Host
from tests.support.netns import InNetns, in_netns
from tests.support.node import STARTUP_TAINT, Node, node_fixture, wait_for

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cni"
OTHER = {"key": "example.com/gpu", "value": "a100", "effect": "NoSchedule"}
LATE = {"key": "node.kubernetes.io/network-unavailable", "effect": "NoSchedule"}
# Written back exactly as read: a timestamp, and a field this client version may not know.
TIMED = {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute", "timeAdded": "2026-11-23T10:00:00Z",
         "futureField": "kept"}


class Gate:
    """A TaintGate wired to the stand-in, recording what it logs (info and above) and counts."""

    def __init__(self, node: Node, host: Host, clock: FakeClock, key: str = STARTUP_TAINT["key"]) -> None:
        self.logged: list[tuple[str, str, dict[str, Any]]] = []
        self.failures: list[str] = []
        self.opened: list[float | None] = []
        self.node = node
        self.gate = TaintGate(api_client(host.settings()), "node-1", key, self.log, on_failure=self.failures.append,
                              on_open=self.opened.append, clock=clock)
        self.clock = clock

    def log(self, level: str, msg: str, **fields: Any) -> None:
        if level != "debug":
            self.logged.append((level, msg, fields))

    def run(self, ready: Callable[[], bool] = lambda: True, plugin: str = PLUGIN) -> None:
        self.start(ready, plugin).result()

    def start(self, ready: Callable[[], bool], plugin: str = PLUGIN) -> InNetns:
        thread = InNetns(self.node.netns, lambda: self.gate.run(ready, plugin))
        thread.start()
        return thread

    def patches(self) -> list[int]:
        return [e["code"] for e in self.node.journal_entries() if e["verb"] == "patch-node"]


@pytest.fixture
def host(node: Node) -> Host:
    return Host.for_node(node)


def taints(node: Node) -> list[dict[str, Any]]:
    return node.api_node()["spec"].get("taints", [])


def test_taint_removed_only_after_ready_and_others_untouched(node, host):
    """Readiness is looked at again after each reconcile (recheck), never polled in between."""
    node.write_nodes({"node-1": node_fixture(taints=[OTHER, STARTUP_TAINT, TIMED])})
    checks: list[list[dict[str, Any]]] = []
    chained = threading.Event()

    def ready() -> bool:
        checks.append(taints(node))
        return chained.is_set()

    gate = Gate(node, host, FakeClock())
    running = gate.start(ready)
    assert wait_for(lambda: len(checks) == 1, timeout=15)
    time.sleep(0.5)
    assert len(checks) == 1, "readiness was looked at again without a reconcile"
    for reconcile in (2, 3):  # reconciles that leave the node not ready
        gate.gate.recheck()
        assert wait_for(lambda count=reconcile: len(checks) == count, timeout=15)
    chained.set()
    gate.gate.recheck()  # the reconcile that chains the plugin
    running.result(timeout=15)
    assert all(STARTUP_TAINT in seen for seen in checks[:3]), "the taint must stay while the plugin is not ready"
    assert len(checks) == 4 and gate.clock.sleeps == [] and gate.patches() == [200]
    assert taints(node) == [OTHER, TIMED]
    assert gate.gate.open and gate.opened == [0.0]
    assert gate.failures == [] and [m for _, m, _ in gate.logged] == [
        "start-up taint removed: pods may be scheduled to this node"]
    assert node.api_node()["metadata"]["resourceVersion"] == "101"


def test_a_gate_waiting_for_readiness_ends_when_the_installer_stops(node, host):
    node.write_nodes({"node-1": node_fixture(taints=[STARTUP_TAINT])})
    checks: list[float] = []

    def never_ready() -> bool:
        checks.append(time.monotonic())
        return False

    gate = Gate(node, host, FakeClock())
    running = gate.start(never_ready)
    assert wait_for(lambda: len(checks) == 1, timeout=15)
    gate.gate.close()  # SIGTERM while the plugin is not in place
    running.result(timeout=15)
    assert not gate.gate.open and len(checks) == 1 and gate.patches() == []
    assert taints(node) == [STARTUP_TAINT]


def test_conflict_is_retried_and_keeps_the_taint_another_agent_added(node, host):
    node.write_nodes({"node-1": node_fixture(taints=[STARTUP_TAINT])})
    node.write_fixture("races", {"node-1": [{"spec": {"taints": [STARTUP_TAINT, LATE]}}]})
    gate = Gate(node, host, FakeClock())
    gate.run()
    assert gate.patches() == [409, 200]
    assert taints(node) == [LATE], "the concurrent write must survive our removal"
    assert gate.failures == [] and gate.clock.sleeps == []
    assert any(m.startswith("node changed since it was read") for _, m, _ in gate.logged)


def test_rbac_denial_is_reported_and_retried_with_backoff(node, host):
    node.write_nodes({"node-1": node_fixture(taints=[STARTUP_TAINT])})
    node.write_fixture("forbidden", ["patch nodes"])

    def on_sleep(count: int) -> bool:
        if count == 9:  # an operator fixes the ClusterRole
            node.write_fixture("forbidden", [])
        return False

    gate = Gate(node, host, FakeClock(on_sleep))
    gate.run()
    assert gate.failures == ["forbidden"] * 9
    assert gate.clock.sleeps == [FIRST_BACKOFF_SECONDS * 2**n for n in range(6)] + [MAX_BACKOFF_SECONDS] * 3
    level, message, fields = gate.logged[0]
    assert (level, message) == ("warn", "cannot remove the start-up taint; retrying")
    assert fields["reason"] == "forbidden" and 'cannot patch resource "nodes"' in fields["error"]
    assert taints(node) == [] and gate.gate.open


def test_api_down_and_unrunnable_plugin_keep_the_taint(node, host, tmp_path):
    node.write_nodes({"node-1": node_fixture(taints=[STARTUP_TAINT])})
    broken = tmp_path / "microgateway-cni"
    broken.write_text("#!/bin/sh\necho 'error while loading shared libraries: libc.so.6' >&2\nexit 127\n")
    broken.chmod(0o755)
    gate = Gate(node, host, FakeClock(lambda count: count == 2))
    gate.run(plugin=str(broken))
    assert gate.failures == ["plugin_not_runnable"] * 2 and gate.patches() == []
    assert "exited 127" in gate.logged[0][2]["error"]
    node.stop_api()
    gate = Gate(node, host, FakeClock(lambda count: count == 2))
    gate.run()
    assert gate.failures == ["unreachable"] * 2 and not gate.gate.open


def test_gate_off_and_node_without_taint(node, host):
    node.stop_api()  # an empty key never asks the API
    off = Gate(node, host, FakeClock(), key="")
    assert off.gate.open
    off.run()
    assert off.logged == [] and off.failures == []


def test_node_already_untainted(node, host):
    gate = Gate(node, host, FakeClock())
    gate.run()
    assert gate.gate.open and gate.patches() == []
    assert gate.logged[0][1].startswith("node carries no start-up taint")


# -- the installer as a process -------------------------------------------------------------------------

def test_installer_reports_ready_only_once_the_taint_is_gone(node, host):
    node.write_nodes({"node-1": node_fixture(taints=[STARTUP_TAINT, OTHER])})
    node.write_fixture("forbidden", ["patch nodes"])
    daemon = Daemon(node, host, MGW_REPAIR_MODE="none")
    assert wait_for(lambda: "microgateway_cni_node_untainted 0.0" in daemon.metrics(check=False), timeout=15)
    time.sleep(1.0)
    assert "microgateway_cni_untaint_failures_total{" not in daemon.metrics(), "no attempt before the plugin is chained"
    assert not [e for e in node.journal_entries() if e["verb"] == "patch-node"]
    shutil.copy(FIXTURES / "10-flannel.conflist", host.net_dir / "10-flannel.conflist")
    assert wait_for(lambda: "microgateway_cni_untaint_failures_total{reason=\"forbidden\"}" in daemon.metrics(),
                    timeout=15), daemon.log()
    assert host.conf("10-flannel.conflist")["plugins"][-1]["type"] == "microgateway-cni"
    assert not daemon.ready(), "chained but still tainted: not ready"
    assert "microgateway_cni_node_untainted 0.0" in daemon.metrics() and taints(node) == [STARTUP_TAINT, OTHER]
    node.write_fixture("forbidden", [])
    assert wait_for(daemon.ready, timeout=15), daemon.log()
    assert taints(node) == [OTHER]
    text = daemon.metrics()
    assert "microgateway_cni_node_untainted 1.0" in text and "microgateway_cni_ready 1.0" in text
    seconds = next(line for line in text.splitlines() if line.startswith("microgateway_cni_untaint_seconds "))
    assert float(seconds.split()[1]) > 1.0
    assert daemon.stop() == 0
    warnings = [e for e in daemon.log() if e.get("message") == "cannot remove the start-up taint; retrying"]
    assert warnings and warnings[0]["reason"] == "forbidden"


def first_ready(port: int, timeout: float) -> float | None:
    """Ask /readyz every 10 ms (often enough to measure, seldom enough not to slow the installer down); the
    wall-clock time of its first 200, None if none within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        try:
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                return time.time()
        except OSError:
            pass
        finally:
            connection.close()
        time.sleep(0.01)
    return None


READYZ_AFTER_CHAINING_SECONDS = 0.3


def test_readyz_follows_chaining_a_late_primary_at_once(node, host, capsys):
    """The primary CNI writes its conflist after the installer started: the reconcile that chains our entry
    makes the node ready, so the taint is lifted and /readyz answers 200 right after the chained file is
    written (its mtime), not at the next of some periodic check."""
    node.write_nodes({"node-1": node_fixture(taints=[STARTUP_TAINT])})
    daemon = Daemon(node, host, MGW_REPAIR_MODE="none")
    assert wait_for(lambda: "microgateway_cni_node_untainted 0.0" in daemon.metrics(check=False), timeout=15)
    assert wait_for(lambda: {"no primary CNI configuration yet; waiting",
                             "waiting until the plugin is in place to lift the start-up taint"} <=
                    {e.get("message") for e in daemon.log()}, timeout=15), daemon.log()
    path = host.net_dir / "10-flannel.conflist"
    shutil.copy(FIXTURES / "10-flannel.conflist", path)
    ready_at = in_netns(node.netns, lambda: first_ready(8000, timeout=15))
    assert ready_at is not None, daemon.log()
    assert conflist.is_chained(host.conf("10-flannel.conflist"), host.settings().plugin_entry())
    delay = ready_at - path.stat().st_mtime_ns / 1e9
    assert taints(node) == []
    assert daemon.stop() == 0
    with capsys.disabled():
        print(f"\n/readyz 200 {delay * 1000:.0f} ms after the conflist was chained")
    assert 0 <= delay < READYZ_AFTER_CHAINING_SECONDS, daemon.log()


def test_installer_without_node_name_refuses_to_start_the_gate(node, host):
    env = host.env(NODE_NAME="")
    done = subprocess.run(["ip", "netns", "exec", node.netns, INSTALLER, "run"], env=env, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 2 and "MGW_STARTUP_TAINT" in done.stderr and "NODE_NAME" in done.stderr
