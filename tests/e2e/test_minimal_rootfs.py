"""The binaries on a node root filesystem with neither Python nor iptables (debootstrap minbase).

libcni (the Go driver), bridge/host-local and the plugin bundle all run chroot'ed into an overlay of a
cached minbase tree; each command gets a private mount namespace, so no mount outlives it. Pod
workloads (the stand-ins) run in the pod netns as usual: they are the pod's processes, not the node's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import binary
from tests.integration.helpers import target
from tests.support.node import DRIVER, VALIDATOR_UID, Node, Pod, pod_fixture

pytestmark = pytest.mark.backends  # the bundle carries both backends' code: legacy's C libraries, nft's netlink
CACHE = Path(os.environ.get("MGW_ROOTFS_CACHE", "/var/cache/microgateway-cni-tests/minbase-bookworm"))


@pytest.fixture(scope="session")
def minbase() -> Path:
    """Debian bookworm minbase, built once and cached between runs."""
    if not (CACHE / ".complete").exists():
        shutil.rmtree(CACHE, ignore_errors=True)
        temp = CACHE.with_name(CACHE.name + ".tmp")
        shutil.rmtree(temp, ignore_errors=True)
        temp.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(temp), "http://deb.debian.org/debian"],
                       check=True, capture_output=True)
        (temp / ".complete").touch()
        temp.rename(CACHE)
    return CACHE


class Rootfs:
    def __init__(self, node: Node, lower: Path) -> None:
        self.node, self.lower = node, lower
        self.upper, self.work, self.merged = node.dir / "upper", node.dir / "work", node.dir / "rootfs"
        for d in (self.upper, self.work, self.merged):
            d.mkdir()
        for d in ("opt/cni/bin", "etc/cni/net.d", "var/lib/cni", "run/netns", "usr/local/bin", "opt/mgw"):
            (self.upper / d).mkdir(parents=True, exist_ok=True)
        for plugin in ("bridge", "host-local", "loopback"):
            shutil.copy(f"/usr/lib/cni/{plugin}", self.upper / "opt/cni/bin" / plugin)
        shutil.copy(DRIVER, self.upper / "usr/local/bin/libcni-driver")
        for name in ("microgateway-cni", "microgateway-network-validator"):
            shutil.copytree(binary(name).parent, self.upper / "opt/mgw" / name, symlinks=True)
        (self.upper / "opt/cni/bin/microgateway-cni").symlink_to("/opt/mgw/microgateway-cni/microgateway-cni")
        shutil.copy(node.kubeconfig, self.upper / "etc/cni/net.d/microgateway-cni-kubeconfig")
        os.chmod(self.merged, 0o755)

    def write_conflist(self) -> str:
        bridge = self.node.bridge_entry()
        bridge["ipam"]["dataDir"] = "/var/lib/cni/networks"
        entry = {"type": "microgateway-cni", "logLevel": "debug", "netfilterBackend": self.node.backend,
                 "kubernetes": {"kubeconfig": "/etc/cni/net.d/microgateway-cni-kubeconfig", "apiDeadlineSeconds": 2}}
        doc = {"cniVersion": "1.0.0", "name": "mgw-minbase", "plugins": [bridge, entry]}
        (self.upper / "etc/cni/net.d/10-mgw.conflist").write_text(json.dumps(doc))
        return "/etc/cni/net.d/10-mgw.conflist"

    def run(self, netns: str, argv: list[str], userspec: str = "") -> subprocess.CompletedProcess[str]:
        user = f"--userspec={userspec} " if userspec else ""
        script = (f"mount -t overlay overlay -o lowerdir={self.lower},upperdir={self.upper},workdir={self.work} "
                  f"{self.merged} && mount --rbind /run/netns {self.merged}/run/netns && "
                  f"mount -t proc proc {self.merged}/proc && mount --rbind /dev {self.merged}/dev && "
                  f'exec chroot {user}{self.merged} "$@"')
        return subprocess.run(["ip", "netns", "exec", netns, "unshare", "--mount", "--propagation", "private", "--",
                               "bash", "-c", script, "chroot", *argv], capture_output=True, text=True, timeout=60)

    def cni(self, op: str, pod: Pod, conflist: str) -> subprocess.CompletedProcess[str]:
        args = (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={pod.namespace};K8S_POD_NAME={pod.name};"
                f"K8S_POD_INFRA_CONTAINER_ID={pod.container_id}")
        return self.run(self.node.netns, ["/usr/local/bin/libcni-driver", "--conflist", conflist, "--netns",
                                          pod.netns_path, "--id", pod.container_id, "--args", args,
                                          "--bin-dir", "/opt/cni/bin", "--cache-dir", "/var/lib/cni/cache", op])


def test_protected_pod_on_a_node_without_python_or_iptables(binaries, minbase, node):
    rootfs = Rootfs(node, minbase)
    for missing in ("usr/bin/python3", "usr/sbin/iptables", "usr/sbin/iptables-legacy"):
        assert not (minbase / missing).exists()
    assert not list((minbase / "usr/lib/x86_64-linux-gnu").glob("libxtables*"))
    conflist = rootfs.write_conflist()
    node.add_pod_fixture(pod_fixture("web"))
    netns = f"mgwt-{node.id}-min"
    node._add_netns(netns)
    pod = Pod(name="web", namespace="default", netns=netns, container_id="c0ffee01")
    add = rootfs.cni("add", pod, conflist)
    assert add.returncode == 0, add.stderr
    pod.result = json.loads(add.stdout)
    verdict = rootfs.run(pod.netns, ["/opt/mgw/microgateway-network-validator/microgateway-network-validator",
                                     "--termination-log", "/dev/null"], userspec=f"{VALIDATOR_UID}:{VALIDATOR_UID}")
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr
    # diagnose (as root, like kubectl debug) reads the chains with the bundled python-iptables and netlink
    diagnose = rootfs.run(pod.netns, ["/opt/mgw/microgateway-network-validator/microgateway-network-validator",
                                      "diagnose", "--json"], userspec="0:0")
    assert diagnose.returncode == 0, diagnose.stdout + diagnose.stderr
    report = json.loads(diagnose.stdout)
    assert set(report["invariants"].values()) == {"ok"} and report["chains"]["4"]["rules"], report
    assert report["chains"]["4"]["backends"] == [node.backend], report
    node.start_workloads(pod, [8080])
    node.add_pod_fixture(pod_fixture("client", protected=False))
    client_netns = f"mgwt-{node.id}-minclient"
    node._add_netns(client_netns)
    client = Pod(name="client", namespace="default", netns=client_netns, container_id="c0ffee02")
    assert rootfs.cni("add", client, conflist).returncode == 0  # same IPAM store as the pod
    assert node.connect(client.netns, [target(pod, 8080)]) == {
        target(pod, 8080): "engine=web orig=8080 -> app=web port=8080"}
    check = rootfs.cni("check", pod, conflist)
    assert check.returncode == 0, check.stderr
    delete = rootfs.cni("del", pod, conflist)
    assert delete.returncode == 0, delete.stderr
    assert node.mgw_rules(pod) == [] and node.mgw_rules(pod, 6) == []
