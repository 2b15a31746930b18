"""Shared steps of the integration tests: pods with workloads, sweeps, direct plugin exec."""

from __future__ import annotations

import json
import random
import subprocess
import sys

from tests.support.node import VALIDATOR_UID, Node, Pod, pod_fixture

APP_PORTS = [8080, 8081, 9090, 19001]
EXEMPT = {13378, 19000, 19001, 19002}


def protected_pod(node: Node, name: str, annotations: dict[str, str] | None = None, cni_version: str = "1.0.0",
                  istio: bool = False) -> Pod:
    node.add_pod_fixture(pod_fixture(name, annotations=annotations))
    pod = node.new_pod(name, node.write_conflist(cni_version=cni_version))
    node.start_workloads(pod, APP_PORTS, istio=istio)
    return pod


def client_pod(node: Node) -> Pod:
    return node.new_pod("client", node.write_conflist(chained=False, name="client.conflist"))


def target(pod: Pod, port: int, family: int = 4) -> str:
    address = pod.ip(family)
    return f"[{address}]:{port}" if family == 6 else f"{address}:{port}"


def sweep_ports(count: int = 150, seed: int = 7) -> list[int]:
    """Many ports across the whole range, the app's among them, none of the Engine's own."""
    rng = random.Random(seed)
    ports = {1, 22, 80, 443, 8080, 9090, 19003, 65535, *rng.sample(range(1, 65536), count)}
    return sorted(ports - EXEMPT)


def probe_from_inside(node: Node, pod: Pod, targets: list[str], uid: int = VALIDATOR_UID) -> dict[str, str]:
    return node.connect(pod.netns, targets, uid=uid)


def exec_plugin(node: Node, env: dict[str, str], stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    """Run the plugin directly (as a runtime would), in the node netns, with a clean environment."""
    plugin = str(node.bin_dir / "microgateway-cni")
    full_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_PATH": str(node.bin_dir), **env}
    return subprocess.run(["ip", "netns", "exec", node.netns, plugin], input=stdin, env=full_env,
                          capture_output=True, timeout=60)


def plugin_conf(node: Node, version: str = "1.1.0", **extra: object) -> dict:
    return {"cniVersion": version, "name": "mgw-test", **node.plugin_entry(), **extra}


def cni_error(done: subprocess.CompletedProcess[bytes]) -> dict:
    """The plugin's stdout must be exactly one CNI error object, exit 1, and no traceback anywhere."""
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert b"Traceback" not in done.stdout + done.stderr
    error = json.loads(done.stdout)
    assert set(error) <= {"cniVersion", "code", "msg", "details"} and {"code", "msg"} <= set(error)
    for line in done.stderr.decode().splitlines():
        json.loads(line)  # logs are JSON lines
    return error


PYTHON = sys.executable
