"""Which pods are protected and how: pod metadata -> Plan. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Mapping

from cni.config import INSTALLER_POD_PREFIX, NON_TCP_INBOUND_MODES, PluginConfig
from cni.errors import INVALID_CONFIG, CniError
from cni.records import record

PREFIX = "sidecar.microgateway.airlock.com/"
INJECT = PREFIX + "inject"
SERVICE_MESH = PREFIX + "serviceMesh"
EXCLUDE_INBOUND_PORTS = PREFIX + "excludeInboundPorts"
NON_TCP_INBOUND = PREFIX + "nonTCPInbound"
ALLOW_INBOUND_UDP_PORTS = PREFIX + "allowInboundUDPPorts"
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


def skip_reason(namespace: str, name: str, config: PluginConfig) -> str:
    """Why a pod is passed through without asking the API; empty when it must be looked up."""
    if not namespace or not name:
        return "not a Kubernetes pod (no K8S_POD_NAMESPACE/K8S_POD_NAME in CNI_ARGS)"
    if namespace in config.exclude_namespaces:
        return f"namespace {namespace} is excluded"
    if namespace == config.installer_namespace and name.startswith(INSTALLER_POD_PREFIX):
        return "the installer's own pod"
    return ""


def is_protected(labels: Mapping[str, str], annotations: Mapping[str, str]) -> bool:
    return labels.get(INJECT) == "true" or annotations.get(INJECT) == "true"


def parse_port_list(key: str, raw: str) -> tuple[int, ...]:
    """`"8081, 9090"` -> (8081, 9090); anything else that is not empty is an error naming the key."""
    ports: list[int] = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        if not (item.isascii() and item.isdigit()) or not 1 <= int(item) <= 65535:  # "²".isdigit() is True
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
    inbound = {"excluded_ports": excluded, "non_tcp_inbound": non_tcp, "allowed_udp_ports": udp_ports}
    if mesh == "none":
        return Plan(mesh=mesh, **inbound)
    mode = annotations.get(ISTIO_INTERCEPTION_MODE, "REDIRECT")
    if mode != "REDIRECT":
        raise CniError(INVALID_CONFIG,
                       f"invalid annotation {ISTIO_INTERCEPTION_MODE}: {mode!r} (only REDIRECT is supported)")
    include_raw = annotations.get(ISTIO_INCLUDE_INBOUND, "*").strip()
    include = None if include_raw == "*" else parse_port_list(ISTIO_INCLUDE_INBOUND, include_raw)
    istio_exclude = parse_port_list(ISTIO_EXCLUDE_INBOUND, annotations.get(ISTIO_EXCLUDE_INBOUND, ""))
    return Plan(mesh=mesh, istio_include=include, istio_exclude=istio_exclude, **inbound)
