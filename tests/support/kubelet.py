"""The kubelet's part for one pod of the rendered manifests: its pod spec translated into CRI's configs.

There is no kubelet here, so this module does what it would do with a scheduled pod: the sandbox config
(host network, port mappings, labels), each container's config (image, command and args, env from
ConfigMaps, values and fieldRefs, the API service variables, volumes as mounts, the projected
service-account token, the securityContext as CRI's) and the probes. It translates, it does not restate:
anything in a spec it cannot translate faithfully raises UnsupportedSpec, and a hostPath the test node
does not provide raises too, as does an image the kubelet would pull on every start (there is no registry),
so a wrong path, variable, capability or image tag in the manifests fails the test that runs them.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.cri import RuntimeClient
from tests.support.node import tolerates

SERVICE_ACCOUNT_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
SERVICE_ACCOUNT_VOLUME = "kube-api-access"  # the name of the projected volume the kubelet adds
QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|k|M|G)?$")
SUFFIX = {None: 1, "m": 0.001, "k": 1000, "M": 1000**2, "G": 1000**3, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}


class UnsupportedSpec(ValueError):
    """A field of the pod spec this translation does not carry over: extend it rather than skip it."""


def quantity(text: str | int) -> float:
    match = QUANTITY.match(str(text))
    if not match:
        raise UnsupportedSpec(f"resource quantity {text!r}")
    return float(match.group(1)) * SUFFIX[match.group(2)]


@dataclass
class NodeView:
    """What the kubelet of the test node knows: its name, its directories and how pods reach the API."""

    name: str
    host_paths: Mapping[str, Path]  # a hostPath as the manifests name it -> that directory on the test node
    pods_dir: Path  # per-pod state: emptyDirs, projected tokens, termination logs, container logs
    api_host: str
    api_port: int
    token: str
    ca_pem: bytes
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Probe:
    kind: str  # "liveness" | "readiness" | "startup"
    period: float
    timeout: float
    failure_threshold: int
    exec_command: list[str] | None = None
    http_path: str | None = None
    http_port: int | None = None


@dataclass
class Container:
    name: str
    config: dict[str, Any]
    probes: list[Probe]
    termination_log: Path


@dataclass
class PodPlan:
    """A pod as the kubelet would start it: one sandbox config, then init containers, then containers."""

    name: str
    namespace: str
    uid: str
    sandbox: dict[str, Any]
    init_containers: list[Container]
    containers: list[Container]
    grace_period: int
    host_network: bool


def check_schedulable(spec: Mapping[str, Any], node: Mapping[str, Any]) -> None:
    """The scheduler's part: the pod's nodeSelector matches the node and it tolerates every NoSchedule or
    NoExecute taint on it (a DaemonSet pod that cannot land on a new node never lifts its taint)."""
    labels = node["metadata"].get("labels", {})
    for key, value in spec.get("nodeSelector", {}).items():
        if labels.get(key) != value:
            raise UnsupportedSpec(f"nodeSelector {key}={value} does not match node {node['metadata']['name']}")
    for taint in node.get("spec", {}).get("taints", []):
        if taint["effect"] in ("NoSchedule", "NoExecute") and not tolerates(spec.get("tolerations", []), taint):
            raise UnsupportedSpec(f"the pod does not tolerate the node's taint {taint['key']}:{taint['effect']}")


def pull_policy(container: Mapping[str, Any]) -> str:
    """The container's imagePullPolicy as the API server defaults it: Always for an image tagged latest or
    not tagged at all (a digest alone counts as pinned), IfNotPresent otherwise."""
    if "imagePullPolicy" in container:
        return str(container["imagePullPolicy"])
    image = container["image"]
    name = image.rsplit("/", 1)[-1]
    pinned = "@" in image or (":" in name and not name.endswith(":latest"))
    return "IfNotPresent" if pinned else "Always"


class Kubelet:
    """Translates pod templates of the rendered manifests for one test node."""

    KNOWN_POD_FIELDS = frozenset({"nodeName", "serviceAccountName", "hostNetwork", "priorityClassName",
                                  "terminationGracePeriodSeconds", "tolerations", "nodeSelector", "containers",
                                  "initContainers", "volumes", "securityContext", "automountServiceAccountToken"})
    KNOWN_CONTAINER_FIELDS = frozenset({"name", "image", "command", "args", "env", "envFrom", "ports",
                                        "livenessProbe", "readinessProbe", "startupProbe", "resources",
                                        "securityContext", "volumeMounts", "imagePullPolicy",
                                        "terminationMessagePath", "terminationMessagePolicy"})

    def __init__(self, node: NodeView, config_maps: Mapping[str, Mapping[str, str]]) -> None:
        self.node = node
        self.config_maps = config_maps

    def plan(self, template: Mapping[str, Any], name: str, namespace: str) -> PodPlan:
        spec = template["spec"]
        unknown = set(spec) - self.KNOWN_POD_FIELDS
        if unknown:
            raise UnsupportedSpec(f"pod spec fields {sorted(unknown)}")
        uid = str(uuid.uuid4())
        pod_dir = self.node.pods_dir / f"{namespace}_{name}_{uid}"
        pod_dir.mkdir(parents=True)
        meta = template.get("metadata", {})
        volumes = self._volumes(spec, pod_dir, namespace)
        host_network = bool(spec.get("hostNetwork"))
        pod = {"name": name, "namespace": namespace, "uid": uid}

        def containers(key: str) -> list[Container]:
            return [self._container(c, pod, volumes, pod_dir, spec.get("securityContext", {}))
                    for c in spec.get(key, [])]

        ports = [{"protocol": p.get("protocol", "TCP"), "container_port": p["containerPort"],
                  "host_port": p["containerPort"] if host_network else p.get("hostPort", 0)}
                 for c in spec["containers"] for p in c.get("ports", [])]
        sandbox = {
            "metadata": {"name": name, "namespace": namespace, "uid": uid, "attempt": 0},
            "log_directory": str(pod_dir / "logs"),
            "port_mappings": ports,
            "labels": {**meta.get("labels", {}), "io.kubernetes.pod.name": name,
                       "io.kubernetes.pod.namespace": namespace, "io.kubernetes.pod.uid": uid},
            "annotations": dict(meta.get("annotations", {})),
            "linux": {"security_context": {"namespace_options": {"network": "NODE" if host_network else "POD",
                                                                 "pid": "CONTAINER"}}},
        }
        (pod_dir / "logs").mkdir()
        return PodPlan(name=name, namespace=namespace, uid=uid, sandbox=sandbox,
                       init_containers=containers("initContainers"), containers=containers("containers"),
                       grace_period=int(spec.get("terminationGracePeriodSeconds", 30)), host_network=host_network)

    def ephemeral(self, plan: PodPlan, spec: Mapping[str, Any]) -> Container:
        """A debug container in a running pod, as `kubectl debug` adds one: no volumes, no probes."""
        pod = {"name": plan.name, "namespace": plan.namespace, "uid": plan.uid}
        pod_dir = self.node.pods_dir / f"{plan.namespace}_{plan.name}_{plan.uid}"
        return self._container(spec, pod, {}, pod_dir, {})

    # -- volumes ---------------------------------------------------------------------------------
    def _volumes(self, spec: Mapping[str, Any], pod_dir: Path, namespace: str) -> dict[str, Path]:
        volumes: dict[str, Path] = {}
        for volume in spec.get("volumes", []):
            if "hostPath" in volume:
                path = volume["hostPath"]["path"]
                if path not in self.node.host_paths:
                    raise UnsupportedSpec(f"volume {volume['name']}: hostPath {path} is not a directory of this "
                                          f"node (it has {sorted(self.node.host_paths)})")
                target = self.node.host_paths[path]
                kind = volume["hostPath"].get("type", "")
                if kind == "DirectoryOrCreate":
                    target.mkdir(parents=True, exist_ok=True)
                elif kind == "Directory" and not target.is_dir():
                    raise UnsupportedSpec(f"volume {volume['name']}: hostPath {path} is not a directory")
                elif kind not in ("", "Directory"):
                    raise UnsupportedSpec(f"volume {volume['name']}: hostPath type {kind}")
                volumes[volume["name"]] = target
            elif "emptyDir" in volume:
                volumes[volume["name"]] = pod_dir / "volumes" / volume["name"]
                volumes[volume["name"]].mkdir(parents=True)
            else:
                raise UnsupportedSpec(f"volume {volume['name']}: only hostPath and emptyDir are translated")
        if spec.get("automountServiceAccountToken", True) and spec.get("serviceAccountName"):
            volumes[SERVICE_ACCOUNT_VOLUME] = self._service_account(pod_dir, namespace)
        return volumes

    def _service_account(self, pod_dir: Path, namespace: str) -> Path:
        """The projected token volume, laid out as the kubelet writes it (a ..data link to a timestamped dir)."""
        sa = pod_dir / "serviceaccount"
        data = sa / f"..{time.time_ns()}"
        data.mkdir(parents=True)
        (data / "token").write_text(self.node.token)
        (data / "ca.crt").write_bytes(self.node.ca_pem)
        (data / "namespace").write_text(namespace)
        (sa / "..data").symlink_to(data.name)
        for item in ("token", "ca.crt", "namespace"):
            (sa / item).symlink_to(Path("..data") / item)
        return sa

    # -- containers ------------------------------------------------------------------------------
    def _container(self, c: Mapping[str, Any], pod: Mapping[str, str], volumes: Mapping[str, Path],
                   pod_dir: Path, pod_security: Mapping[str, Any]) -> Container:
        unknown = set(c) - self.KNOWN_CONTAINER_FIELDS
        if unknown:
            raise UnsupportedSpec(f"container {c['name']}: fields {sorted(unknown)}")
        if pull_policy(c) == "Always":
            raise UnsupportedSpec(f"container {c['name']}: image {c['image']} is pulled on every start "
                                  "(imagePullPolicy Always, the default for :latest or no tag); this node has no "
                                  "registry, its images are imported: use a versioned tag or IfNotPresent")
        termination_log = pod_dir / f"termination-{c['name']}"
        termination_log.touch()
        termination_log.chmod(0o666)  # as the kubelet makes it: any uid the container runs as may write it
        mounts = [{"container_path": m["mountPath"], "host_path": str(volumes[m["name"]]),
                   "readonly": bool(m.get("readOnly"))} for m in c.get("volumeMounts", [])]
        if any("subPath" in m for m in c.get("volumeMounts", [])):
            raise UnsupportedSpec(f"container {c['name']}: subPath mounts")
        if SERVICE_ACCOUNT_VOLUME in volumes:
            mounts.append({"container_path": SERVICE_ACCOUNT_MOUNT, "host_path": str(volumes[SERVICE_ACCOUNT_VOLUME]),
                           "readonly": True})
        mounts.append({"container_path": c.get("terminationMessagePath", "/dev/termination-log"),
                       "host_path": str(termination_log)})
        config: dict[str, Any] = {
            "metadata": {"name": c["name"], "attempt": 0},
            "image": {"image": c["image"]},
            "command": list(c.get("command", [])),
            "args": list(c.get("args", [])),
            "envs": [{"key": k, "value": v} for k, v in self._env(c, pod).items()],
            "mounts": mounts,
            "log_path": f"{c['name']}/0.log",
            "labels": {"io.kubernetes.container.name": c["name"], "io.kubernetes.pod.name": pod["name"],
                       "io.kubernetes.pod.namespace": pod["namespace"], "io.kubernetes.pod.uid": pod["uid"]},
            "linux": {"resources": self._resources(c.get("resources", {})),
                      "security_context": self._security(c["name"], {**pod_security, **c.get("securityContext", {})})},
        }
        probes = [self._probe(kind, c[f"{kind}Probe"], c.get("ports", []))
                  for kind in ("startup", "liveness", "readiness") if f"{kind}Probe" in c]
        return Container(name=c["name"], config=config, probes=probes, termination_log=termination_log)

    def _env(self, c: Mapping[str, Any], pod: Mapping[str, str]) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in c.get("envFrom", []):
            if set(source) != {"configMapRef"}:
                raise UnsupportedSpec(f"container {c['name']}: envFrom {sorted(source)}")
            name = source["configMapRef"]["name"]
            if name not in self.config_maps:
                raise UnsupportedSpec(f"container {c['name']}: ConfigMap {name} is not in the manifests")
            env.update(self.config_maps[name])
        fields = {"spec.nodeName": self.node.name, "metadata.namespace": pod["namespace"],
                  "metadata.name": pod["name"], "metadata.uid": pod["uid"]}
        for var in c.get("env", []):
            if "value" in var:
                env[var["name"]] = str(var["value"])
            elif set(var.get("valueFrom", {})) == {"fieldRef"} and var["valueFrom"]["fieldRef"]["fieldPath"] in fields:
                env[var["name"]] = fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
            else:
                raise UnsupportedSpec(f"container {c['name']}: env {var['name']} {var.get('valueFrom')}")
        # The service variables of the `kubernetes` Service, which the kubelet adds to every container.
        env.setdefault("KUBERNETES_SERVICE_HOST", self.node.api_host)
        env.setdefault("KUBERNETES_SERVICE_PORT", str(self.node.api_port))
        return env

    @staticmethod
    def _resources(resources: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "memory" in resources.get("limits", {}):
            out["memory_limit_in_bytes"] = int(quantity(resources["limits"]["memory"]))
        cpu = resources.get("requests", {}).get("cpu")
        if cpu is not None:
            out["cpu_shares"] = max(2, int(quantity(cpu) * 1024))
        return out

    @staticmethod
    def _security(name: str, sc: Mapping[str, Any]) -> dict[str, Any]:
        known = {"runAsUser", "runAsGroup", "runAsNonRoot", "readOnlyRootFilesystem", "allowPrivilegeEscalation",
                 "capabilities", "privileged"}
        unknown = set(sc) - known
        if unknown:
            raise UnsupportedSpec(f"container {name}: securityContext fields {sorted(unknown)}")
        out: dict[str, Any] = {
            "privileged": bool(sc.get("privileged", False)),
            "readonly_rootfs": bool(sc.get("readOnlyRootFilesystem", False)),
            "no_new_privs": sc.get("allowPrivilegeEscalation") is False,
            "capabilities": {"add_capabilities": list(sc.get("capabilities", {}).get("add", [])),
                             "drop_capabilities": list(sc.get("capabilities", {}).get("drop", []))},
        }
        if "runAsUser" in sc:
            out["run_as_user"] = {"value": int(sc["runAsUser"])}
        if "runAsGroup" in sc:
            out["run_as_group"] = {"value": int(sc["runAsGroup"])}
        if sc.get("runAsNonRoot") and sc.get("runAsUser") == 0:
            raise UnsupportedSpec(f"container {name}: runAsNonRoot with runAsUser 0 would not start")
        return out

    @staticmethod
    def _probe(kind: str, probe: Mapping[str, Any], ports: list[dict[str, Any]]) -> Probe:
        out = Probe(kind=kind, period=float(probe.get("periodSeconds", 10)),
                    timeout=float(probe.get("timeoutSeconds", 1)),
                    failure_threshold=int(probe.get("failureThreshold", 3)))
        if "exec" in probe:
            out.exec_command = list(probe["exec"]["command"])
        elif "httpGet" in probe and probe["httpGet"].get("scheme", "HTTP") == "HTTP":
            port = probe["httpGet"]["port"]
            if isinstance(port, str):  # a named container port
                port = next((p["containerPort"] for p in ports if p.get("name") == port), None)
                if port is None:
                    raise UnsupportedSpec(f"{kind} probe: no container port named {probe['httpGet']['port']}")
            out.http_path, out.http_port = probe["httpGet"].get("path", "/"), int(port)
        else:
            raise UnsupportedSpec(f"{kind} probe {sorted(probe)}")
        return out


# -- running a plan through CRI, in the kubelet's order -----------------------------------------------
class PodFailed(RuntimeError):
    """An init container exited non-zero: the kubelet holds the pod there (its sandbox stays)."""

    def __init__(self, pod: RunningPod, container: str, code: int, message: str) -> None:
        super().__init__(f"pod {pod.plan.name}: init container {container} exited {code}: {message}")
        self.pod, self.container, self.code, self.message = pod, container, code, message


@dataclass
class RunningPod:
    plan: PodPlan
    sandbox_id: str
    ip: str
    container_ids: dict[str, str] = field(default_factory=dict)
    init_results: dict[str, tuple[int, str]] = field(default_factory=dict)  # name -> (exit code, message)


def run_pod(runtime: RuntimeClient, plan: PodPlan, cgroup_parent: str, timeout: float = 30.0) -> RunningPod:
    """RunPodSandbox, each init container to completion (stop at the first that fails, as the kubelet
    holds the pod there), then every container; PodFailed names the init container that failed."""
    plan.sandbox.setdefault("linux", {})["cgroup_parent"] = cgroup_parent
    sandbox_id = runtime.run_pod_sandbox(plan.sandbox)
    status = runtime.pod_sandbox_status(sandbox_id)
    pod = RunningPod(plan=plan, sandbox_id=sandbox_id, ip=status.get("network", {}).get("ip", ""))
    for container in plan.init_containers:
        cid = _start(runtime, pod, container)
        deadline = time.monotonic() + timeout
        while (state := runtime.container_status(cid))["state"] != "CONTAINER_EXITED":
            if time.monotonic() > deadline:
                raise TimeoutError(f"pod {plan.name}: init container {container.name} still {state['state']}")
            time.sleep(0.05)
        code = int(state.get("exit_code", 0))
        pod.init_results[container.name] = (code, container.termination_log.read_text())
        if code != 0:
            raise PodFailed(pod, container.name, code, container.termination_log.read_text())
    for container in plan.containers:
        _start(runtime, pod, container)
    return pod


def _start(runtime: RuntimeClient, pod: RunningPod, container: Container) -> str:
    cid = runtime.create_container(pod.sandbox_id, container.config, pod.plan.sandbox)
    runtime.start_container(cid)
    pod.container_ids[container.name] = cid
    return cid


def stop_pod(runtime: RuntimeClient, pod: RunningPod) -> None:
    """What the kubelet does when a pod is deleted: stop its containers with the grace period, then
    StopPodSandbox (CNI DEL with the netns) and RemovePodSandbox (CNI DEL again, without it)."""
    for cid in pod.container_ids.values():
        runtime.stop_container(cid, timeout=pod.plan.grace_period)
    runtime.stop_pod_sandbox(pod.sandbox_id)
    runtime.remove_pod_sandbox(pod.sandbox_id)


def probe_passes(runtime: RuntimeClient, pod: RunningPod, container: str, probe: Probe,
                 http_get: Callable[[int, str], int]) -> bool:
    """One probe as the kubelet runs it: exec through the runtime, httpGet to the pod's address
    (http_get sends it from where the kubelet would, and returns the status or 0)."""
    if probe.exec_command is not None:
        code, _, _ = runtime.exec_sync(pod.container_ids[container], probe.exec_command, timeout=int(probe.timeout))
        return code == 0
    assert probe.http_port is not None and probe.http_path is not None
    return 200 <= http_get(probe.http_port, probe.http_path) < 400
