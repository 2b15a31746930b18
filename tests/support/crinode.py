"""A node of containerd driven over CRI, with no kubelet: for what the cluster tier cannot show at this rate.

The node (tests/support/node.Node) gives the network namespace, the primary CNI (bridge) and the kube-API
stand-in; containerd (tests/support/containerd.py) makes every pod; the installer runs as a process in the
node's network namespace (tests/support/installer.Daemon, as in tests/integration), writing the node's CNI
directories that containerd sees at a real node's paths. Pods are made with CRI calls directly, in the
kubelet's order: RunPodSandbox, each init container to its exit, then the containers. Their manifests are
tests/support/workloads.py's; a container's command, image and securityContext are all that is carried over.
The real kubelet, the manifests and the project's image for the installer are the cluster tier's (tests/cluster).
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cni.contract import VALIDATOR_CONTAINER
from tests.support import images
from tests.support.containerd import RELEASE, Containerd, release
from tests.support.cri import RuntimeClient
from tests.support.installer import Daemon, Host
from tests.support.lifetime import Started
from tests.support.node import STARTUP_TAINT, daemonset_fixture, executable, node_fixture, wait_for

PRIMARY_CONFLIST = "10-bridge.conflist"
NODE_NAME = "node-1"
GRACE_SECONDS = 1  # the stand-ins have no SIGTERM handler (tests/support/cluster/cluster.py)


class PodFailed(RuntimeError):
    """An init container exited non-zero: the kubelet would hold the pod there (its sandbox stays)."""

    def __init__(self, pod: CriPod, container: str, code: int) -> None:
        super().__init__(f"pod {pod.name}: init container {container} exited {code}")
        self.pod, self.container, self.code = pod, container, code


@dataclass
class CriPod:
    name: str
    namespace: str
    sandbox_id: str
    config: dict[str, Any]  # the PodSandboxConfig
    ip: str
    container_ids: dict[str, str] = field(default_factory=dict)
    init_results: dict[str, int] = field(default_factory=dict)  # init container -> exit code


def container_config(spec: dict[str, Any]) -> dict[str, Any]:
    """A ContainerConfig for a container of a workloads.py manifest: image, command, securityContext."""
    sc = spec.get("securityContext", {})
    security: dict[str, Any] = {
        "readonly_rootfs": bool(sc.get("readOnlyRootFilesystem", False)),
        "no_new_privs": sc.get("allowPrivilegeEscalation") is False,
        "capabilities": {"add_capabilities": list(sc.get("capabilities", {}).get("add", [])),
                         "drop_capabilities": list(sc.get("capabilities", {}).get("drop", []))}}
    if "runAsUser" in sc:
        security["run_as_user"] = {"value": int(sc["runAsUser"])}
    return {"metadata": {"name": spec["name"], "attempt": 0}, "image": {"image": spec["image"]},
            "command": list(spec.get("command", [])), "log_path": f"{spec['name']}.log",
            "labels": {"io.kubernetes.container.name": spec["name"]},
            "linux": {"security_context": security}}


class CriNode(Started):
    """The node, containerd (2 unless release_name says "1.6") with the pause, stand-in and project images,
    and the installer once install() has run; close() removes all of it."""

    def __init__(self, release_name: str = RELEASE) -> None:
        self.release = release(release_name)
        self.node = self.release.node()
        self.containerd: Containerd | None = None
        self.daemon: Daemon | None = None

    @property
    def runtime(self) -> RuntimeClient:
        assert self.containerd is not None
        return self.containerd.runtime

    def start(self) -> None:
        """A node registered with the start-up taint, its primary CNI configured, no plugin of ours yet."""
        self.node.start()
        self.primary = self.release.write_primary(self.node, PRIMARY_CONFLIST)
        self.primary_text = self.primary.read_text()
        self.node.write_nodes({NODE_NAME: node_fixture(NODE_NAME, taints=[STARTUP_TAINT])})
        self.node.write_daemonsets(daemonset_fixture(deleted=False))
        self.containerd = Containerd(self.node, keep_plugin=False, release_name=self.release.name)
        self.containerd.start()
        for name, archive in {images.PAUSE: images.pause_archive(), images.STANDINS: images.standins_archive(),
                              images.project_image(): images.project_archive()}.items():
            self.containerd.import_image(archive, name)
        self.containerd.wait_network_ready()

    def close(self) -> None:
        try:
            if self.containerd is not None:
                self.containerd.close()
        finally:
            self.node.close()  # the installer and the API stand-in with it

    # -- the installer --------------------------------------------------------------------------------
    def install(self, timeout: float = 30.0, **settings: str) -> Daemon:
        """The installer process in the node's network namespace, ready: plugin chained, taint lifted.
        settings are MGW_ variables an operator's ConfigMap would change."""
        host = Host.for_node(self.node)
        self.daemon = Daemon(self.node, host, installer=str(executable("microgateway-cni-installer")),
                             MGW_PLUGIN_BINARY=str(executable("microgateway-cni")),
                             **{"MGW_LOG_LEVEL": "info", **settings})
        if not (wait_for(lambda: not self.taints(), timeout) and wait_for(self.daemon.ready, timeout)):
            raise TimeoutError(f"installer not ready after {timeout} s; taints {self.taints()}; its log:\n"
                               f"{(self.node.dir / 'installer.log').read_text()[-3000:]}")
        return self.daemon

    def stop_installer(self) -> int:
        """SIGTERM while its DaemonSet exists (a restart, not an uninstall): the installer's exit code."""
        assert self.daemon is not None
        return self.daemon.stop()

    def taints(self) -> list[str]:
        return [t["key"] for t in self.node.api_node(NODE_NAME).get("spec", {}).get("taints", [])]

    def chain(self) -> list[str]:
        """The plugin types of the primary's conflist, in order."""
        return [p["type"] for p in json.loads(self.primary.read_text())["plugins"]]

    def plugin_log(self) -> list[dict[str, Any]]:
        path = self.node.log_file
        lines = path.read_text().splitlines() if path.exists() else []
        return [json.loads(line) for line in lines if line.startswith("{")]

    # -- pods -----------------------------------------------------------------------------------------
    def create(self, manifest: dict[str, Any], in_api: bool = True, timeout: float = 30.0) -> CriPod:
        """The pod as the API holds it (unless in_api is False), then made through CRI in the kubelet's order;
        PodFailed if an init container exits non-zero."""
        assert self.containerd is not None
        meta, spec = manifest["metadata"], manifest["spec"]
        spec["nodeName"] = NODE_NAME
        if in_api:
            self.node.add_pod_fixture(manifest)
        config = self.containerd.pod_config(meta["name"], meta["namespace"], labels=meta.get("labels"),
                                            annotations=meta.get("annotations"))
        sandbox = self.runtime.run_pod_sandbox(config)
        status = self.runtime.pod_sandbox_status(sandbox)
        pod = CriPod(meta["name"], meta["namespace"], sandbox, config, status.get("network", {}).get("ip", ""))
        for init in spec.get("initContainers", []):
            cid = self._start(pod, init)
            deadline = time.monotonic() + timeout
            while (state := self.runtime.container_status(cid))["state"] != "CONTAINER_EXITED":
                if time.monotonic() > deadline:
                    raise TimeoutError(f"pod {pod.name}: init container {init['name']} still {state['state']}")
                time.sleep(0.02)
            pod.init_results[init["name"]] = int(state.get("exit_code", 0))
            if pod.init_results[init["name"]] != 0:
                raise PodFailed(pod, init["name"], pod.init_results[init["name"]])
        for container in spec["containers"]:
            self._start(pod, container)
        return pod

    def _start(self, pod: CriPod, spec: dict[str, Any]) -> str:
        cid = self.runtime.create_container(pod.sandbox_id, container_config(spec), pod.config)
        self.runtime.start_container(cid)
        pod.container_ids[spec["name"]] = cid
        return cid

    def delete(self, pod: CriPod) -> None:
        """As the kubelet deletes a pod: its containers stopped, then StopPodSandbox (CNI DEL with the netns)
        and RemovePodSandbox (DEL again, without it)."""
        for cid in pod.container_ids.values():
            self.runtime.stop_container(cid, timeout=GRACE_SECONDS)
        self.runtime.stop_pod_sandbox(pod.sandbox_id)
        self.runtime.remove_pod_sandbox(pod.sandbox_id)

    def validator_exit(self, pod: CriPod) -> int | None:
        return pod.init_results.get(VALIDATOR_CONTAINER)

    def wait_started(self, pod: CriPod, timeout: float = 10.0) -> None:
        """Until each stand-in container has printed "ready" (it listens then)."""
        deadline = time.monotonic() + timeout
        for name, cid in pod.container_ids.items():
            if name in pod.init_results:
                continue
            while "ready" not in self.runtime.container_logs(cid):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{pod.name}/{name} did not start: {self.runtime.container_logs(cid)}")
                time.sleep(0.05)

    def request(self, client: CriPod, targets: list[str]) -> dict[str, str]:
        """Connections from the client pod's container to each "ip:port": the reply names the hops."""
        code, out, err = self.runtime.exec_sync(client.container_ids["client"], images.client_command(*targets),
                                                timeout=20)
        if code != 0:
            raise AssertionError(f"client in {client.name} failed ({code}): {err}")
        return dict(json.loads(out))

    def pod_netns(self, pod: CriPod) -> Path:
        """The pod's network namespace, through its sandbox process (the netns file itself lives in
        containerd's private mount namespace)."""
        info = self.runtime.pod_sandbox_status(pod.sandbox_id, verbose=True)["info"]["info"]
        return Path(f"/proc/{info['pid']}/ns/net")

    def our_rules(self, pod: CriPod) -> list[str]:
        """Our rules in the pod, in either backend: MGW_ lines of the legacy tables, our nft table's rules."""
        def inside(cmd: list[str]) -> str:
            return subprocess.run(["nsenter", f"--net={self.pod_netns(pod)}", "--", *cmd], capture_output=True,
                                  text=True, check=False).stdout
        legacy = inside(["iptables-legacy-save"])
        nft = inside(["nft", "list", "table", "ip", "microgateway"])
        return [line for line in legacy.splitlines() if "MGW_" in line] + \
            [line.strip() for line in nft.splitlines()
             if line.startswith("\t\t") and not line.strip().startswith("type ")]
