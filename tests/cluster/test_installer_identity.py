"""The installer's service account as a real API server sees it.

The default overlay is applied; the DaemonSet controller makes the installer's pods and the scheduler places
them on two nodes registered with the start-up taint. A token bound to the pod on node-a (what the kubelet
projects into it) names that node, RBAC and the ValidatingAdmissionPolicy let it remove the start-up taint
from node-a and do nothing else, and after an uninstall the API refuses it, which the installer's SIGTERM
check must read as an uninstall. Messages the API server sent are in the tier's report.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from daemonset.api import api_client, daemonset_deleted
from daemonset.settings import STARTUP_TAINT
from daemonset.taint import TaintGate
from tests.support import report
from tests.support.cluster.controlplane import ControlPlane
from tests.support.fake_clock import FakeClock
from tests.support.installer import PLUGIN, Host

OVERLAY = "daemonset/manifests/overlays/default"
NAMESPACE, ACCOUNT = "kube-system", "microgateway-cni"
USER = f"system:serviceaccount:{NAMESPACE}:{ACCOUNT}"
OURS = {"key": STARTUP_TAINT, "effect": "NoSchedule"}
GPU = {"effect": "NoSchedule", "key": "example.com/gpu", "value": "a100"}
# What a kubelet reports: without allocatable resources the scheduler places no pod on a node.
ALLOCATABLE = {"cpu": "2", "memory": "4Gi", "pods": "110"}
POLICY = ("ValidatingAdmissionPolicy 'microgateway-cni-node-taint' with binding 'microgateway-cni-node-taint' "
          "denied request: ")


def add_to_report(line: str) -> None:
    report.add(line, "cluster")


def node(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/os": "linux", **labels}}}


@pytest.fixture(scope="module")
def pods(cluster: ControlPlane) -> dict[str, str]:
    """The default overlay applied and node-a and node-b registered: node name -> the name of its installer pod."""
    cluster.apply("-k", OVERLAY)
    cluster.apply("-f", "-", input=yaml.safe_dump_all([node("node-a", {"example.com/role": "edge"}),
                                                       node("node-b", {})]))
    for name in ("node-a", "node-b"):
        done = cluster.kubectl("patch", "node", name, "--subresource=status", "--type=merge",
                               "-p", json.dumps({"status": {"capacity": ALLOCATABLE, "allocatable": ALLOCATABLE}}))
        assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + 60
    while True:
        placed = {p["spec"]["nodeName"]: p["metadata"]["name"]
                  for p in cluster.json("pods", "-n", NAMESPACE)["items"] if p["spec"].get("nodeName")}
        if len(placed) == 2:
            return placed
        assert time.monotonic() < deadline, f"installer pods not placed on both nodes: {placed}"
        time.sleep(0.2)


def token(cluster: ControlPlane, pod: str) -> str:
    """A token bound to the pod, as the kubelet projects into it."""
    done = cluster.kubectl("create", "token", ACCOUNT, "-n", NAMESPACE, "--bound-object-kind", "Pod",
                           "--bound-object-name", pod)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="module")
def tokens(cluster: ControlPlane, pods: dict[str, str]) -> dict[str, str]:
    """node name -> a token bound to the installer pod on that node."""
    return {name: token(cluster, pod) for name, pod in pods.items()}


@pytest.fixture
def tainted(cluster: ControlPlane, pods: dict[str, str]) -> None:
    """node-a with our taint and another, node-b with ours: as registered, set by the admin."""
    for name, taints in (("node-a", [OURS, GPU]), ("node-b", [OURS])):
        done = cluster.kubectl("patch", "node", name, "--type=merge", "-p", json.dumps({"spec": {"taints": taints}}))
        assert done.returncode == 0, done.stderr


def taints(cluster: ControlPlane, name: str) -> list[dict[str, Any]]:
    taints: list[dict[str, Any]] = cluster.json("node", name)["spec"].get("taints", [])
    return taints


def claims(jwt: str) -> dict[str, Any]:
    payload = jwt.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return decoded


def test_the_token_names_the_pod_and_the_node_it_is_bound_to(cluster, pods, tokens):
    node_uid = cluster.json("node", "node-a")["metadata"]["uid"]
    bound = claims(tokens["node-a"])["kubernetes.io"]
    assert bound["serviceaccount"]["name"] == ACCOUNT
    assert bound["pod"]["name"] == pods["node-a"]
    assert bound["node"] == {"name": "node-a", "uid": node_uid}
    done = cluster.kubectl("auth", "whoami", "-o", "json", as_token=tokens["node-a"])
    assert done.returncode == 0, done.stderr
    user = json.loads(done.stdout)["status"]["userInfo"]
    assert user["username"] == USER
    assert user["extra"]["authentication.kubernetes.io/node-name"] == ["node-a"]
    assert user["extra"]["authentication.kubernetes.io/node-uid"] == [node_uid]


def merge_patch(name: str, version: str, taints: list[dict[str, Any]]) -> list[str]:
    """The installer's write: its taint list with the resourceVersion it read as the precondition."""
    return ["patch", "node", name, "--type=merge",
            "-p", json.dumps({"metadata": {"resourceVersion": version}, "spec": {"taints": taints}})]


