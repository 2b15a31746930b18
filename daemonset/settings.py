"""Installer settings from the environment (set by the DaemonSet's ConfigMap). Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from cni.contract import NETFILTER_BACKENDS

MODES = ("chained", "standalone", "manual")
REPAIR_MODES = ("deletePods", "labelPods", "none")
LOG_LEVELS = ("debug", "info", "warn", "error")


class SettingsError(ValueError):
    """A setting is invalid; the message names the variable and the value."""


class Settings(NamedTuple):
    mode: str = "chained"
    cni_net_dir: str = "/host/etc/cni/net.d"
    cni_bin_dir: str = "/host/opt/cni/bin"
    host_cni_net_dir: str = "/etc/cni/net.d"
    plugin_binary: str = "/usr/local/bin/microgateway-cni"
    log_level: str = "info"
    netfilter_backend: str = "auto"
    log_file_path: str = "/var/log/microgateway-cni.log"
    exclude_namespaces: tuple[str, ...] = ("kube-system",)
    repair_mode: str = "deletePods"
    node_name: str = ""
    namespace: str = "kube-system"
    daemonset_name: str = "microgateway-cni"
    service_account_dir: str = "/var/run/secrets/kubernetes.io/serviceaccount"
    api_server: str = ""
    listen_port: int = 8000
    revert_warning_threshold: int = 5

    @property
    def kubeconfig_name(self) -> str:
        return "microgateway-cni-kubeconfig"

    def plugin_entry(self) -> dict[str, Any]:
        """The conflist entry, in the shape of DESIGN §2."""
        return {"type": "microgateway-cni", "logLevel": self.log_level, "logFilePath": self.log_file_path,
                "netfilterBackend": self.netfilter_backend,
                "kubernetes": {"kubeconfig": f"{self.host_cni_net_dir}/{self.kubeconfig_name}",
                               "excludeNamespaces": list(self.exclude_namespaces),
                               "installerNamespace": self.namespace},
                "capabilities": {"io.kubernetes.cri.pod-annotations": True}}


ENV = {
    "MGW_MODE": "mode", "MGW_CNI_NET_DIR": "cni_net_dir", "MGW_CNI_BIN_DIR": "cni_bin_dir",
    "MGW_HOST_CNI_NET_DIR": "host_cni_net_dir", "MGW_PLUGIN_BINARY": "plugin_binary",
    "MGW_LOG_LEVEL": "log_level", "MGW_LOG_FILE_PATH": "log_file_path", "MGW_REPAIR_MODE": "repair_mode",
    "MGW_NETFILTER_BACKEND": "netfilter_backend",
    "NODE_NAME": "node_name", "POD_NAMESPACE": "namespace", "MGW_DAEMONSET_NAME": "daemonset_name",
    "MGW_SERVICE_ACCOUNT_DIR": "service_account_dir",
}


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise SettingsError(f"{name}={value!r} is invalid; expected one of {', '.join(allowed)}")
    return value


def from_env(env: Mapping[str, str]) -> Settings:
    values: dict[str, Any] = {attr: env[var] for var, attr in ENV.items() if env.get(var)}
    _choice("MGW_MODE", values.get("mode", "chained"), MODES)
    _choice("MGW_REPAIR_MODE", values.get("repair_mode", "deletePods"), REPAIR_MODES)
    _choice("MGW_LOG_LEVEL", values.get("log_level", "info"), LOG_LEVELS)
    _choice("MGW_NETFILTER_BACKEND", values.get("netfilter_backend", "auto"), NETFILTER_BACKENDS)
    if "MGW_EXCLUDE_NAMESPACES" in env:
        values["exclude_namespaces"] = tuple(n.strip() for n in env["MGW_EXCLUDE_NAMESPACES"].split(",") if n.strip())
    for var, attr in (("MGW_LISTEN_PORT", "listen_port"), ("MGW_REVERT_WARNING_THRESHOLD", "revert_warning_threshold")):
        if env.get(var):
            if not (env[var].isascii() and env[var].isdigit()) or not 0 < int(env[var]) < 65536:
                raise SettingsError(f"{var}={env[var]!r} is invalid; expected a positive integer")
            values[attr] = int(env[var])
    host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "443")
    if host:
        values["api_server"] = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    return Settings(**values)
