"""One Kubernetes node on this machine: containerd runs the DaemonSet's image and the pods.

The node (tests/support/node.Node) gives the network namespace, the primary CNI (bridge) and the
kube-API stand-in; containerd (tests/support/containerd.py) runs every pod; tests/support/kubelet.py does
the kubelet's part, translating the rendered manifests and pod specs into CRI calls. The kube-apiserver
and the kubelet are the only things that do not run for real: the stand-in serves what the installer
and the plugin ask for, and the tests put pods into it where a real cluster's API would hold them.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from tests.support import images, manifests
from tests.support.containerd import RELEASE, Containerd, release
from tests.support.kubelet import (
    Kubelet,
    NodeView,
    PodFailed,
    PodPlan,
    RunningPod,
    check_schedulable,
    probe_passes,
    run_pod,
    stop_pod,
)
from tests.support.lifetime import Started
from tests.support.node import API_PORT, STARTUP_TAINT, node_fixture, wait_for

PRIMARY_CONFLIST = "10-bridge.conflist"
NODE_NAME = "node-1"
NAMESPACE = "kube-system"


class KubeNode(Started):
    """The node, its runtime (containerd 2 unless release_name says "1.6"), the images it has and the pods it
    runs; close() removes all of it."""

    def __init__(self, version: str = "0.1.0", release_name: str = RELEASE) -> None:
        self.version = version
        self.release = release(release_name)
        self.node = self.release.node()
        self.containerd: Containerd | None = None
        self.pods: list[RunningPod] = []

    @property
    def cgroup_parent(self) -> str:
        assert self.containerd is not None
        return self.containerd.cgroup_parent

    @property
    def runtime(self) -> Any:
        assert self.containerd is not None
        return self.containerd.runtime

    def start(self) -> None:
        """A node registered with the start-up taint, its primary CNI configured, no plugin of ours yet."""
        self.node.start()
        self.primary = self.release.write_primary(self.node, PRIMARY_CONFLIST)
        self.primary_text = self.primary.read_text()
        self.node.write_nodes({NODE_NAME: node_fixture(NODE_NAME, taints=[STARTUP_TAINT])})
        archives = {images.PAUSE: images.pause_archive(), images.STANDINS: images.standins_archive(),
                    images.project_image(self.version): images.project_archive(self.version)}
        self.containerd = Containerd(self.node, keep_plugin=False, release_name=self.release.name)
        self.containerd.start()
        for name, archive in archives.items():
            self.containerd.import_image(archive, name)
        self.containerd.wait_network_ready()

    def close(self) -> None:
        if self.containerd is not None:
            self.containerd.close()
        self.node.close()

    def import_image(self, version: str) -> str:
        assert self.containerd is not None
        name = images.project_image(version)
        self.containerd.import_image(images.project_archive(version), name)
        return name

    # -- the API's view ----------------------------------------------------------------------------
    def taints(self) -> list[str]:
        return [t["key"] for t in self.node.api_node().get("spec", {}).get("taints", [])]

    def kubelet(self, config_maps: dict[str, dict[str, str]] | None = None) -> Kubelet:
        view = NodeView(name=NODE_NAME, host_paths={"/etc/cni/net.d": self.node.conf_dir,
                                                   "/opt/cni/bin": self.node.bin_dir},
                        pods_dir=self.node.dir / "kubelet-pods", api_host="127.0.0.1", api_port=API_PORT,
                        token=self.node.token, ca_pem=self.node.ca_pem)
        return Kubelet(view, config_maps or {})

    # -- the DaemonSet -----------------------------------------------------------------------------
    def daemonset(self, version: str | None = None) -> tuple[dict[str, Any], dict[str, dict[str, str]]]:
        """The DaemonSet and ConfigMaps of the default overlay rendered with our image, put into the API."""
        docs = manifests.render("default", images.project_image(version or self.version))
        daemonset = manifests.find(docs, "DaemonSet")
        config_maps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
        meta = daemonset["metadata"]
        self.node.write_daemonsets({f"{meta['namespace']}/{meta['name']}": {**daemonset, "metadata": {
            **meta, "uid": "ds-uid"}}})
        return daemonset, config_maps

    def delete_daemonset(self) -> None:
        """What `kubectl delete` leaves while the DaemonSet's pods terminate: a deletionTimestamp."""
        doc = json.loads(self.node.fixtures.read_text())["daemonsets"]
        for item in doc.values():
            item["metadata"]["deletionTimestamp"] = "2026-12-03T00:00:00Z"
        self.node.write_daemonsets(doc)

    def start_installer(self, version: str | None = None, settings: dict[str, str] | None = None) -> RunningPod:
        """The DaemonSet's pod; settings are ConfigMap values an operator's overlay would change."""
        daemonset, config_maps = self.daemonset(version)
        template = daemonset["spec"]["template"]
        for source in template["spec"]["containers"][0].get("envFrom", []):
            config_maps[source["configMapRef"]["name"]].update(settings or {})
        check_schedulable(template["spec"], self.node.api_node())
        plan = self.kubelet(config_maps).plan(template, f"microgateway-cni-{uuid.uuid4().hex[:5]}",
                                               daemonset["metadata"]["namespace"])
        return self.run(plan)

    def install(self, version: str | None = None, settings: dict[str, str] | None = None,
                timeout: float = 30.0) -> RunningPod:
        """The DaemonSet's pod started and ready: plugin chained, taint lifted, both probes passing."""
        pod = self.start_installer(version, settings)
        if not (wait_for(lambda: not self.taints(), timeout) and wait_for(lambda: self.probes_pass(pod), timeout)):
            logs = self.runtime.container_logs(pod.container_ids[pod.plan.containers[0].name])
            raise TimeoutError(f"installer not ready after {timeout} s; taints {self.taints()}; its log:\n{logs}")
        return pod

    def probes_pass(self, pod: RunningPod, kinds: tuple[str, ...] = ("liveness", "readiness")) -> bool:
        container = pod.plan.containers[0]
        return all(probe_passes(self.runtime, pod, container.name, probe, self.http_get)
                   for probe in container.probes if probe.kind in kinds)

    def http_get(self, port: int, path: str) -> int:
        """A GET from the node's network namespace, as the kubelet sends a host-network pod's httpGet probe."""
        done = self.node.exec(self.node.netns, ["python3", "-c",
                                                "import sys, urllib.request\n"
                                                "try:\n print(urllib.request.urlopen(sys.argv[1], timeout=1).status)\n"
                                                "except Exception:\n print(0)",
                                                f"http://127.0.0.1:{port}{path}"], check=False)
        return int(done.stdout.strip() or 0)

    def stop_installer(self, pod: RunningPod) -> int:
        """SIGTERM with the grace period, as on a rollout or a deletion; the installer's exit code."""
        cid = pod.container_ids[pod.plan.containers[0].name]
        self.runtime.stop_container(cid, timeout=pod.plan.grace_period)
        return int(self.runtime.container_status(cid).get("exit_code", -1))

    # -- pods ---------------------------------------------------------------------------------------
    def plan(self, manifest: dict[str, Any]) -> PodPlan:
        meta = manifest["metadata"]
        template = {"metadata": {"labels": meta.get("labels", {}), "annotations": meta.get("annotations", {})},
                    "spec": manifest["spec"]}
        return self.kubelet().plan(template, meta["name"], meta["namespace"])

    def run(self, plan: PodPlan) -> RunningPod:
        assert self.containerd is not None
        try:
            pod = run_pod(self.runtime, plan, self.containerd.cgroup_parent)
        except PodFailed as failed:
            self.pods.append(failed.pod)
            raise
        self.pods.append(pod)
        return pod

    def create(self, manifest: dict[str, Any], in_api: bool = True) -> RunningPod:
        """The pod as the API holds it (unless in_api is False: then only the runtime knows its annotations),
        then run by the runtime in the kubelet's order."""
        manifest["spec"]["nodeName"] = NODE_NAME  # the scheduler's binding
        if in_api:
            self.node.add_pod_fixture(manifest)
        return self.run(self.plan(manifest))

    def report_init_failure(self, manifest: dict[str, Any], failed: PodFailed) -> None:
        """The kubelet's status update for a pod held at a failed init container (what repair acts on)."""
        image = next(c["image"] for c in manifest["spec"]["initContainers"] if c["name"] == failed.container)
        manifest["status"] = {"phase": "Pending", "initContainerStatuses": [{
            "name": failed.container, "image": image, "imageID": "", "ready": False, "restartCount": 1,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": failed.code, "reason": "Error", "message": failed.message}}}]}
        self.node.add_pod_fixture(manifest)

    def delete(self, pod: RunningPod) -> None:
        stop_pod(self.runtime, pod)
        self.pods.remove(pod)

    def wait_started(self, pod: RunningPod, timeout: float = 10.0) -> None:
        """Until each stand-in container has printed "ready" (it listens then)."""
        deadline = time.monotonic() + timeout
        for name, cid in pod.container_ids.items():
            if name in {c.name for c in pod.plan.init_containers}:
                continue
            while "ready" not in self.runtime.container_logs(cid):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{pod.plan.name}/{name} did not start: {self.runtime.container_logs(cid)}")
                time.sleep(0.05)

    def request(self, client: RunningPod, targets: list[str]) -> dict[str, str]:
        """Connections from the client pod's container to each "ip:port": the reply names the hops."""
        code, out, err = self.runtime.exec_sync(client.container_ids["client"], images.client_command(*targets),
                                                timeout=20)
        if code != 0:
            raise AssertionError(f"client in {client.plan.name} failed ({code}): {err}")
        return dict(json.loads(out))

    def debug(self, pod: RunningPod, command: list[str], timeout: float = 30.0) -> tuple[int, str]:
        """`kubectl debug --profile=netadmin` with the project's image, as root: (exit code, output)."""
        spec = {"name": f"debugger-{uuid.uuid4().hex[:5]}", "image": images.project_image(self.version),
                "command": command, "securityContext": {"runAsUser": 0, "capabilities": {"add": ["NET_ADMIN",
                                                                                              "NET_RAW"]}}}
        container = self.kubelet().ephemeral(pod.plan, spec)
        cid = self.runtime.create_container(pod.sandbox_id, container.config, pod.plan.sandbox)
        self.runtime.start_container(cid)
        deadline = time.monotonic() + timeout
        while (status := self.runtime.container_status(cid))["state"] != "CONTAINER_EXITED":
            if time.monotonic() > deadline:
                raise TimeoutError(f"debug container in {pod.plan.name} still {status['state']}")
            time.sleep(0.05)
        output = self.runtime.container_logs(cid)
        self.runtime.remove_container(cid)
        return int(status.get("exit_code", 0)), output

    def pod_netns(self, pod: RunningPod) -> Path:
        """The pod's network namespace, through its sandbox process (the netns file itself lives in
        containerd's private mount namespace)."""
        info = self.runtime.pod_sandbox_status(pod.sandbox_id, verbose=True)["info"]["info"]
        return Path(f"/proc/{info['pid']}/ns/net")

    def in_pod(self, pod: RunningPod, cmd: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["nsenter", f"--net={self.pod_netns(pod)}", "--", *cmd], capture_output=True,
                              text=True, check=False)

    def our_rules(self, pod: RunningPod) -> list[str]:
        """Our chains' rules in the pod, in either backend."""
        legacy = self.in_pod(pod, ["iptables-legacy-save"]).stdout
        nft = self.in_pod(pod, ["nft", "list", "table", "ip", "microgateway"]).stdout
        return [line for line in legacy.splitlines() if "MGW_" in line] + \
            [line.strip() for line in nft.splitlines()
             if line.startswith("\t\t") and not line.strip().startswith("type ")]

    def chain(self) -> list[str]:
        """The plugin types of the primary's conflist, in order."""
        return [p["type"] for p in json.loads(self.primary.read_text())["plugins"]]

    def plugin_log(self) -> list[dict[str, Any]]:
        assert self.containerd is not None
        path = self.containerd.log_dir / "microgateway-cni.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