def version(cluster: ControlPlane, name: str) -> str:
    return str(cluster.json("node", name)["metadata"]["resourceVersion"])


FORBIDDEN = [  # what the installer's token tries, and the API server's exact answer
    ("add another taint", lambda v: merge_patch("node-a", v("node-a"), [OURS, GPU, {"key": "x.io/y", "effect":
                                                                                    "NoExecute"}]),
     f'nodes "node-a" is forbidden: {POLICY}microgateway-cni may change no taint but {STARTUP_TAINT}'),
    ("remove another taint", lambda v: merge_patch("node-a", v("node-a"), [OURS]),
     f'nodes "node-a" is forbidden: {POLICY}microgateway-cni may change no taint but {STARTUP_TAINT}'),
    ("make ours NoExecute", lambda v: merge_patch("node-a", v("node-a"), [{**OURS, "effect": "NoExecute"}, GPU]),
     f'nodes "node-a" is forbidden: {POLICY}microgateway-cni may only remove {STARTUP_TAINT}, never add or change '
     "it"),
    ("change a label", lambda v: ["label", "node", "node-a", "example.com/role=db", "--overwrite"],
     f"nodes \"node-a\" is forbidden: {POLICY}microgateway-cni may not change a node's labels, annotations, "
     "finalizers or owners"),
    ("add an annotation", lambda v: ["annotate", "node", "node-a", "example.com/note=x"],
     f"nodes \"node-a\" is forbidden: {POLICY}microgateway-cni may not change a node's labels, annotations, "
     "finalizers or owners"),
    ("remove ours and relabel", lambda v: ["patch", "node", "node-a", "--type=merge", "-p", json.dumps(
        {"metadata": {"resourceVersion": v("node-a"), "labels": {"example.com/role": "db"}},
         "spec": {"taints": [GPU]}})],
     f"nodes \"node-a\" is forbidden: {POLICY}microgateway-cni may not change a node's labels, annotations, "
     "finalizers or owners"),
    # What `kubectl cordon` sends; cordon itself prints the refusal but exits 0 (kubectl 1.37).
    ("cordon", lambda v: ["patch", "node", "node-a", "-p", '{"spec": {"unschedulable": true}}'],
     f"nodes \"node-a\" is forbidden: {POLICY}microgateway-cni may change nothing in a node's spec but its taints"),
    ("remove ours from node-b", lambda v: merge_patch("node-b", v("node-b"), []),
     f'nodes "node-b" is forbidden: {POLICY}microgateway-cni may change only the node its service-account token '
     "is bound to"),
    ("delete node-a", lambda v: ["delete", "node", "node-a"],
     f'nodes "node-a" is forbidden: User "{USER}" cannot delete resource "nodes" in API group "" at the cluster '
     "scope"),
    ("list secrets", lambda v: ["get", "secrets", "-n", NAMESPACE],
     f'secrets is forbidden: User "{USER}" cannot list resource "secrets" in API group "" in the namespace '
     f'"{NAMESPACE}"'),
]


