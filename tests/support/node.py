"""A Kubernetes node built out of network namespaces, driven through libcni like containerd does.

Everything lives in namespaces named with a per-run prefix and in one temporary directory; close()
removes all of it (processes, namespaces and their links, files), also after a failure.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cni.contract import INJECT
from cni.netfilter.backend import NAMES as BACKENDS
from tests.support import bundles
from tests.support.lifetime import Started

ROOT = Path(__file__).resolve().parents[2]
DRIVER = ROOT / "tests" / "support" / "libcni-driver" / "libcni-driver"
VENV_BIN = Path(sys.executable).parent
SYSTEM_PLUGINS = Path("/usr/lib/cni")
API_PORT = 6443
API_HOST_NAME = "kube-apiserver.mgwt.test"  # in the stand-in's certificate; resolvable only where a test maps it
APP_UID, ENGINE_UID, ISTIO_UID, VALIDATOR_UID = 1000, 1001, 1337, 1002
SUBNET4, GATEWAY4 = "10.88.0.0/24", "10.88.0.1"
SUBNET6, GATEWAY6 = "fd00:88::/64", "fd00:88::1"
NFT_FAMILY = {4: "ip", 6: "ip6"}
# Run by root inside the private mount namespace `ip netns exec` makes for one command, before it drops
# to another uid: a tmpfs over the top-most directory that others cannot enter (/root is 0700), with
# the checkout and the interpreter's installation bound back at their own paths, so every path under
# ROOT - the virtualenv's interpreter and console scripts, PYTHONPATH, dist/ - works for that uid, and
# nothing changes outside that one command.
REVEAL = """set -e
hidden=$1 stash=$2 paths=$3
shift 3
IFS=:
i=0
for path in $paths; do i=$((i + 1)); mkdir -p "$stash/$i"; mount --bind "$path" "$stash/$i"; done
mount -t tmpfs -o mode=0755,size=64k mgw-reveal "$hidden"
i=0
for path in $paths; do i=$((i + 1)); mkdir -p "$path"; mount --bind "$stash/$i" "$path"; done
unset IFS
exec "$@"
"""


def hidden_ancestor(path: Path) -> Path | None:
    """The top-most directory above path that other users cannot enter, if any."""
    for parent in reversed(path.parents):
        if not parent.stat().st_mode & 0o001:
            return parent
    return None


HIDDEN = hidden_ancestor(ROOT)
# What REVEAL binds back under HIDDEN: the checkout, and the interpreter the virtualenv points at.
REVEALED = ":".join(str(path) for path in (ROOT, Path(os.path.realpath(sys.executable)).parents[1])
                    if HIDDEN is not None and HIDDEN in path.parents)


def executable(name: str) -> Path:
    """The console script, or with MGW_TEST_BINARIES=1 the built bundle (tests/support/bundles.py)."""
    if bundles.selected():
        bundles.ensure_built()
        return bundles.binary(name)
    return VENV_BIN / name


def run(cmd: list[str], check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, text=True, capture_output=True, **kwargs)


def pod_fixture(name: str, namespace: str = "default", protected: bool = True,
                annotations: dict[str, str] | None = None, node: str = "node-1",
                uid: str | None = None) -> dict[str, Any]:
    labels = {INJECT: "true"} if protected else {}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "uid": uid or str(uuid.uuid4()),
                         "labels": labels, "annotations": dict(annotations or {})},
            "spec": {"nodeName": node, "containers": [{"name": "app", "image": "registry.example/app:1"}]},
            "status": {"phase": "Pending"}}


def daemonset_fixture(deleted: bool = True) -> dict[str, Any]:
    """The installer's own DaemonSet: being deleted, its SIGTERM uninstalls; else SIGTERM is a restart."""
    deleting = {"deletionTimestamp": "2026-11-22T00:00:00Z"} if deleted else {}
    return {"kube-system/microgateway-cni": {
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "microgateway-cni", "namespace": "kube-system", "uid": "ds-uid", **deleting},
        "spec": {"selector": {"matchLabels": {"app": "microgateway-cni"}},
                 "template": {"metadata": {"labels": {"app": "microgateway-cni"}},
                              "spec": {"containers": [{"name": "installer", "image": "microgateway-cni"}]}}}}}


