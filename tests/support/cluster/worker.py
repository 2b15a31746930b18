"""The cluster tier's worker node: containerd 2, the kubelet and kube-proxy, joined to a ControlPlane.

All three run in the control plane's node network namespace (the node IP is the API server's advertise
address) and in containerd's private mount namespace (tests/support/containerd.py), where the node's
directories sit at a real node's paths (/etc/cni/net.d, /opt/cni/bin, /var/log): the kubelet must see the
mounts it makes for volumes where containerd bind-mounts them from, and the manifests' hostPaths must
resolve to this node's directories, not the host's. The kubelet is not started with `ip netns exec`,
which remounts /sys and hides the cgroup mounts from it.

The kubelet's cgroupRoot is containerd's cgroup parent, so the pods' cgroups are the ones Containerd
removes. The kubelet changes a few global sysctls (kernel.panic...): they are recorded before it starts and
restored on close(). Long-lived processes get `setpriv --pdeathsig KILL`; a run killed before close()
leaves its record in its directory (its owner, its cgroup parent, the sysctls as they were), and the next
start() removes what it names and every process whose command line names that directory (sweep()).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support import components, images
from tests.support.cluster.controlplane import NODE_IP, NODE_NAME, ControlPlane, process_start
from tests.support.containerd import PATH, Containerd, alive, release
from tests.support.lifetime import Started
from tests.support.node import STARTUP_TAINT

PRIMARY = "10-bridge.conflist"
SUBNET = "10.88.0.0/24"  # tests/support/node.py's bridge range, what the primary's conflist hands out
CGROUP_ROOT = Path("/sys/fs/cgroup")
# Docker Hub's name for an image named without a registry, as the kubelet asks containerd for it: the
# base DaemonSet's `microgateway-cni:0.1.0` is found under this name or pulled.
HUB = "docker.io/library/"
# What the kubelet may write at start-up (setupKernelTunables): global, not per network namespace, so
# recorded before and written back after. kube-proxy, its conntrack settings at zero, writes none.
SYSCTLS = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
           "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes")
RECORD = "worker.json"
KUBELET_DIR = "/var/lib/kubelet"
START_TIMEOUT = 90.0


class Worker(Started):
    """One worker node of plane (plane.netns, NODE_NAME, NODE_IP), registered with the start-up taint."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.release = release()
        # The node's directories and CNI plugins; its network namespace is the control plane's.
        self.node = self.release.node()
        self.node.netns = plane.netns
        self.dir = self.node.dir
        self.kubelet_dir = self.dir / "kubelet"
        # The kubelet keeps some files at /var/lib/kubelet whatever its --root-dir says
        # (device-plugins/kubelet.sock): containerd's mount namespace has its directory there too.
        self.containerd = Containerd(self.node, snapshotter="overlayfs", keep_plugin=False,
                                     extra_mounts={self.kubelet_dir: KUBELET_DIR})
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.sysctls: dict[str, str] = {}

    @property
    def plugin_log(self) -> Path:
        """The plugin's log: /var/log/microgateway-cni.log on this node."""
        return self.containerd.log_dir / "microgateway-cni.log"

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        sweep()
        self.sysctls = {name: _sysctl(name) for name in SYSCTLS}
        self._record()
        for sub in (self.node.bin_dir, self.node.conf_dir, self.dir / "ipam", self.kubelet_dir):
            sub.mkdir(parents=True, exist_ok=True)
        for plugin in ("bridge", "host-local", "loopback", "portmap"):
            (self.node.bin_dir / plugin).symlink_to(self.node.cni_plugins / plugin)
        self.write_primary()
        # The node's uplink: the service range must be routable before kube-proxy's DNAT can take it.
        subprocess.run(["ip", "-n", self.plane.netns, "route", "replace", "default", "dev", "node0"], check=True,
                       capture_output=True)
        self._make_cgroup_root()
        self.containerd.start()
        self.containerd.import_image(images.pause_archive(), images.PAUSE)
        self.containerd.import_image(images.standins_archive(), images.STANDINS)
        self.import_project()
        self._spawn("kube-proxy", [components.binary("kube-proxy"), f"--config={self._kube_proxy_config()}", "--v=1"])
        self._spawn("kubelet", [components.binary("kubelet"), f"--config={self._kubelet_config()}",
                                f"--kubeconfig={self.plane.pki.kubeconfig(f'kubelet-{NODE_NAME}')}",
                                f"--hostname-override={NODE_NAME}", f"--node-ip={NODE_IP}", "--v=1"])
        self.wait_ready()

    def close(self) -> None:
        for name in ("kubelet", "kube-proxy"):  # the kubelet first: it would restart what containerd stops
            process = self.processes.get(name)
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.containerd.close()
        for name, value in self.sysctls.items():
            _write_sysctl(name, value)
        self.node.close()

    def _record(self) -> None:
        """What sweep() needs should this run be killed before close()."""
        (self.dir / RECORD).write_text(json.dumps({
            "owner": [os.getpid(), process_start(os.getpid())], "cgroup_parent": self.containerd.cgroup_parent,
            "sysctls": self.sysctls}))

    def _make_cgroup_root(self) -> None:
        """The kubelet's cgroupRoot in every v1 hierarchy (it refuses to start without it); cpuset's with
        its parent's cpus and mems, which a new cpuset cgroup does not inherit."""
        for hierarchy in CGROUP_ROOT.iterdir():
            if not (hierarchy / "cgroup.procs").exists():
                continue
            cgroup = hierarchy / self.containerd.cgroup_parent.lstrip("/")
            cgroup.mkdir(exist_ok=True)
            for name in ("cpuset.cpus", "cpuset.mems"):
                if (hierarchy / name).exists():
                    (cgroup / name).write_text((hierarchy / name).read_text())

    def _spawn(self, name: str, argv: list[str]) -> None:
        """argv in the node's network namespace and containerd's mount namespace, killed with this process."""
        assert self.containerd.process is not None
        mount_ns = f"/proc/{self.containerd.process.pid}/ns/mnt"
        with open(self.dir / f"{name}.log", "wb") as log:
            process = subprocess.Popen(["setpriv", "--pdeathsig", "KILL", "--", "nsenter", f"--mount={mount_ns}",
                                        f"--net=/run/netns/{self.plane.netns}", "--", *argv],
                                       stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.dir,
                                       env={"PATH": PATH}, start_new_session=True)
        self.processes[name] = process

    # -- configuration ------------------------------------------------------------------------------
    def _kubelet_config(self) -> Path:
        pki = self.plane.pki
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "cgroupDriver": "cgroupfs", "cgroupRoot": self.containerd.cgroup_parent, "failCgroupV1": False,
            "failSwapOn": False, "containerRuntimeEndpoint": f"unix://{self.containerd.socket}",
            "authentication": {"x509": {"clientCAFile": str(pki.ca)}, "webhook": {"enabled": True},
                               "anonymous": {"enabled": False}},
            "authorization": {"mode": "Webhook"},
            "registerWithTaints": [{**STARTUP_TAINT, "value": "true"}],
            # This machine's disk is not the node's to watch: no eviction, no image garbage collection.
            "evictionHard": {}, "imageGCHighThresholdPercent": 100, "localStorageCapacityIsolation": False,
        }
        path = self.dir / "kubelet.json"
        path.write_text(json.dumps(config))
        return path

    def _kube_proxy_config(self) -> Path:
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self._kube_proxy_kubeconfig())},
            "hostnameOverride": NODE_NAME, "mode": "nftables", "clusterCIDR": SUBNET,
            "healthzBindAddress": "127.0.0.1:10256", "metricsBindAddress": "127.0.0.1:10249",
            # Zero leaves the kernel's conntrack settings alone (nf_conntrack_max is global).
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        }
        path = self.dir / "kube-proxy.json"
        path.write_text(json.dumps(config))
        return path

    def _kube_proxy_kubeconfig(self) -> Path:
        """kube-proxy's credentials as kubeadm gives them: a service account bound to system:node-proxier."""
        for args in (["-n", "kube-system", "create", "serviceaccount", "kube-proxy"],
                     ["create", "clusterrolebinding", "mgw-test:kube-proxy", "--clusterrole=system:node-proxier",
                      "--serviceaccount=kube-system:kube-proxy"]):
            _checked(self.plane.kubectl(*args))
        token = _checked(self.plane.kubectl("-n", "kube-system", "create", "token", "kube-proxy",
                                            "--duration=24h")).stdout.strip()
        doc = json.loads(self.plane.pki.kubeconfig("token").read_text())
        doc["users"][0]["user"] = {"token": token}
        path = self.dir / "kube-proxy.kubeconfig"
        path.write_text(json.dumps(doc))
        return path

    def write_primary(self) -> None:
        """What the primary CNI's agent does when it starts or is upgraded: (re)write its conflist, which
        takes out an entry another agent chained into it. Like flannel's: bridge, its pods' default route
        through the node (the Service range is reached there), and portmap for hostPorts."""
        bridge = {**self.node.bridge_entry(), "isDefaultGateway": True}
        portmap = {"type": "portmap", "capabilities": {"portMappings": True}}
        self.primary_text = json.dumps({"cniVersion": self.release.cni_version, "name": "cbr0",
                                        "plugins": [bridge, portmap]}, indent=2)
        self.primary = self.node.conf_dir / PRIMARY
        tmp = self.primary.with_suffix(".tmp")
        tmp.write_text(self.primary_text)
        tmp.replace(self.primary)

    # -- images -------------------------------------------------------------------------------------
    def import_project(self, version: str = "0.1.0") -> None:
        """The project's image under the name the base DaemonSet gives it (image(version))."""
        local = images.project_image(version)
        self.containerd.import_image(images.project_archive(version), local)
        name = HUB + image(version)
        done = subprocess.run([self.release.ctr, "-n", "k8s.io", "--address", str(self.containerd.socket), "images",
                               "tag", "--force", local, name], capture_output=True, text=True, check=False)
        if done.returncode:
            raise RuntimeError(f"ctr images tag {local} {name}: {done.stderr.strip()}")
        deadline = time.monotonic() + 30
        while not any(name in image["repo_tags"] for image in self.containerd.runtime.list_images()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"containerd's CRI does not list {name}")
            time.sleep(0.05)

    # -- state --------------------------------------------------------------------------------------
    def wait_ready(self) -> None:
        """Until the kubelet has registered the Node and reports it Ready (its runtime and CNI are), and the
        node lifecycle controller has lifted node.kubernetes.io/not-ready: the start-up taint is the only one
        left, as on a node joining a running cluster. kubectl wait cannot wait for a list to shrink (its
        jsonpath takes one primitive value), so the taints are read until then."""
        for condition in ("create", "condition=Ready"):
            done = self.plane.kubectl("wait", f"--for={condition}", f"node/{NODE_NAME}",
                                      f"--timeout={START_TIMEOUT:.0f}s", timeout=START_TIMEOUT + 10)
            if done.returncode:
                raise RuntimeError(f"node {NODE_NAME} not {condition}: {done.stderr.strip()}\n"
                                   f"kubelet:\n{self.log_tail('kubelet')}")
        deadline = time.monotonic() + START_TIMEOUT
        while (taints := self.taints()) != [STARTUP_TAINT["key"]]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {NODE_NAME} still has the taints {taints}")
            time.sleep(0.2)

    def taints(self) -> list[str]:
        """The keys of the node's taints."""
        return _checked(self.plane.kubectl("get", "node", NODE_NAME, "-o",
                                           "jsonpath={.spec.taints[*].key}")).stdout.split()

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def image(version: str = "0.1.0") -> str:
    """The project's image as the base DaemonSet names it: no registry, the version as its tag."""
    return f"microgateway-cni:{version}"


