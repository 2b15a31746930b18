"""Pods the plugin tests talk to: a protected pod with its workloads, a client pod beside it, and
the addresses and ports to reach them with."""

from __future__ import annotations

import random

from tests.support.node import VALIDATOR_UID, Node, Pod, pod_fixture

APP_PORTS = [8080, 8081, 9090, 19001]
ENGINE_OWN_PORTS = {13378, 19000, 19001, 19002}


def protected_pod(node: Node, name: str, annotations: dict[str, str] | None = None, cni_version: str = "1.0.0",
                  istio: bool = False) -> Pod:
    """A pod the chain protects, with the application, the Engine stand-in and optionally Istio's."""
    node.add_pod_fixture(pod_fixture(name, annotations=annotations))
    pod = node.new_pod(name, node.write_conflist(cni_version=cni_version))
    node.start_workloads(pod, APP_PORTS, istio=istio)
    return pod


def client_pod(node: Node) -> Pod:
    """A neighbouring pod outside the plugin's chain, to connect from."""
    return node.new_pod("client", node.write_conflist(chained=False, name="client.conflist"))


def target(pod: Pod, port: int, family: int = 4) -> str:
    address = pod.ip(family)
    return f"[{address}]:{port}" if family == 6 else f"{address}:{port}"


def sweep_ports(count: int = 150, seed: int = 7) -> list[int]:
    """Many ports across the whole range, the app's among them, none of the Engine's own."""
    rng = random.Random(seed)
    ports = {1, 22, 80, 443, 8080, 9090, 19003, 65535, *rng.sample(range(1, 65536), count)}
    return sorted(ports - ENGINE_OWN_PORTS)


def probe_from_inside(node: Node, pod: Pod, targets: list[str], uid: int = VALIDATOR_UID) -> dict[str, str]:
    """Connect from inside the pod, as the validator's uid unless told otherwise."""
    return node.connect(pod.netns, targets, uid=uid)
