"""Installer settings from the environment (set by the DaemonSet's ConfigMap). Pure."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping
from typing import Any, NamedTuple

from cni.contract import LOG_LEVELS, NETFILTER_BACKENDS, NON_TCP_INBOUND_MODES, PLUGIN_TYPE

MODES = ("chained", "ahead", "standalone", "manual")
REPAIR_MODES = ("deletePods", "labelPods", "none")
STARTUP_TAINT = "microgateway-cni.airlock.com/not-ready"
# A taint key is a qualified name: optional DNS-subdomain prefix and "/", then a name of at most 63 characters.
TAINT_KEY = re.compile(r"^(?:[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


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
    non_tcp_inbound: str = "drop"
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
    startup_taint: str = STARTUP_TAINT

    @property
    def kubeconfig_name(self) -> str:
        return "microgateway-cni-kubeconfig"

    def plugin_entry(self) -> dict[str, Any]:
        """The conflist entry, in the shape of docs/design.md, "Contract"."""
        return {"type": PLUGIN_TYPE, "logLevel": self.log_level, "logFilePath": self.log_file_path,
                "netfilterBackend": self.netfilter_backend, "nonTCPInbound": self.non_tcp_inbound,
                "kubernetes": {"kubeconfig": f"{self.host_cni_net_dir}/{self.kubeconfig_name}",
                               "excludeNamespaces": list(self.exclude_namespaces),
                               "installerNamespace": self.namespace},
                "capabilities": {"io.kubernetes.cri.pod-annotations": True}}


ENV = {
    "MGW_MODE": "mode", "MGW_CNI_NET_DIR": "cni_net_dir", "MGW_CNI_BIN_DIR": "cni_bin_dir",
    "MGW_HOST_CNI_NET_DIR": "host_cni_net_dir", "MGW_PLUGIN_BINARY": "plugin_binary",
    "MGW_LOG_LEVEL": "log_level", "MGW_LOG_FILE_PATH": "log_file_path", "MGW_REPAIR_MODE": "repair_mode",
    "MGW_NETFILTER_BACKEND": "netfilter_backend", "MGW_NON_TCP_INBOUND": "non_tcp_inbound",
    "NODE_NAME": "node_name", "POD_NAMESPACE": "namespace", "MGW_DAEMONSET_NAME": "daemonset_name",
    "MGW_SERVICE_ACCOUNT_DIR": "service_account_dir",
    "MGW_STARTUP_TAINT": "startup_taint",
}


def _default(attr: str) -> str:
    value = Settings._field_defaults[attr]
    return ",".join(value) if isinstance(value, tuple) else str(value)


# Every variable from_env reads, with what it sets and its default: the installer's --help.
VARIABLES: tuple[tuple[str, str, str], ...] = (
    ("MGW_MODE", "chained (our entry in the primary's conflist) | ahead (our own copy of it with our entry, "
     "which the runtime loads first: for a primary that rewrites its file often) | standalone (own conflist, "
     "for Multus/OpenShift) | manual (writes no conflist)", _default("mode")),
    ("MGW_CNI_NET_DIR", "the node's CNI config dir, as mounted in this container", _default("cni_net_dir")),
    ("MGW_CNI_BIN_DIR", "the node's CNI bin dir, as mounted in this container", _default("cni_bin_dir")),
    ("MGW_HOST_CNI_NET_DIR", "the CNI config dir as the node sees it (paths in our entry)",
     _default("host_cni_net_dir")),
    ("MGW_PLUGIN_BINARY", "the plugin to install (beside an _internal dir: the one-dir bundle)",
     _default("plugin_binary")),
    ("MGW_LOG_LEVEL", "debug | info | warn | error, for the installer and the plugin", _default("log_level")),
    ("MGW_LOG_FILE_PATH", "the plugin's log file on the node", _default("log_file_path")),
    ("MGW_NETFILTER_BACKEND", "auto (legacy where the node uses it, else nftables) | iptables-legacy | nftables: "
     "the plugin's netfilterBackend", _default("netfilter_backend")),
    ("MGW_NON_TCP_INBOUND", "drop | allow: the node's default for new inbound flows that are neither TCP nor ICMP "
     "(the plugin's nonTCPInbound; a pod's annotation wins); allow opens a path around the Engine",
     _default("non_tcp_inbound")),
    ("MGW_EXCLUDE_NAMESPACES", "comma-separated namespaces whose pods the plugin never touches",
     _default("exclude_namespaces")),
    ("MGW_REPAIR_MODE", "deletePods | labelPods | none: pods whose validator found no redirection",
     _default("repair_mode")),
    ("MGW_LISTEN_PORT", "port of /healthz, /readyz and /metrics", _default("listen_port")),
    ("MGW_REVERT_WARNING_THRESHOLD", "removals of our entry by another agent per minute before the installer "
     "warns and backs off", _default("revert_warning_threshold")),
    ("MGW_DAEMONSET_NAME", "our DaemonSet: SIGTERM uninstalls when it is being deleted or gone, or when the API "
     "refuses our service account (deleted with it)",
     _default("daemonset_name")),
    ("MGW_SERVICE_ACCOUNT_DIR", "token, and ca.crt that the API server's certificate must chain to",
     _default("service_account_dir")),
    ("MGW_STARTUP_TAINT", "taint key lifted from this node once the plugin is ready; empty: no start-up gate",
     _default("startup_taint")),
    ("NODE_NAME", "this node (downward API); empty: no pod repair", _default("node_name")),
    ("POD_NAMESPACE", "our namespace (downward API)", _default("namespace")),
    ("KUBERNETES_SERVICE_HOST", "API server address (set by the kubelet); empty: no API access", ""),
    ("KUBERNETES_SERVICE_PORT", "API server port", "443"),
)


def help_table() -> str:
    """One entry per variable, for a click help paragraph that is printed as it is."""
    return "\n".join(f"{name} (default: {default or 'unset'})\n" + textwrap.fill(what, 76, initial_indent="    ",
                                                                                 subsequent_indent="    ")
                     for name, what, default in VARIABLES)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise SettingsError(f"{name}={value!r} is invalid; expected one of {', '.join(allowed)}")
    return value


def from_env(env: Mapping[str, str]) -> Settings:
    values: dict[str, Any] = {attr: env[var] for var, attr in ENV.items() if env.get(var)}
    for var, attr, allowed in (("MGW_MODE", "mode", MODES), ("MGW_REPAIR_MODE", "repair_mode", REPAIR_MODES),
                               ("MGW_LOG_LEVEL", "log_level", LOG_LEVELS),
                               ("MGW_NETFILTER_BACKEND", "netfilter_backend", NETFILTER_BACKENDS),
                               ("MGW_NON_TCP_INBOUND", "non_tcp_inbound", NON_TCP_INBOUND_MODES)):
        _choice(var, values.get(attr) or Settings._field_defaults[attr], allowed)
    if "MGW_EXCLUDE_NAMESPACES" in env:
        values["exclude_namespaces"] = tuple(n.strip() for n in env["MGW_EXCLUDE_NAMESPACES"].split(",") if n.strip())
    for var, attr, limit, expected in (
            ("MGW_LISTEN_PORT", "listen_port", 65535, "a port 1-65535"),
            ("MGW_REVERT_WARNING_THRESHOLD", "revert_warning_threshold", 1_000_000, "an integer 1-1000000")):
        if env.get(var):
            if not (env[var].isascii() and env[var].isdigit()) or not 0 < int(env[var]) <= limit:
                raise SettingsError(f"{var}={env[var]!r} is invalid; expected {expected}")
            values[attr] = int(env[var])
    if "MGW_STARTUP_TAINT" in env:  # present but empty turns the start-up taint gate off
        values["startup_taint"] = env["MGW_STARTUP_TAINT"].strip()
        if values["startup_taint"] and not TAINT_KEY.match(values["startup_taint"]):
            raise SettingsError(f"MGW_STARTUP_TAINT={env['MGW_STARTUP_TAINT']!r} is invalid; expected a taint key "
                                "such as microgateway-cni.airlock.com/not-ready, or empty to turn the gate off")
    host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "443")
    if host:
        values["api_server"] = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    return Settings(**values)