def _checked(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    if done.returncode:
        raise RuntimeError(f"{' '.join(map(str, done.args))}: {done.stderr.strip()}")
    return done


def _sysctl(name: str) -> str:
    return (Path("/proc/sys") / name).read_text().strip()


def _write_sysctl(name: str, value: str) -> None:
    path = Path("/proc/sys") / name
    if path.read_text().strip() != value:
        path.write_text(value)


def sweep() -> None:
    """Remove what earlier workers whose test process is gone left behind: their processes (those whose
    command line names that run's directory: containerd, its shims, the kubelet, kube-proxy), every process
    in their cgroups, the cgroups and their files; and write back the sysctls they found."""
    for record in Path(tempfile.gettempdir()).glob(f"mgwt-*/{RECORD}"):
        stale = record.parent
        try:
            doc: dict[str, Any] = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        pid, started = doc["owner"]
        if process_start(pid) == started:
            continue  # its run is still going
        cgroups = _cgroups(doc["cgroup_parent"])
        pids = {int(p) for cgroup in cgroups for p in _read(cgroup / "cgroup.procs").split()}
        pids.update(int(proc.name) for proc in Path("/proc").iterdir()
                    if proc.name.isdigit() and str(stale).encode() in _read_bytes(proc / "cmdline"))
        for victim in pids:
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + 10
        while any(alive(victim) for victim in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        for cgroup in cgroups:
            with contextlib.suppress(OSError):  # a process that outlived SIGKILL: the cgroup stays, the run goes on
                cgroup.rmdir()
        for name, value in doc["sysctls"].items():
            _write_sysctl(name, value)
        subprocess.run(["rm", "-rf", "--one-file-system", str(stale)], check=False, capture_output=True)


def _cgroups(parent: str) -> list[Path]:
    """parent and everything below it in every hierarchy, deepest first."""
    found = []
    for hierarchy in CGROUP_ROOT.iterdir():
        top = hierarchy / parent.lstrip("/")
        if top.is_dir():
            found += [Path(path) for path, _dirs, _files in os.walk(top)]
    return sorted(found, key=lambda path: len(path.parts), reverse=True)


def _read(path: Path) -> str:
    return _read_bytes(path).decode(errors="replace")


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""
