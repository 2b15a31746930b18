"""Names and numbers other software depends on (docs/design.md, "Contract"), defined once.

Imported by the plugin, the validator and the installer alike, so it imports nothing.
"""

from __future__ import annotations

TYPE_CHECKING = False  # annotations only: typing stays off the per-pod path (cni/records.py)
if TYPE_CHECKING:
    from typing import TypeGuard

PLUGIN_TYPE = "microgateway-cni"
ANNOTATION_PREFIX = "sidecar.microgateway.airlock.com/"
INJECT = ANNOTATION_PREFIX + "inject"
SERVICE_MESH = ANNOTATION_PREFIX + "serviceMesh"
EXCLUDE_INBOUND_PORTS = ANNOTATION_PREFIX + "excludeInboundPorts"
NON_TCP_INBOUND = ANNOTATION_PREFIX + "nonTCPInbound"
ALLOW_INBOUND_UDP_PORTS = ANNOTATION_PREFIX + "allowInboundUDPPorts"
# What happens to new inbound flows that are neither TCP nor ICMP (docs/design.md, I7): the Engine
# carries only TCP, so "allow" opens a path around it. Conflist key and pod annotation alike.
NON_TCP_INBOUND_MODES = ("drop", "allow")
VALIDATOR_CONTAINER = "airlock-microgateway-network-validator"

ENGINE_PORT = 13378
ENGINE_OWN_PORTS = (19000, 19001, 19002)
VALIDATION_PORT = 19003
ISTIO_PROXY_UID = 1337
ISTIO_PORTS = (15000, 15001, 15004, 15006, 15008, 15009, 15020, 15021, 15053, 15090)
PORT_RANGE = (1, 65535)

LOG_LEVELS = ("debug", "info", "warn", "error")
# The conflist key `netfilterBackend`: "auto" decides per node (cni/netfilter/choice.py, docs/design.md,
# "Choosing the backend").
NETFILTER_BACKENDS = ("auto", "iptables-legacy", "nftables")
# Loopback addresses per address family: what the validator dials, and (as /32, /128) what rules match.
LOOPBACK = {4: "127.0.0.1", 6: "::1"}
# Validator exit code for "redirection not working": what the repair controller acts on.
EXIT_NOT_REDIRECTED = 3


def is_port_text(text: str) -> bool:
    """ASCII digits naming a port in PORT_RANGE ('²'.isdigit() is True, so isascii() first)."""
    return text.isascii() and text.isdigit() and PORT_RANGE[0] <= int(text) <= PORT_RANGE[1]


def is_port(value: object) -> TypeGuard[int]:
    """An int (not a bool) in PORT_RANGE."""
    return isinstance(value, int) and not isinstance(value, bool) and PORT_RANGE[0] <= value <= PORT_RANGE[1]