STARTUP_TAINT = {"key": "microgateway-cni.airlock.com/not-ready", "effect": "NoSchedule"}
INSTALLER_USER = "system:serviceaccount:kube-system:microgateway-cni"


def node_fixture(name: str = "node-1", taints: list[dict[str, Any]] | None = None,
                 uid: str = "node-1-uid") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "uid": uid, "resourceVersion": "100",
                         "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
            "spec": {"podCIDR": "10.88.0.0/24", "podCIDRs": ["10.88.0.0/24"], **({"taints": taints} if taints else {})},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}


def tolerates(tolerations: list[dict[str, Any]], taint: dict[str, Any]) -> bool:
    """The scheduler's match of a pod's tolerations against one taint (core/v1 Toleration.ToleratesTaint)."""
    for t in tolerations:
        if t.get("effect") and t["effect"] != taint["effect"]:
            continue
        if t.get("operator", "Equal") == "Exists":
            if not t.get("key") or t["key"] == taint["key"]:
                return True
        elif t.get("key") == taint["key"] and t.get("value", "") == taint.get("value", ""):
            return True
    return False


@dataclass
class Pod:
    name: str
    namespace: str
    netns: str
    container_id: str
    result: dict[str, Any] = field(default_factory=dict)
    add_output: subprocess.CompletedProcess[str] | None = None  # libcni's ADD, failed or not

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.netns}"

    def ip(self, family: int = 4) -> str:
        for ip in self.result.get("ips", []):
            address = ip["address"].split("/")[0]
            if (":" in address) == (family == 6):
                return address
        raise LookupError(f"pod {self.name} has no IPv{family} address")


