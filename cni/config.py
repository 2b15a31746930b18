"""The plugin's conflist entry, validated into a typed config. Pure: no I/O."""

from __future__ import annotations

from cni.contract import (
    ENGINE_OWN_PORTS,
    ENGINE_PORT,
    ISTIO_PORTS,
    ISTIO_PROXY_UID,
    LOG_LEVELS,
    NETFILTER_BACKENDS,
    NON_TCP_INBOUND_MODES,
    PLUGIN_TYPE,
    VALIDATION_PORT,
    is_port,
)
from cni.errors import INVALID_CONFIG, CniError
from cni.records import record

TYPE_CHECKING = False  # annotations only: typing stays off the per-pod path (cni/records.py)
if TYPE_CHECKING:
    from typing import Any

DEFAULT_KUBECONFIG = f"/etc/cni/net.d/{PLUGIN_TYPE}-kubeconfig"
DEFAULT_API_DEADLINE_SECONDS = 30.0
# The installer DaemonSet's pods; skipped before any API call (Istio's node-reboot deadlock lesson).
INSTALLER_POD_PREFIX = f"{PLUGIN_TYPE}-"


@record
class PluginConfig:
    log_level: str = "info"
    log_file_path: str = ""
    kubeconfig: str = DEFAULT_KUBECONFIG
    exclude_namespaces: tuple[str, ...] = ("kube-system",)
    installer_namespace: str = "kube-system"
    api_deadline_seconds: float = DEFAULT_API_DEADLINE_SECONDS
    engine_port: int = ENGINE_PORT
    engine_own_ports: tuple[int, ...] = ENGINE_OWN_PORTS
    validation_port: int = VALIDATION_PORT
    istio_proxy_uid: int = ISTIO_PROXY_UID
    istio_ports: tuple[int, ...] = ISTIO_PORTS
    non_tcp_inbound: str = "drop"
    netfilter_backend: str = "auto"


def _bad(key: str, value: Any, expected: str) -> CniError:
    return CniError(INVALID_CONFIG, f"invalid value for {key!r}: {value!r} ({expected})")


def _port(key: str, value: Any) -> int:
    if not is_port(value):
        raise _bad(key, value, "expected an integer port 1-65535")
    return value


def _ports(key: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise _bad(key, value, "expected a list of ports")
    return tuple(_port(key, item) for item in value)


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _bad(key, value, "expected a string")
    return value


def parse_config(conf: dict[str, Any]) -> PluginConfig:
    """Unknown keys are ignored (the runtime adds its own); a bad known key names itself."""
    values: dict[str, Any] = {}
    level = conf.get("logLevel")
    if level is not None:
        if not isinstance(level, str) or level.lower() not in LOG_LEVELS:
            raise _bad("logLevel", level, "expected one of " + ", ".join(LOG_LEVELS))
        values["log_level"] = level.lower()
    debug = conf.get("debug")
    if debug is not None:
        if not isinstance(debug, bool):
            raise _bad("debug", debug, "expected true or false")
        if debug:
            values["log_level"] = "debug"
    if "netfilterBackend" in conf:
        backend = conf["netfilterBackend"]
        if backend not in NETFILTER_BACKENDS:
            raise _bad("netfilterBackend", backend, "expected one of " + ", ".join(NETFILTER_BACKENDS))
        values["netfilter_backend"] = backend
    if "logFilePath" in conf:
        values["log_file_path"] = _string("logFilePath", conf["logFilePath"])

    kube = conf.get("kubernetes", {})
    if not isinstance(kube, dict):
        raise _bad("kubernetes", kube, "expected an object")
    if "kubeconfig" in kube:
        values["kubeconfig"] = _string("kubernetes.kubeconfig", kube["kubeconfig"])
    if "excludeNamespaces" in kube:
        namespaces = kube["excludeNamespaces"]
        if not isinstance(namespaces, list) or not all(isinstance(n, str) for n in namespaces):
            raise _bad("kubernetes.excludeNamespaces", namespaces, "expected a list of namespace names")
        values["exclude_namespaces"] = tuple(namespaces)
    if "installerNamespace" in kube:
        values["installer_namespace"] = _string("kubernetes.installerNamespace", kube["installerNamespace"])
    if "apiDeadlineSeconds" in kube:
        deadline = kube["apiDeadlineSeconds"]
        if isinstance(deadline, bool) or not isinstance(deadline, int | float) or not 0 < deadline <= 300:
            raise _bad("kubernetes.apiDeadlineSeconds", deadline, "expected seconds, 0 < s <= 300")
        values["api_deadline_seconds"] = float(deadline)

    for key, attr in (("enginePort", "engine_port"), ("validationPort", "validation_port")):
        if key in conf:
            values[attr] = _port(key, conf[key])
    for key, attr in (("engineOwnPorts", "engine_own_ports"), ("istioPorts", "istio_ports")):
        if key in conf:
            values[attr] = _ports(key, conf[key])
    if "nonTCPInbound" in conf:
        mode = conf["nonTCPInbound"]
        if mode not in NON_TCP_INBOUND_MODES:
            raise _bad("nonTCPInbound", mode, "expected drop or allow")
        values["non_tcp_inbound"] = mode
    if "istioProxyUid" in conf:
        uid = conf["istioProxyUid"]
        if isinstance(uid, bool) or not isinstance(uid, int) or not 0 < uid < 2**32 - 1:
            raise _bad("istioProxyUid", uid, "expected a non-root uid")
        values["istio_proxy_uid"] = uid
    config = PluginConfig(**values)
    if config.engine_port in config.engine_own_ports or config.validation_port in config.engine_own_ports:
        raise _bad("engineOwnPorts", list(config.engine_own_ports),
                   "must not contain enginePort or validationPort")
    return config
