"""The plugin and validator bundles on a node root that holds nothing else: no libc, no Python, no iptables.

The root is a directory with the installed bundles, an /etc/hosts and nsswitch.conf (node configuration, no
code) and empty mount points. libcni (the Go driver, as containerd) and the reference plugins run on the
host; the kubelet-facing `microgateway-cni` in the CNI bin dir is a shim that enters a private mount
namespace, binds /proc, /dev, /run/netns and the node's CNI config dir into the root and chroots into it,
so the plugin bundle runs with nothing from the host. No mount outlives the command that made it.
"""

from __future__ import annotations

import base64
import json
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.bundles import binary
from tests.support.node import API_HOST_NAME, API_PORT, VALIDATOR_UID, Node, Pod, pod_fixture
from tests.support.pods import target

pytestmark = pytest.mark.backends  # the bundles carry both backends: legacy's C libraries, nftables' netlink code
PLUGIN, VALIDATOR = "microgateway-cni", "microgateway-network-validator"
CONF_DIR = "/etc/cni/net.d"
KUBECONFIG = f"{CONF_DIR}/microgateway-cni-kubeconfig"


class EmptyRoot:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.path = node.dir / "root"
        for d in ("proc", "dev", "run/netns", CONF_DIR.lstrip("/"), "var/log", "opt/mgw"):
            (self.path / d).mkdir(parents=True, exist_ok=True)
        for name in (PLUGIN, VALIDATOR):
            shutil.copytree(binary(name).parent, self.path / "opt/mgw" / name, symlinks=True)
        (self.path / "etc/hosts").write_text(f"127.0.0.1 localhost\n127.0.0.1 {API_HOST_NAME}\n")
        (self.path / "etc/nsswitch.conf").write_text("hosts: files dns\n")
        self.path.chmod(0o755)
        node.dir.chmod(0o755)
        shim = node.bin_dir / PLUGIN
        shim.unlink()
        shim.write_text(f"#!/bin/sh\nexec {shlex.join(self.enter(f'/opt/mgw/{PLUGIN}/{PLUGIN}'))}\n")
        shim.chmod(0o755)

    def enter(self, program: str, *args: str, userspec: str = "") -> list[str]:
        """A command that runs program inside the root, in a private mount namespace."""
        root = shlex.quote(str(self.path))
        mounts = (f"mount -t proc proc {root}/proc && mount --rbind /dev {root}/dev && "
                  f"mount --rbind /run/netns {root}/run/netns && "
                  f"mount --bind {shlex.quote(str(self.node.conf_dir))} {root}{CONF_DIR}")
        chroot = ["chroot", *([f"--userspec={userspec}"] if userspec else []), str(self.path), program, *args]
        return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                f'{mounts} && exec "$@"', "enter", *chroot]

    def run(self, pod: Pod, program: str, *args: str, userspec: str = "") -> subprocess.CompletedProcess[str]:
        return self.node.exec(pod.netns, self.enter(program, *args, userspec=userspec), check=False)

    def assert_empty(self) -> None:
        """Nothing but the bundles is executable code: no libc, no Python, no iptables."""
        files = [p.relative_to(self.path) for p in self.path.rglob("*") if p.is_file() or p.is_symlink()]
        expected = ("etc/hosts", "etc/nsswitch.conf", "var/log/microgateway-cni.log")
        outside = [str(p) for p in files if p.parts[:2] != ("opt", "mgw") and str(p) not in expected]
        assert outside == [], outside

    def write_conflist(self, **entry: Any) -> Path:
        plugin = {"type": PLUGIN, "logLevel": "debug", "logFilePath": "/var/log/microgateway-cni.log",
                  "netfilterBackend": self.node.backend,
                  "kubernetes": {"kubeconfig": KUBECONFIG, "apiDeadlineSeconds": 2}, **entry}
        doc = {"cniVersion": "1.0.0", "name": "mgw-empty-root", "plugins": [self.node.bridge_entry(), plugin]}
        path = self.node.conf_dir / "10-mgw.conflist"
        path.write_text(json.dumps(doc))
        return path

    def log(self) -> str:
        path = self.path / "var/log/microgateway-cni.log"
        return path.read_text() if path.exists() else ""


def kubeconfig(node: Node, server: str, cluster: dict[str, str], user: dict[str, str], fmt: str) -> None:
    doc = {"apiVersion": "v1", "kind": "Config", "current-context": "mgw",
           "clusters": [{"name": "local", "cluster": {"server": server, **cluster}}],
           "users": [{"name": "cni", "user": user}],
           "contexts": [{"name": "mgw", "context": {"cluster": "local", "user": "cni"}}]}
    if fmt == "yaml":
        import yaml

        text = yaml.safe_dump(doc)
        assert not text.lstrip().startswith("{")
    else:
        text = json.dumps(doc)
    (node.conf_dir / "microgateway-cni-kubeconfig").write_text(text)


