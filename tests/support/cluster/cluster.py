"""A one-node Kubernetes cluster on this machine: the control plane and a worker that runs the pods.

What a user has after `kubeadm init` and `join` on one machine, with the start-up taint in the node's
registration: tests and the demo drive it through kubectl, and look at the node itself (its CNI files, the
plugin's log, a pod's network namespace) only where a user would log in to the node.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from cni.contract import VALIDATOR_CONTAINER
from tests.support import components, images
from tests.support.cluster.controlplane import NODE_NAME, ControlPlane
from tests.support.cluster.worker import Worker
from tests.support.lifetime import Started

OVERLAY = "daemonset/manifests/overlays/default"
INSTALLER = ("-n", "kube-system")
INSTALLER_PODS = "app.kubernetes.io/name=microgateway-cni"
# A nodeSelector no node matches: the DaemonSet's pod leaves every node, the DaemonSet stays.
NOWHERE = "microgateway-cni.test/nowhere"
# The stand-ins are PID 1 of their containers without a SIGTERM handler: only the kill after the grace
# period stops them, so these pods wait one second for it instead of thirty.
GRACE_SECONDS = 1
# The node's Ready condition, one line per object a watch sees: "True kubelet is posting ready status".
READY = '{range .status.conditions[?(@.type=="Ready")]}{.status} {.message}{"\\n"}{end}'


class Cluster(Started):
    def __init__(self) -> None:
        self.plane = ControlPlane()
        self.worker = Worker(self.plane)
        self.start_seconds = 0.0

    def start(self) -> None:
        started = time.monotonic()
        self.plane.start()
        self.worker.start()
        self.start_seconds = time.monotonic() - started

    def close(self) -> None:
        try:
            self.worker.close()
        finally:
            self.plane.close()

    # -- as a user ------------------------------------------------------------------------------------
    def kubectl(self, *args: str, input: str | None = None, timeout: float = 120) -> str:
        """kubectl ARGS as the admin; its output, or AssertionError with kubectl's own message."""
        done = self.plane.kubectl(*args, input=input, timeout=timeout)
        if done.returncode:
            raise AssertionError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def get(self, *args: str) -> Any:
        """`kubectl get ARGS -o json`, decoded."""
        return json.loads(self.kubectl("get", *args, "-o", "json"))

    def create(self, manifest: dict[str, Any]) -> None:
        self.kubectl("create", "-f", "-", input=json.dumps(manifest))

    def wait(self, *args: str, timeout: float = 120) -> None:
        """`kubectl wait ARGS`: returns once the condition holds, as kubectl watches for it."""
        self.kubectl("wait", *args, f"--timeout={timeout:.0f}s", timeout=timeout + 10)

    def request(self, client: str, targets: list[str]) -> dict[str, str]:
        """Connections from the client pod to each "ip:port" (`kubectl exec`): the replies name the hops."""
        return dict(json.loads(self.kubectl("exec", client, "--", *images.client_command(*targets))))

    def pod_ip(self, name: str) -> str:
        return str(self.get("pod", name)["status"]["podIP"])

    def verdict(self, pod: str, *args: str) -> dict[str, Any]:
        """The validator's JSON line, as `kubectl logs <pod> -c <validator> ARGS` shows it."""
        lines = self.kubectl("logs", pod, "-c", VALIDATOR_CONTAINER, *args).strip().splitlines()
        return dict(json.loads(lines[-1]))

    @contextlib.contextmanager
    def node_ready_seen(self) -> Iterator[list[str]]:
        """The node's Ready condition ("True <message>") at the start and at every change of the Node while
        the block runs, as a watch (`kubectl get node -w`) sees them; the list is filled when the block ends."""
        seen: list[str] = []
        with tempfile.TemporaryFile() as out:
            watch = subprocess.Popen(["ip", "netns", "exec", self.plane.netns, components.binary("kubectl"),
                                      f"--kubeconfig={self.plane.pki.kubeconfig('admin')}",
                                      f"--cache-dir={self.plane.dir / 'kubectl-cache'}", "get", "node", NODE_NAME,
                                      "-w", "-o", f"jsonpath={READY}"],
                                     stdout=out, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
            try:
                yield seen
            finally:
                watch.terminate()
                watch.wait()
                out.seek(0)
                seen += [line for line in out.read().decode(errors="replace").splitlines() if line.strip()]

    def node_ready(self) -> tuple[str, str]:
        """The node's Ready condition as `kubectl get node` shows it: status and message."""
        conditions = self.get("node", NODE_NAME)["status"]["conditions"]
        ready = next(c for c in conditions if c["type"] == "Ready")
        return str(ready["status"]), str(ready.get("message", ""))

    @contextlib.contextmanager
    def service_refused(self, ip: str, port: int) -> Iterator[None]:
        """Connections from the node's own network namespace to the Service ip:port refused (TCP reset)
        before kube-proxy's DNAT (nat output, priority -100) takes them, while the block runs: the API
        server behind an intact Service gone, for the node's processes that use the Service (the plugin);
        the kubelet, kube-proxy and kubectl reach the API server at its own address and keep it."""
        table = "mgw_test_refuse"
        rules = (f"table ip {table} {{\n chain output {{\n  type filter hook output priority -150; policy accept;\n"
                 f"  ip daddr {ip} tcp dport {port} reject with tcp reset\n }}\n}}\n")
        subprocess.run(["ip", "netns", "exec", self.plane.netns, "nft", "-f", "-"], input=rules, text=True,
                       check=True, capture_output=True)
        try:
            yield
        finally:
            subprocess.run(["ip", "netns", "exec", self.plane.netns, "nft", "delete", "table", "ip", table],
                           check=True, capture_output=True)

    # -- the DaemonSet --------------------------------------------------------------------------------
    def installer_ready(self) -> None:
        self.kubectl(*INSTALLER, "rollout", "status", "daemonset/microgateway-cni", "--timeout=120s")

    def stop_installer(self) -> None:
        """The DaemonSet's pod leaves the node (a nodeSelector that matches no node), the DaemonSet stays."""
        patch = {"spec": {"template": {"spec": {"nodeSelector": {NOWHERE: "true"}}}}}
        self.kubectl(*INSTALLER, "patch", "daemonset/microgateway-cni", "--type=merge", "-p", json.dumps(patch))
        self.wait(*INSTALLER, "--for=delete", "pod", "-l", INSTALLER_PODS)

    def resume_installer(self) -> None:
        key = NOWHERE.replace("/", "~1")  # a JSON pointer's escape
        self.kubectl(*INSTALLER, "patch", "daemonset/microgateway-cni", "--type=json", "-p",
                     json.dumps([{"op": "remove", "path": f"/spec/template/spec/nodeSelector/{key}"}]))
        self.installer_ready()

    # -- on the node ----------------------------------------------------------------------------------
    def sandbox(self, namespace: str, name: str) -> dict[str, Any]:
        """The runtime's verbose status of the pod's ready sandbox (its process, its netns file)."""
        runtime = self.worker.containerd.runtime
        sandboxes = runtime.list_pod_sandbox(label_selector={"io.kubernetes.pod.namespace": namespace,
                                                             "io.kubernetes.pod.name": name},
                                             state={"state": "SANDBOX_READY"})
        if len(sandboxes) != 1:
            raise LookupError(f"{namespace}/{name}: {len(sandboxes)} ready sandboxes on the node")
        return dict(runtime.pod_sandbox_status(sandboxes[0]["id"], verbose=True)["info"]["info"])

    def in_pod(self, namespace: str, name: str, command: list[str]) -> subprocess.CompletedProcess[str]:
        """command in the pod's network namespace, entered through its sandbox's process (containerd keeps
        the netns file in its private mount namespace)."""
        netns = f"/proc/{self.sandbox(namespace, name)['pid']}/ns/net"
        return subprocess.run(["nsenter", f"--net={netns}", "--", *command], capture_output=True, text=True,
                              check=False)

    def our_rules(self, name: str, namespace: str = "default") -> list[str]:
        """Our rules in the pod, in either backend: MGW_ lines of the legacy tables, our nft tables' rules."""
        legacy = self.in_pod(namespace, name, ["iptables-legacy-save"]).stdout
        nft = "".join(self.in_pod(namespace, name, ["nft", "list", "table", family, "microgateway"]).stdout
                      for family in ("ip", "ip6"))
        return [line for line in legacy.splitlines() if "MGW_" in line] + \
            [line.strip() for line in nft.splitlines() if line.startswith("\t\t")]

    def plugin_log(self) -> list[dict[str, Any]]:
        """The plugin's log on the node (/var/log/microgateway-cni.log there), entry by entry."""
        path = self.worker.plugin_log
        lines = path.read_text().splitlines() if path.exists() else []
        return [json.loads(line) for line in lines if line.startswith("{")]

    def primary_entries(self) -> list[str]:
        """The plugin types of the primary CNI's conflist, in order."""
        return [entry["type"] for entry in json.loads(self.worker.primary.read_text())["plugins"]]

    def primary_is_the_agents(self) -> bool:
        """The primary's conflist holds what its agent last wrote, nothing of ours."""
        return bool(json.loads(self.worker.primary.read_text()) == json.loads(self.worker.primary_text))


def validator_exit(pod: dict[str, Any]) -> int | None:
    """The exit code of the pod's validator: of its one run, or of its last run before a restart."""
    status = next(s for s in pod["status"]["initContainerStatuses"] if s["name"] == VALIDATOR_CONTAINER)
    terminated = status["state"].get("terminated") or status.get("lastState", {}).get("terminated") or {}
    return terminated.get("exitCode")


def for_api(manifest: dict[str, Any]) -> dict[str, Any]:
    """A pod manifest of tests/support/workloads.py as a user writes it: no uid (the API server assigns
    it), a short grace period (GRACE_SECONDS)."""
    manifest["metadata"].pop("uid", None)
    manifest["spec"]["terminationGracePeriodSeconds"] = GRACE_SECONDS
    return manifest


def deployment(pod: dict[str, Any], replicas: int) -> dict[str, Any]:
    """A Deployment whose pods are made from the pod manifest's labels, annotations and spec."""
    meta = for_api(pod)["metadata"]
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": meta["labels"]["app"]}},
                     "template": {"metadata": {"labels": meta["labels"], "annotations": meta["annotations"]},
                                  "spec": pod["spec"]}}}