class Node(Started):
    """One simulated node: node netns, bridge network, kube-API stand-in, pods."""

    def __init__(self, families: tuple[int, ...] = (4,), backend: str = BACKENDS[0],
                 cni_plugins: Path = SYSTEM_PLUGINS) -> None:
        """cni_plugins: where the node's bridge, host-local, loopback and portmap come from."""
        self.id = uuid.uuid4().hex[:6]
        self.cni_plugins = cni_plugins
        self.families = families
        self.backend = backend
        self.netns = f"mgwt-{self.id}-node"
        self.dir = Path(tempfile.mkdtemp(prefix=f"mgwt-{self.id}-"))
        self.bin_dir = self.dir / "bin"
        self.conf_dir = self.dir / "net.d"
        self.token = uuid.uuid4().hex
        self.fixtures = self.dir / "pods.json"
        self.journal = self.dir / "api-journal.jsonl"
        self.kubeconfig = self.conf_dir / "microgateway-cni-kubeconfig"
        self.log_file = self.dir / "microgateway-cni.log"
        self.pods: dict[str, Pod] = {}
        self.processes: list[subprocess.Popen[str]] = []
        self.namespaces: list[str] = []
        self._seq = itertools.count(1)
        self.api: subprocess.Popen[str] | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        for sub in (self.bin_dir, self.conf_dir, self.dir / "cache", self.dir / "ipam", self.dir / "checkout"):
            sub.mkdir(parents=True)
        for plugin in ("bridge", "host-local", "loopback", "portmap"):
            (self.bin_dir / plugin).symlink_to(self.cni_plugins / plugin)
        self.install_plugin(executable("microgateway-cni"))
        self.add_netns(self.netns)
        self.write_pods({})
        self.write_nodes({"node-1": node_fixture()})
        self.write_fixture("user", {"username": INSTALLER_USER})
        self._start_api()

    def close(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for ns in reversed(self.namespaces):
            run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    def install_plugin(self, binary: Path) -> None:
        target = self.bin_dir / "microgateway-cni"
        if target.exists() or target.is_symlink():
            target.unlink()
        target.symlink_to(binary)

    def add_netns(self, name: str) -> None:
        run(["ip", "netns", "add", name])
        self.namespaces.append(name)
        self.exec(name, ["ip", "link", "set", "lo", "up"])
        # No duplicate address detection: IPv6 addresses are usable at once.
        for key in ("net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"):
            self.exec(name, ["sysctl", "-qw", f"{key}=0"], check=False)

    # -- the kube-API stand-in -----------------------------------------------------------------
    def _start_api(self) -> None:
        cert, key = self.dir / "api.crt", self.dir / "api.key"
        run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-days", "1", "-subj", "/CN=kube-apiserver", "-addext", f"subjectAltName=IP:127.0.0.1,DNS:{API_HOST_NAME}",
             "-keyout", str(key), "-out", str(cert)])
        self.ca_pem = cert.read_bytes()
        self.api = self.spawn(self.netns, [sys.executable, "-m", "tests.support.kubeapi", "--port", str(API_PORT),
                                           "--cert", str(cert), "--key", str(key), "--token", self.token,
                                           "--fixtures", str(self.fixtures), "--journal", str(self.journal)])
        self.write_kubeconfig(f"https://127.0.0.1:{API_PORT}")

    def client_certificate(self) -> dict[str, str]:
        """A client certificate signed by the stand-in's CA, as kubeconfig user data."""
        cert, key, csr = self.dir / "client.crt", self.dir / "client.key", self.dir / "client.csr"
        run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-subj", "/CN=system:serviceaccount:kube-system:microgateway-cni", "-keyout", str(key), "-out", str(csr)])
        run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(self.dir / "api.crt"), "-CAkey",
             str(self.dir / "api.key"), "-CAcreateserial", "-days", "1", "-out", str(cert)])
        return {"client-certificate-data": base64.b64encode(cert.read_bytes()).decode(),
                "client-key-data": base64.b64encode(key.read_bytes()).decode()}

    def write_kubeconfig(self, server: str, user: dict[str, str] | None = None) -> None:
        doc = {"apiVersion": "v1", "kind": "Config", "current-context": "mgw",
               "clusters": [{"name": "local", "cluster": {
                   "server": server, "certificate-authority-data": base64.b64encode(self.ca_pem).decode()}}],
               "users": [{"name": "cni", "user": user or {"token": self.token}}],
               "contexts": [{"name": "mgw", "context": {"cluster": "local", "user": "cni"}}]}
        self.kubeconfig.write_text(json.dumps(doc))

    def stop_api(self) -> None:
        assert self.api is not None
        self.api.kill()
        self.api.wait()

    def write_pods(self, pods: dict[str, dict[str, Any]]) -> None:
        self._write_fixture("pods", pods)

    def write_daemonsets(self, daemonsets: dict[str, dict[str, Any]]) -> None:
        self._write_fixture("daemonsets", daemonsets)

    def write_nodes(self, nodes: dict[str, dict[str, Any]]) -> None:
        self._write_fixture("nodes", nodes)

    def write_fixture(self, section: str, value: Any) -> None:
        """Any other stand-in section: "user", "forbidden", "races", "tokens" (tests/support/kubeapi.py)."""
        self._write_fixture(section, value)

    def api_node(self, name: str = "node-1") -> dict[str, Any]:
        return json.loads(self.fixtures.read_text())["nodes"][name]

    def _write_fixture(self, section: str, value: Any) -> None:
        doc = json.loads(self.fixtures.read_text()) if self.fixtures.exists() else {}
        doc[section] = value
        tmp = self.fixtures.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(self.fixtures)

    def add_pod_fixture(self, pod: dict[str, Any]) -> None:
        pods = json.loads(self.fixtures.read_text())["pods"]
        pods[f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"] = pod
        self.write_pods(pods)

    def journal_entries(self) -> list[dict[str, Any]]:
        if not self.journal.exists():
            return []
        return [json.loads(line) for line in self.journal.read_text().splitlines()]

    # -- CNI -------------------------------------------------------------------------------------
    def plugin_entry(self, **overrides: Any) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "microgateway-cni", "logLevel": "debug", "logFilePath": str(self.log_file),
                                 "netfilterBackend": self.backend,
                                 "kubernetes": {"kubeconfig": str(self.kubeconfig),
                                                "excludeNamespaces": ["kube-system"], "apiDeadlineSeconds": 2}}
        entry.update(overrides)
        return entry

    def bridge_entry(self) -> dict[str, Any]:
        ranges = []
        if 4 in self.families:
            ranges.append([{"subnet": SUBNET4, "gateway": GATEWAY4}])
        if 6 in self.families:
            ranges.append([{"subnet": SUBNET6, "gateway": GATEWAY6}])
        return {"type": "bridge", "bridge": "mgw0", "isGateway": True, "ipMasq": False,
                "ipam": {"type": "host-local", "ranges": ranges, "dataDir": str(self.dir / "ipam")}}

    def write_conflist(self, cni_version: str = "1.0.0", chained: bool = True, name: str = "10-mgw.conflist",
                       plugin: dict[str, Any] | None = None, capabilities: bool = False) -> Path:
        plugins = [self.bridge_entry()]
        if chained:
            entry = plugin or self.plugin_entry()
            if capabilities:
                entry["capabilities"] = {"io.kubernetes.cri.pod-annotations": True}
            plugins.append(entry)
        path = self.conf_dir / name
        path.write_text(json.dumps({"cniVersion": cni_version, "name": "mgw-test", "plugins": plugins}))
        return path

    def cni(self, op: str, pod: Pod, conflist: Path, annotations: dict[str, str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        args = (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={pod.namespace};K8S_POD_NAME={pod.name};"
                f"K8S_POD_INFRA_CONTAINER_ID={pod.container_id};K8S_POD_UID={uuid.uuid4()}")
        cmd = [str(DRIVER), "--conflist", str(conflist), "--netns", pod.netns_path, "--id", pod.container_id,
               "--args", args, "--bin-dir", str(self.bin_dir), "--cache-dir", str(self.dir / "cache")]
        if annotations is not None:
            cmd += ["--annotations", json.dumps(annotations)]
        return self.exec(self.netns, [*cmd, op], check=check)

    def new_pod(self, name: str, conflist: Path, namespace: str = "default",
                annotations: dict[str, str] | None = None, check: bool = True,
                before_add: Callable[[Pod], None] | None = None) -> Pod:
        """Create a sandbox netns and run CNI ADD for it through libcni."""
        netns = f"mgwt-{self.id}-p{next(self._seq)}"
        self.add_netns(netns)
        pod = Pod(name=name, namespace=namespace, netns=netns, container_id=uuid.uuid4().hex)
        self.pods[name] = pod
        if before_add:
            before_add(pod)
        done = self.cni("add", pod, conflist, annotations, check=check)
        if done.returncode == 0:
            pod.result = json.loads(done.stdout)
        pod.add_output = done
        return pod

    def remove_netns(self, pod: Pod) -> None:
        run(["ip", "netns", "del", pod.netns])
        self.namespaces.remove(pod.netns)

    # -- processes -------------------------------------------------------------------------------
    def exec(self, netns: str, cmd: list[str], check: bool = True, uid: int | None = None,
             timeout: float = 60, input: str | None = None) -> subprocess.CompletedProcess[str]:
        done = run(self._wrap(netns, cmd, uid), check=False, cwd=ROOT, timeout=timeout, input=input)
        if check and done.returncode != 0:
            raise AssertionError(f"{cmd} in {netns} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done

    def reveal(self) -> list[str]:
        """A prefix (run as root, inside `ip netns exec`) after which another uid can reach the checkout,
        also under a directory others cannot enter (REVEAL); empty when nothing hides it."""
        if HIDDEN is None:
            return []
        return ["sh", "-c", REVEAL, "reveal", str(HIDDEN), str(self.dir / "checkout"), REVEALED]

    def _wrap(self, netns: str, cmd: list[str], uid: int | None) -> list[str]:
        prefix = ["ip", "netns", "exec", netns]
        if uid is None:
            return prefix + cmd
        return [*prefix, *self.reveal(), "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", *cmd]

    def spawn(self, netns: str, cmd: list[str], uid: int | None = None) -> subprocess.Popen[str]:
        """Start a long-running process in netns and wait until it prints 'ready'."""
        proc = subprocess.Popen(self._wrap(netns, cmd, uid), cwd=ROOT, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        self.processes.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            proc.kill()
            raise AssertionError(f"{cmd} did not start: {line}{proc.stderr.read() if proc.stderr else ''}")
        return proc

    def start_workloads(self, pod: Pod, app_ports: list[int], istio: bool = False,
                        families: tuple[int, ...] | None = None) -> None:
        """The application, an Engine stand-in forwarding to it, and optionally an Istio-proxy stand-in."""
        fams = ",".join(str(f) for f in (families or self.families))
        ports = ",".join(str(p) for p in app_ports)
        self.spawn(pod.netns, [sys.executable, "-m", "tests.support.programs.standins", "app", "--name", pod.name,
                               "--ports", ports, "--families", fams], uid=APP_UID)
        self.spawn(pod.netns, [sys.executable, "-m", "tests.support.programs.standins", "engine", "--name", pod.name,
                               "--port", "13378", "--forward", ports, "--families", fams], uid=ENGINE_UID)
        if istio:
            if 6 in (families or self.families):
                self.exec(pod.netns, ["ip", "-6", "addr", "add", "::6/128", "dev", "lo"])
            self.spawn(pod.netns, [sys.executable, "-m", "tests.support.programs.standins", "istio", "--name", pod.name,
                                   "--port", "15006", "--families", fams], uid=ISTIO_UID)

    def validate(self, pod: Pod, *args: str, validator: str | None = None) -> tuple[int, str, str]:
        """Run the validator in the pod as an unprivileged uid: (exit code, stdout, termination message)."""
        validator = validator or str(executable("microgateway-network-validator"))
        termination = self.dir / f"termination-{pod.name}"
        termination.write_text("")
        os.chown(termination, VALIDATOR_UID, VALIDATOR_UID)
        os.chmod(self.dir, 0o755)
        done = self.exec(pod.netns, [validator, "--termination-log", str(termination), *args],
                         uid=VALIDATOR_UID, check=False)
        return done.returncode, done.stdout, termination.read_text()

    def connect(self, from_netns: str, targets: list[str], uid: int | None = None) -> dict[str, str]:
        done = self.exec(from_netns, [sys.executable, "-m", "tests.support.programs.client", *targets], uid=uid)
        return json.loads(done.stdout)

    def nat_rules(self, pod: Pod, family: int = 4, backend: str = "legacy") -> str:
        tool = ("iptables" if family == 4 else "ip6tables") + f"-{backend}-save"
        return self.exec(pod.netns, [tool, "-t", "nat"]).stdout

    def legacy_tables(self, pod: Pod, family: int = 4) -> list[str]:
        """The legacy x_tables tables that exist in the pod netns (reading them would create nat)."""
        names = "/proc/net/ip_tables_names" if family == 4 else "/proc/net/ip6_tables_names"
        return self.exec(pod.netns, ["cat", names], check=False).stdout.split()

    def nft_table(self, pod: Pod, family: int = 4) -> str:
        """`nft list table ip|ip6 microgateway` without handles; empty when the table does not exist."""
        done = self.exec(pod.netns, ["nft", "list", "table", NFT_FAMILY[family], "microgateway"], check=False)
        return done.stdout if done.returncode == 0 else ""

    def mgw_rules(self, pod: Pod, family: int = 4) -> list[str]:
        """Our rules in either backend: MGW_ lines of the legacy nat table (only where it already
        exists) and the rule lines of our nft table."""
        legacy = []
        if "nat" in self.legacy_tables(pod, family):
            legacy = [line for line in self.nat_rules(pod, family).splitlines() if "MGW_" in line]
        nft = [line.strip() for line in self.nft_table(pod, family).splitlines()
               if line.startswith("\t\t") and not line.strip().startswith("type ")]
        return legacy + nft

def wait_for(predicate, timeout: float = 5.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
