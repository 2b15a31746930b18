"""A real Kubernetes control plane on this machine: etcd, kube-apiserver, kube-controller-manager, kube-scheduler.

All four run inside one network namespace of their own, the "node" namespace (loopback and a veth pair that
holds the node IP; both ends stay inside), so they listen on nothing the host or another run can reach.
Everything they read and write lives in one temporary directory: PKI, kubeconfigs, etcd's data, logs.
Each process is started with `setpriv --pdeathsig KILL` in a process group of its own: it dies with the
test process even after a `kill -9` of it, and close() kills the groups. A run that could not close leaves
its directory and namespace behind; the next start() removes them (sweep()).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support import components
from tests.support.cluster.pki import Pki
from tests.support.lifetime import Started
from tests.support.netns import in_netns

ROOT = Path(__file__).resolve().parents[3]
PREFIX = "mgwc-"
NODE_NAME = "node-a"
NODE_IP = "10.99.0.10"  # on a veth inside the node namespace; the API server advertises it
SERVICE_RANGE = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"  # the `kubernetes` Service's ClusterIP: the first of SERVICE_RANGE
API_PORT = 6443
ETCD_URL = "http://127.0.0.1:2379"
SERVER = f"https://127.0.0.1:{API_PORT}"
ISSUER = "https://kubernetes.default.svc.cluster.local"
START_TIMEOUT = 120.0  # two shared cores: the API server alone has taken 20 s to answer /readyz


class StartFailed(RuntimeError):
    """A component exited or did not become ready; the message carries the end of its log."""


class ControlPlane(Started):
    """The control plane of one test run; start() returns once the API server answers /readyz."""

    def __init__(self) -> None:
        self.id = uuid.uuid4().hex[:6]
        self.netns = f"{PREFIX}{self.id}"
        self.dir = Path(tempfile.gettempdir()) / self.netns
        self.pki = Pki(self.dir / "pki", NODE_NAME, NODE_IP, SERVICE_IP)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.timings: dict[str, float] = {}  # seconds from start() to etcd's and the API server's readiness
        self._netns_made = False

    @property
    def ca_pem(self) -> bytes:
        return self.pki.ca.read_bytes()

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        sweep()
        self.dir.mkdir(mode=0o700)
        (self.dir / "owner").write_text(f"{os.getpid()} {process_start(os.getpid())}")
        began = time.monotonic()
        self.pki.make(SERVER)
        self._make_netns()
        self._spawn("etcd", [components.binary("etcd"), "--name=node-a", f"--data-dir={self.dir / 'etcd'}",
                             f"--listen-client-urls={ETCD_URL}", f"--advertise-client-urls={ETCD_URL}",
                             "--listen-peer-urls=http://127.0.0.1:2380", "--log-level=warn"])
        self._spawn("kube-apiserver", self._apiserver_args())
        self.timings["etcd"] = self._wait_ready("etcd", f"{ETCD_URL}/health", began)
        self.timings["kube-apiserver"] = self._wait_ready("kube-apiserver", f"{SERVER}/readyz", began)
        self._spawn("kube-controller-manager", self._controller_manager_args())
        self._spawn("kube-scheduler", self._scheduler_args())

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if self._netns_made:
            subprocess.run(["ip", "netns", "del", self.netns], check=False, capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _make_netns(self) -> None:
        """lo up, and the node IP on one end of a veth pair whose both ends stay in the namespace."""
        subprocess.run(["ip", "netns", "add", self.netns], check=True, capture_output=True)
        self._netns_made = True
        (self.dir / "netns").write_text(self.netns)
        for command in (["link", "set", "lo", "up"], ["link", "add", "node0", "type", "veth", "peer", "name", "node0p"],
                        ["addr", "add", f"{NODE_IP}/24", "dev", "node0"], ["link", "set", "node0", "up"],
                        ["link", "set", "node0p", "up"]):
            subprocess.run(["ip", "-n", self.netns, *command], check=True, capture_output=True)

    def _apiserver_args(self) -> list[str]:
        pki = self.pki
        return [components.binary("kube-apiserver"), f"--etcd-servers={ETCD_URL}",
                "--bind-address=0.0.0.0", f"--secure-port={API_PORT}", f"--advertise-address={NODE_IP}",
                f"--tls-cert-file={pki.cert('apiserver')}", f"--tls-private-key-file={pki.key('apiserver')}",
                f"--client-ca-file={pki.ca}", "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction", "--allow-privileged=true",
                f"--service-account-issuer={ISSUER}", f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}", f"--service-cluster-ip-range={SERVICE_RANGE}",
                f"--kubelet-client-certificate={pki.cert('apiserver-kubelet-client')}",
                f"--kubelet-client-key={pki.key('apiserver-kubelet-client')}",
                # A node's hostname resolves nowhere here: logs, exec and ephemeral containers reach the
                # kubelet at its InternalIP.
                "--kubelet-preferred-address-types=InternalIP",
                f"--cert-dir={self.dir / 'apiserver'}", "--profiling=false"]

    def _controller_manager_args(self) -> list[str]:
        """All on-by-default controllers, each with its own service account; no node is ever marked unhealthy
        for want of a kubelet within a test run (node-startup-grace-period), so no taint of the node
        lifecycle controller lands on the tests' nodes."""
        kubeconfig = self.pki.kubeconfig("kube-controller-manager")
        return [components.binary("kube-controller-manager"), f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}",
                "--controllers=*", "--use-service-account-credentials=true", f"--root-ca-file={self.pki.ca}",
                f"--service-account-private-key-file={self.pki.sa_key}",
                f"--cluster-signing-cert-file={self.pki.ca}", f"--cluster-signing-key-file={self.pki.ca_key}",
                f"--service-cluster-ip-range={SERVICE_RANGE}", "--leader-elect=false", "--secure-port=0",
                "--node-startup-grace-period=1h", "--profiling=false"]

    def _scheduler_args(self) -> list[str]:
        config = self.dir / "kube-scheduler.json"
        config.write_text(json.dumps({
            "apiVersion": "kubescheduler.config.k8s.io/v1", "kind": "KubeSchedulerConfiguration",
            "clientConnection": {"kubeconfig": str(self.pki.kubeconfig("kube-scheduler"))},
            "leaderElection": {"leaderElect": False}}))
        return [components.binary("kube-scheduler"), f"--config={config}", "--secure-port=0"]

    def _spawn(self, name: str, argv: list[str]) -> None:
        """argv in the namespace, killed when this process dies, in a process group of its own."""
        with open(self.dir / f"{name}.log", "wb") as log:
            process = subprocess.Popen(["ip", "netns", "exec", self.netns, "setpriv", "--pdeathsig", "KILL", "--",
                                        *argv], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       cwd=self.dir, start_new_session=True)
        self.processes[name] = process
        with open(self.dir / "pids", "a") as pids:
            pids.write(f"{process.pid}\n")

    def _wait_ready(self, name: str, url: str, began: float) -> float:
        """Seconds from `began` until url answers 200; StartFailed when the process exits or time runs out."""
        context = ssl.create_default_context(cafile=str(self.pki.ca))
        context.load_cert_chain(self.pki.cert("admin"), self.pki.key("admin"))

        def ready() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=2, context=context) as response:
                    return bool(response.status == 200)
            except (OSError, urllib.error.URLError):
                return False

        deadline = began + START_TIMEOUT
        while time.monotonic() < deadline:
            for other, process in self.processes.items():
                if process.poll() is not None:
                    raise StartFailed(f"{other} exited {process.returncode}:\n{self.log_tail(other)}")
            if in_netns(self.netns, ready):
                return time.monotonic() - began
            time.sleep(0.1)
        raise StartFailed(f"{name} not ready within {START_TIMEOUT:.0f}s:\n{self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 30) -> str:
        return "\n".join((self.dir / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])

    # -- as a user -----------------------------------------------------------------------------------
    def kubectl(self, *args: str, as_token: str | None = None, input: str | None = None,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """kubectl inside the namespace, from the checkout (so -k takes its paths), as the admin or, with
        as_token, as whoever that bearer token names; its caches stay in the run's directory."""
        config = self.pki.kubeconfig("token" if as_token else "admin")
        user = ["--token", as_token] if as_token else []
        return subprocess.run(["ip", "netns", "exec", self.netns, components.binary("kubectl"),
                               f"--kubeconfig={config}", f"--cache-dir={self.dir / 'kubectl-cache'}", *user, *args],
                              cwd=ROOT, input=input, capture_output=True, text=True, timeout=timeout, check=False)

    def apply(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """`kubectl apply --server-side ARGS` as the admin; a refusal raises with kubectl's own message."""
        done = self.kubectl("apply", "--server-side", *args, input=input)
        if done.returncode:
            raise AssertionError(f"kubectl apply --server-side {' '.join(args)}: {done.stderr.strip()}")
        return done

    def json(self, *args: str) -> Any:
        """`kubectl get ARGS -o json` as the admin, decoded."""
        done = self.kubectl("get", *args, "-o", "json")
        if done.returncode:
            raise AssertionError(f"kubectl get {' '.join(args)}: {done.stderr.strip()}")
        return json.loads(done.stdout)

    def run(self, fn: Callable[[], Any], timeout: float = 60) -> Any:
        """fn run in-process inside the namespace, where the API server is https://127.0.0.1:6443."""
        return in_netns(self.netns, fn, timeout)


def process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot: with the pid, it names one process for good."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def sweep() -> None:
    """Remove what earlier runs whose test process is gone left behind: their processes (a pid counts only
    while its command line names that run's directory), namespace and directory."""
    for stale in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        try:
            pid, started = (stale / "owner").read_text().split()
        except (OSError, ValueError):
            continue
        if process_start(int(pid)) == started:
            continue  # its run is still going
        for line in (stale / "pids").read_text().split() if (stale / "pids").exists() else []:
            try:
                if str(stale).encode() in Path(f"/proc/{line}/cmdline").read_bytes():
                    os.kill(int(line), signal.SIGKILL)
            except (OSError, ValueError):
                continue  # gone already
        if (stale / "netns").exists():
            subprocess.run(["ip", "netns", "del", (stale / "netns").read_text()], check=False, capture_output=True)
        shutil.rmtree(stale, ignore_errors=True)
