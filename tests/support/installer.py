"""The installer on a simulated node: a temporary host root and the daemon run as a real process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from daemonset.settings import Settings, from_env
from tests.support.node import Node

INSTALLER = os.path.join(os.path.dirname(sys.executable), "microgateway-cni-installer")
PLUGIN = os.path.join(os.path.dirname(sys.executable), "microgateway-cni")


class Host:
    """A temporary host root: CNI dirs and a projected service-account dir with a ..data link."""

    def __init__(self, root: Path, token: str, ca: bytes, net_dir: Path | None = None,
                 bin_dir: Path | None = None, log_file: Path | None = None) -> None:
        self.log_file = log_file or root / "microgateway-cni.log"
        self.net_dir = net_dir or root / "etc" / "cni" / "net.d"
        self.bin_dir = bin_dir or root / "opt" / "cni" / "bin"
        self.sa = root / "serviceaccount"
        for d in (self.net_dir, self.bin_dir, self.sa):
            d.mkdir(parents=True, exist_ok=True)
        self.ca = ca
        self.rotate(token)
        for name in ("token", "ca.crt"):
            (self.sa / name).symlink_to(Path("..data") / name)

    @classmethod
    def for_node(cls, node: Node) -> Host:
        """The test node's own host root: its CNI dirs, API token, CA and plugin log."""
        return cls(node.dir / "host", node.token, node.ca_pem, net_dir=node.conf_dir, bin_dir=node.bin_dir,
                   log_file=node.log_file)

    def rotate(self, token: str) -> None:
        """What the kubelet does for a projected volume: new timestamped dir, atomic ..data swap."""
        data = self.sa / f"..{time.time_ns()}"
        data.mkdir()
        (data / "token").write_text(token)
        (data / "ca.crt").write_bytes(self.ca)
        link = self.sa / "..data_tmp"
        link.symlink_to(data.name)
        os.replace(link, self.sa / "..data")

    def env(self, **extra: str) -> dict[str, str]:
        return {"PATH": os.environ["PATH"], "MGW_CNI_NET_DIR": str(self.net_dir), "MGW_CNI_BIN_DIR": str(self.bin_dir),
                "MGW_HOST_CNI_NET_DIR": str(self.net_dir), "MGW_PLUGIN_BINARY": PLUGIN,
                "MGW_SERVICE_ACCOUNT_DIR": str(self.sa), "KUBERNETES_SERVICE_HOST": "127.0.0.1",
                "KUBERNETES_SERVICE_PORT": "6443", "NODE_NAME": "node-1", "POD_NAMESPACE": "kube-system",
                "MGW_LISTEN_PORT": "8000", "MGW_LOG_LEVEL": "debug",
                "MGW_LOG_FILE_PATH": str(self.log_file), **extra}

    def settings(self, **extra: str) -> Settings:
        return from_env(self.env(**extra))

    def conf(self, name: str) -> dict:
        return json.loads((self.net_dir / name).read_text())


class Daemon:
    def __init__(self, node: Node, host: Host, installer: str = INSTALLER, **extra: str) -> None:
        self.node = node
        self.installer = installer
        self.out = open(node.dir / "installer.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(["ip", "netns", "exec", node.netns, installer, "run"], env=host.env(**extra),
                                     stdout=self.out, stderr=subprocess.STDOUT)
        node.processes.append(self.proc)

    def ready(self) -> bool:
        done = subprocess.run(["ip", "netns", "exec", self.node.netns, self.installer, "probe", "--port", "8000"],
                              capture_output=True)
        return done.returncode == 0

    def metrics(self, check: bool = True) -> str:
        """/metrics as the installer serves it; with check=False "" while it does not answer (yet)."""
        done = self.node.exec(self.node.netns, [sys.executable, "-c", "import urllib.request;print(urllib.request."
                                                "urlopen('http://127.0.0.1:8000/metrics').read().decode())"],
                              check=check)
        return done.stdout if done.returncode == 0 else ""

    def sample(self, name: str) -> float:
        """One sample of /metrics, e.g. 'microgateway_cni_installs_total{result="blocked"}'; 0 while not exported."""
        for line in self.metrics().splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
        return 0.0

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=20)
        self.out.close()
        return code

    def log(self) -> list[dict]:
        return [json.loads(line) for line in (self.node.dir / "installer.log").read_text().splitlines()
                if line.startswith("{")]
