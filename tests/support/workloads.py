"""Pod manifests of the node tier, written as an operator's cluster would hold them.

A protected pod is what the Microgateway's sidecar injection makes of a labelled workload: the validator
from the project's image as the first init container (non-root, no capabilities, read-only root), then
the Engine and the application; in Istio mode also Istio's init container and proxy. The Engine, the
proxy and the application are stand-ins (tests/support/programs/standins.py) from the stand-in image.
"""

from __future__ import annotations

import uuid
from typing import Any

from cni.contract import ENGINE_PORT, EXCLUDE_INBOUND_PORTS, INJECT, ISTIO_PROXY_UID, SERVICE_MESH, VALIDATOR_CONTAINER
from tests.support import images
from tests.support.istio import istio_rules

APP_PORTS = (8080, 8081)
# A container that only waits (saying "ready" like the stand-ins): the client pod's, from which the tests
# send requests with ExecSync.
IDLE = ["/bin/sh", "-c", "trap 'exit 0' TERM; echo ready; while :; do sleep 3600 & wait $!; done"]
APP_UID, ENGINE_UID = 1000, 1001
UNPRIVILEGED = {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]}}


def validator(image: str) -> dict[str, Any]:
    return {"name": VALIDATOR_CONTAINER, "image": image, "command": ["/usr/local/bin/microgateway-network-validator"],
            "securityContext": {"runAsUser": 65532, **UNPRIVILEGED}}


def standin(name: str, uid: int, command: list[str]) -> dict[str, Any]:
    return {"name": name, "image": images.STANDINS, "command": command,
            "securityContext": {"runAsUser": uid, **UNPRIVILEGED}}


def app(pod: str) -> dict[str, Any]:
    return standin("app", APP_UID, images.standin_command("app", name=pod, ports=APP_PORTS))


def engine(pod: str) -> dict[str, Any]:
    return standin("engine", ENGINE_UID, images.standin_command("engine", name=pod, port=ENGINE_PORT,
                                                                forward=APP_PORTS))


def pod(name: str, containers: list[dict[str, Any]], init: list[dict[str, Any]] | None = None,
        labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None,
        namespace: str = "default") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()),
                         "labels": {"app": name, **(labels or {})}, "annotations": dict(annotations or {})},
            "spec": {"initContainers": init or [], "containers": containers}}


def protected(name: str, image: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """Protected by its label, as the API says (the annotation excludes 8081 from the Engine)."""
    return pod(name, [engine(name), app(name)], init=[validator(image)], labels={INJECT: "true"},
               annotations={EXCLUDE_INBOUND_PORTS: "8081", **(annotations or {})})


def annotated(name: str, image: str) -> dict[str, Any]:
    """Protected by the annotation alone: the runtime hands it to the plugin, which needs no API call."""
    return pod(name, [engine(name), app(name)], init=[validator(image)], annotations={INJECT: "true"})


def istio(name: str, image: str) -> dict[str, Any]:
    """Istio mode: istio-init writes Istio's rules with the securityContext Istio gives it (root, NET_ADMIN
    and NET_RAW, a writable root: iptables takes its lock under /run), the proxy runs as 1337, and the
    plugin puts the Engine behind it."""
    command = ["/bin/sh", "-c", 'printf "%s" "$0" | iptables-legacy-restore', istio_rules(4)]
    init = {"name": "istio-init", "image": images.STANDINS, "command": command,
            "securityContext": {"runAsUser": 0, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": False,
                                "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}}}
    proxy = standin("istio-proxy", ISTIO_PROXY_UID, images.standin_command("istio", name=name, port=15006))
    return pod(name, [proxy, engine(name), app(name)], init=[init, validator(image)], labels={INJECT: "true"},
               annotations={SERVICE_MESH: "istio"})


def ordinary(name: str, namespace: str = "default") -> dict[str, Any]:
    return pod(name, [app(name)], namespace=namespace)


def client(name: str) -> dict[str, Any]:
    """A pod whose container idles; the tests send requests from it with ExecSync."""
    return pod(name, [standin("client", APP_UID, IDLE)])
