"""Which pods are protected and how: runtime or API pod metadata -> PodFacts -> Plan. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Mapping

from cni.config import INSTALLER_POD_PREFIX, PluginConfig
from cni.contract import (
    ALLOW_INBOUND_UDP_PORTS,
    EXCLUDE_INBOUND_PORTS,
    INJECT,
    NON_TCP_INBOUND,
    NON_TCP_INBOUND_MODES,
    SERVICE_MESH,
    is_port_text,
)
from cni.errors import INVALID_CONFIG, CniError
from cni.records import record

TYPE_CHECKING = False  # annotations only: typing stays off the per-pod path (cni/records.py)
if TYPE_CHECKING:
    from typing import Any

# The runtime capability through which containerd hands a chained plugin the pod's annotations.
POD_ANNOTATIONS_CAPABILITY = "io.kubernetes.cri.pod-annotations"
ISTIO_INCLUDE_INBOUND = "traffic.sidecar.istio.io/includeInboundPorts"
ISTIO_EXCLUDE_INBOUND = "traffic.sidecar.istio.io/excludeInboundPorts"
ISTIO_INTERCEPTION_MODE = "sidecar.istio.io/interceptionMode"
MESH_MODES = ("none", "istio")


@record
class Plan:
    """How one protected pod's inbound TCP is steered.

    istio_include is None when Istio captures every inbound port ("*"), else the ports it captures.
    non_tcp_inbound "drop" keeps every other new inbound flow out but for allowed_udp_ports (I7).
    """

    mesh: str = "none"
    excluded_ports: tuple[int, ...] = ()
    istio_include: tuple[int, ...] | None = None
    istio_exclude: tuple[int, ...] = ()
    non_tcp_inbound: str = "drop"
    allowed_udp_ports: tuple[int, ...] = ()


@record
class PodFacts:
    """What the plugin needs to know about a pod, and where it learnt it ("runtime" or "api").

    unverified names why the API could not be asked when the runtime's annotations alone decided that
    the pod is not protected (docs/design.md, "When the API cannot tell"); empty when the API answered."""

    protected: bool
    annotations: dict[str, str]
    source: str
    unverified: str = ""


def skip_reason(namespace: str, name: str, config: PluginConfig) -> str:
    """Why a pod is passed through without asking the API; empty when it must be looked up."""
    if not namespace or not name:
        return "not a Kubernetes pod (no K8S_POD_NAMESPACE/K8S_POD_NAME in CNI_ARGS)"
    if namespace in config.exclude_namespaces:
        return f"namespace {namespace} is excluded"
    if namespace == config.installer_namespace and name.startswith(INSTALLER_POD_PREFIX):
        return "the installer's own pod"
    return ""


def is_protected(labels: Mapping[str, Any], annotations: Mapping[str, Any]) -> bool:
    """The label, or the annotation of the same key, set to "true" (the plugin and repair alike)."""
    return labels.get(INJECT) == "true" or annotations.get(INJECT) == "true"


def runtime_annotations(conf: Mapping[str, Any]) -> dict[str, str] | None:
    """The pod's annotations as the runtime handed them (capability io.kubernetes.cri.pod-annotations),
    or None when it handed none: then nothing is known about them, not even that they are empty."""
    runtime_config = conf.get("runtimeConfig")
    annotations = runtime_config.get(POD_ANNOTATIONS_CAPABILITY) if isinstance(runtime_config, dict) else None
    if not isinstance(annotations, dict):
        return None
    return {str(k): str(v) for k, v in annotations.items()}


def from_runtime(conf: Mapping[str, Any]) -> PodFacts | None:
    """PodFacts from the runtime's annotations when they alone are conclusive, else None (ask the API).

    Only "protected" is conclusive: a pod without the annotation may still carry the label, which
    the runtime does not pass."""
    annotations = runtime_annotations(conf)
    if annotations is None or not is_protected({}, annotations):
        return None
    return PodFacts(protected=True, annotations=annotations, source="runtime")


def without_api(conf: Mapping[str, Any], reason: str) -> PodFacts | None:
    """When the API cannot tell the pod's labels: a pod the runtime's annotations do not mark protected
    (from_runtime came first) is ordinary, provided the runtime handed us its annotations; else None,
    and the lookup fails closed. A pod protected by its label alone then meets its validator, which
    refuses it (docs/design.md, "When the API cannot tell")."""
    annotations = runtime_annotations(conf)
    if annotations is None:
        return None
    return PodFacts(protected=False, annotations=annotations, source="runtime", unverified=reason)


def from_api(pod: Mapping[str, Any]) -> PodFacts:
    """PodFacts from the pod object the API returned."""
    metadata = pod.get("metadata") or {}
    labels = metadata.get("labels") or {}
    annotations = metadata.get("annotations") or {}
    return PodFacts(protected=is_protected(labels, annotations), annotations=dict(annotations), source="api")


def parse_port_list(key: str, raw: str) -> tuple[int, ...]:
    """`"8081, 9090"` -> (8081, 9090); anything else that is not empty is an error naming the key."""
    ports: list[int] = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        if not is_port_text(item):
            raise CniError(INVALID_CONFIG, f"invalid annotation {key}: {raw!r} ({item!r} is not a port 1-65535)")
        ports.append(int(item))
    return tuple(sorted(set(ports)))


def plan_for(annotations: Mapping[str, str], non_tcp_default: str = "drop") -> Plan:
    """The pod's annotations over the node's defaults (the conflist's nonTCPInbound)."""
    mesh = annotations.get(SERVICE_MESH, "none")
    if mesh not in MESH_MODES:
        raise CniError(INVALID_CONFIG, f"invalid annotation {SERVICE_MESH}: {mesh!r} (expected none or istio)")
    excluded = parse_port_list(EXCLUDE_INBOUND_PORTS, annotations.get(EXCLUDE_INBOUND_PORTS, ""))
    non_tcp = annotations.get(NON_TCP_INBOUND, non_tcp_default)
    if non_tcp not in NON_TCP_INBOUND_MODES:
        raise CniError(INVALID_CONFIG, f"invalid annotation {NON_TCP_INBOUND}: {non_tcp!r} (expected drop or allow)")
    # Parsed in "allow" mode too, so a typo fails the pod now rather than when someone switches to drop.
    udp_ports = parse_port_list(ALLOW_INBOUND_UDP_PORTS, annotations.get(ALLOW_INBOUND_UDP_PORTS, ""))
    if mesh == "none":
        return Plan(mesh=mesh, excluded_ports=excluded, non_tcp_inbound=non_tcp, allowed_udp_ports=udp_ports)
    mode = annotations.get(ISTIO_INTERCEPTION_MODE, "REDIRECT")
    if mode != "REDIRECT":
        raise CniError(INVALID_CONFIG,
                       f"invalid annotation {ISTIO_INTERCEPTION_MODE}: {mode!r} (only REDIRECT is supported)")
    include_raw = annotations.get(ISTIO_INCLUDE_INBOUND, "*").strip()
    include = None if include_raw == "*" else parse_port_list(ISTIO_INCLUDE_INBOUND, include_raw)
    istio_exclude = parse_port_list(ISTIO_EXCLUDE_INBOUND, annotations.get(ISTIO_EXCLUDE_INBOUND, ""))
    return Plan(mesh=mesh, excluded_ports=excluded, istio_include=include, istio_exclude=istio_exclude,
                non_tcp_inbound=non_tcp, allowed_udp_ports=udp_ports)