@pytest.mark.parametrize(("action", "argv", "message"), FORBIDDEN, ids=[case[0] for case in FORBIDDEN])
def test_the_installer_may_do_nothing_else(cluster, tokens, tainted, action, argv, message):
    done = cluster.kubectl(*argv(lambda name: version(cluster, name)), as_token=tokens["node-a"])
    add_to_report(f"{action}: {done.stderr.strip()}")
    assert (done.returncode, done.stderr) == (1, f"Error from server (Forbidden): {message}\n")
    assert taints(cluster, "node-a") == [OURS, GPU] and taints(cluster, "node-b") == [OURS]


def test_removing_the_start_up_taint_from_its_own_node_is_allowed_once(cluster, tokens, tainted):
    """The installer's patch as kubectl sends it; the same patch again is stale and refused with a conflict."""
    read = cluster.kubectl("get", "node", "node-a", "-o", "json", as_token=tokens["node-a"])
    assert read.returncode == 0, read.stderr
    stale = json.loads(read.stdout)["metadata"]["resourceVersion"]
    done = cluster.kubectl(*merge_patch("node-a", stale, [GPU]), as_token=tokens["node-a"])
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert taints(cluster, "node-a") == [GPU]
    again = cluster.kubectl(*merge_patch("node-a", stale, []), as_token=tokens["node-a"])
    assert (again.returncode, again.stderr) == (1, 'Error from server (Conflict): Operation cannot be fulfilled on '
                                                   'nodes "node-a": the object has been modified; please apply your '
                                                   "changes to the latest version and try again\n")
    assert taints(cluster, "node-a") == [GPU]


def test_a_token_bound_to_no_pod_names_no_node_and_may_not_lift_the_taint(cluster, pods, tainted):
    """A token of the installer's service account that is not bound to a pod (a TokenRequest of its own, an
    old Secret-based token) names no node: the policy refuses it any node."""
    done = cluster.kubectl("create", "token", ACCOUNT, "-n", NAMESPACE)
    assert done.returncode == 0, done.stderr
    unbound = done.stdout.strip()
    assert "node" not in claims(unbound)["kubernetes.io"]
    refused = cluster.kubectl(*merge_patch("node-a", version(cluster, "node-a"), [GPU]), as_token=unbound)
    add_to_report(f"remove ours with a token bound to no pod: {refused.stderr.strip()}")
    assert (refused.returncode, refused.stderr) == (
        1, f'Error from server (Forbidden): nodes "node-a" is forbidden: {POLICY}microgateway-cni may change only '
           "the node its service-account token is bound to\n")
    assert taints(cluster, "node-a") == [OURS, GPU]


class Installer:
    """The installer's own API client with a pod's token and the cluster's CA, as its service-account volume
    holds them, logging what it would log."""

    def __init__(self, cluster: ControlPlane, root: Path, jwt: str, node_name: str) -> None:
        self.cluster = cluster
        self.token = jwt
        self.settings = Host(root, jwt, cluster.ca_pem).settings(NODE_NAME=node_name)
        self.api = api_client(self.settings)
        self.logged: list[tuple[str, str, dict[str, Any]]] = []

    def log(self, level: str, msg: str, **fields: Any) -> None:
        if level != "debug":
            self.logged.append((level, msg, fields))

    def gate(self, clock: FakeClock, on_failure: Callable[[str], None] = lambda reason: None) -> TaintGate:
        return TaintGate(self.api, self.settings.node_name, STARTUP_TAINT, self.log, on_failure=on_failure,
                         clock=clock)

    def daemonset_deleted(self) -> bool:
        """The SIGTERM check of daemonset/cli.py, inside the control plane's namespace."""
        deleted: bool = self.cluster.run(lambda: daemonset_deleted(self.api, self.settings, self.log))
        return deleted