def by_host_name(node: Node) -> None:
    """YAML, tokenFile, CA file and a server named by host name (resolved through the root's /etc/hosts)."""
    (node.conf_dir / "ca.crt").write_bytes(node.ca_pem)
    (node.conf_dir / "token").write_text(node.token + "\n")
    kubeconfig(node, f"https://{API_HOST_NAME}:{API_PORT}", {"certificate-authority": f"{CONF_DIR}/ca.crt"},
               {"tokenFile": f"{CONF_DIR}/token"}, "yaml")


def client_certificate_files(node: Node) -> None:
    data = node.client_certificate()
    for key, name in (("client-certificate-data", "client.crt"), ("client-key-data", "client.key")):
        (node.conf_dir / name).write_bytes(base64.b64decode(data[key]))
    kubeconfig(node, f"https://127.0.0.1:{API_PORT}", {"certificate-authority-data": _ca_data(node)},
               {"client-certificate": f"{CONF_DIR}/client.crt", "client-key": f"{CONF_DIR}/client.key"}, "yaml")


def client_certificate_data(node: Node) -> None:
    kubeconfig(node, f"https://127.0.0.1:{API_PORT}", {"certificate-authority-data": _ca_data(node)},
               node.client_certificate(), "json")


def token_and_ca_data(node: Node) -> None:
    kubeconfig(node, f"https://127.0.0.1:{API_PORT}", {"certificate-authority-data": _ca_data(node)},
               {"token": node.token}, "json")


def _ca_data(node: Node) -> str:
    return base64.b64encode(node.ca_pem).decode()


def test_protected_and_ordinary_pods_on_a_root_with_nothing_but_the_bundles(binaries, backend, node46):
    node = node46
    root = EmptyRoot(node)
    by_host_name(node)
    conflist = root.write_conflist()
    node.add_pod_fixture(pod_fixture("web"))
    pod = node.new_pod("web", conflist)
    assert pod.result, pod.add_output.stderr
    verdict = root.run(pod, f"/opt/mgw/{VALIDATOR}/{VALIDATOR}", "--termination-log", "/dev/null",
                       userspec=f"{VALIDATOR_UID}:{VALIDATOR_UID}")
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr
    diagnose = root.run(pod, f"/opt/mgw/{VALIDATOR}/{VALIDATOR}", "diagnose", "--json")
    assert diagnose.returncode == 0, diagnose.stdout + diagnose.stderr
    report = json.loads(diagnose.stdout)
    assert set(report["invariants"].values()) == {"ok"} and report["chains"]["6"]["rules"], report
    assert report["chains"]["6"]["backends"] == [node.backend], report
    node.start_workloads(pod, [8080])
    node.add_pod_fixture(pod_fixture("client", protected=False))
    ordinary = node.new_pod("client", conflist)  # an ordinary pod through the same chain: passed through
    assert ordinary.result and node.mgw_rules(ordinary) == [] and node.mgw_rules(ordinary, 6) == []
    assert node.connect(ordinary.netns, [target(pod, 8080), target(pod, 8080, 6), target(pod, 4321, 6)]) == {
        target(pod, 8080): "engine=web orig=8080 -> app=web port=8080",
        target(pod, 8080, 6): "engine=web orig=8080 -> app=web port=8080",
        target(pod, 4321, 6): "engine=web orig=4321"}
    node.cni("check", pod, conflist)
    node.cni("del", pod, conflist)
    node.cni("del", ordinary, conflist)
    assert node.mgw_rules(pod) == [] and node.mgw_rules(pod, 6) == []
    root.assert_empty()


@pytest.mark.parametrize("configure", [token_and_ca_data, by_host_name, client_certificate_files,
                                       client_certificate_data])
def test_every_kubeconfig_shape_works_in_the_bundle(binaries, node, configure):
    root = EmptyRoot(node)
    configure(node)
    conflist = root.write_conflist(logLevel="info", debug=True)
    node.add_pod_fixture(pod_fixture("web"))
    pod = node.new_pod("web", conflist)
    assert pod.result, pod.add_output.stderr + root.log()
    assert any("redirect" in rule.lower() for rule in node.mgw_rules(pod))
    node.cni("check", pod, conflist)
    node.cni("del", pod, conflist)
    assert node.mgw_rules(pod) == []
    node.add_pod_fixture(pod_fixture("plain", protected=False))
    plain = node.new_pod("plain", conflist)  # ordinary pods read the kubeconfig too
    assert plain.result and node.mgw_rules(plain) == [], plain.add_output.stderr
    assert '"msg": "passed through"' in root.log(), "debug: true must turn on debug logging"