def test_the_installers_gate_lifts_the_taint_of_its_node(cluster, tokens, tainted, tmp_path):
    installer = Installer(cluster, tmp_path, tokens["node-a"], "node-a")
    gate = installer.gate(FakeClock())
    cluster.run(lambda: gate.run(lambda: True, PLUGIN))
    assert gate.open and gate.clock.sleeps == []
    assert [msg for _, msg, _ in installer.logged] == ["start-up taint removed: pods may be scheduled to this node"]
    assert taints(cluster, "node-a") == [GPU] and taints(cluster, "node-b") == [OURS]


def test_the_installers_gate_on_another_node_is_refused_by_the_policy(cluster, tokens, tainted, tmp_path):
    """A token bound to node-a, a gate told it runs on node-b (a wrong NODE_NAME, a stolen token)."""
    installer = Installer(cluster, tmp_path, tokens["node-a"], "node-b")
    failures: list[str] = []
    gate = installer.gate(FakeClock(lambda count: count == 2), failures.append)
    cluster.run(lambda: gate.run(lambda: True, PLUGIN))
    assert failures == ["forbidden", "forbidden"] and not gate.open
    error = installer.logged[0][2]["error"]
    add_to_report(f"the installer's gate on node-b with node-a's token: {error}")
    assert error == (f'403: nodes "node-b" is forbidden: {POLICY}microgateway-cni may change only the node its '
                     "service-account token is bound to")
    assert taints(cluster, "node-b") == [OURS]


# -- SIGTERM: restart or uninstall? (these change the installation: they run last) --------------------------------

def test_sigterm_during_a_rollout_keeps_the_plugin(cluster, pods, tokens, tmp_path):
    """`kubectl rollout restart` makes the DaemonSet controller delete an installer pod: its SIGTERM finds the
    DaemonSet in place and keeps the plugin for the next pod."""
    assert cluster.kubectl("rollout", "restart", f"daemonset/{ACCOUNT}", "-n", NAMESPACE).returncode == 0
    deadline = time.monotonic() + 30
    while not (going := [p["spec"]["nodeName"] for p in cluster.json("pods", "-n", NAMESPACE)["items"]
                         if p["metadata"].get("deletionTimestamp")]):
        assert time.monotonic() < deadline, "the rollout deleted no installer pod"
        time.sleep(0.2)
    installer = Installer(cluster, tmp_path, tokens[going[0]], going[0])
    assert installer.daemonset_deleted() is False
    assert installer.logged == []


def test_sigterm_after_kubectl_delete_uninstalls(cluster, pods, tokens, tmp_path):
    """`kubectl delete -k` deletes the ServiceAccount and RBAC before the DaemonSet; when the kubelet stops
    the installer pods, the API refuses their tokens: 403 while it still has the token's authentication
    cached (10 s after its last check), 401 after."""
    used = Installer(cluster, tmp_path / "used", tokens["node-a"], "node-a")
    assert used.daemonset_deleted() is False  # authenticated just now: cached
    unused = Installer(cluster, tmp_path / "unused", token(cluster, pods["node-b"]), "node-b")
    done = cluster.kubectl("delete", "-k", OVERLAY)
    assert done.returncode == 0, done.stderr
    add_to_report("kubectl delete -k order: " + ", ".join(line.split()[0] for line in done.stdout.splitlines()))
    for name, installer in (("a token used just before", used), ("a token never used", unused)):
        answer = cluster.kubectl("get", f"daemonset/{ACCOUNT}", "-n", NAMESPACE, as_token=installer.token)
        add_to_report(f"after kubectl delete -k, {name}: {answer.stderr.strip()}")
        assert installer.daemonset_deleted() is True, installer.logged
        assert installer.logged[-1][1].startswith("uninstalling: ")
    assert unused.logged == [("info", "uninstalling: the API no longer accepts our service-account token: its "
                                      "ServiceAccount was deleted", {"status": 401})]
