"""Which netfilter backend writes a protected pod's rules: the conflist's `netfilterBackend`, or for
`auto` the node's own choice (docs/design.md, "Choosing the backend").

`auto` follows the node: when the runtime's network namespace - the node's, where the plugin starts -
has legacy x_tables tables (kube-proxy or another agent writing with iptables-legacy), the kernel has
the legacy backend and the node uses it, so the pod gets legacy rules like everything else on the
node. Otherwise - the legacy modules missing (RHEL 10, Bottlerocket) or loaded but unused (iptables-nft,
kube-proxy's nftables mode) - the pod gets native nftables. One read of two small /proc files, before
the plugin enters the pod.
"""

from __future__ import annotations

LEGACY = "iptables-legacy"
NFTABLES = "nftables"
LEGACY_TABLE_NAMES = ("/proc/self/net/ip_tables_names", "/proc/self/net/ip6_tables_names")


def node_uses_legacy(paths: tuple[str, ...] = LEGACY_TABLE_NAMES) -> bool:
    """True when the current netns has any legacy x_tables table (the files exist only with the modules)."""
    for path in paths:
        try:
            with open(path, "rb") as names:
                if names.read().strip():
                    return True
        except OSError:
            continue
    return False


def choose(configured: str, paths: tuple[str, ...] = LEGACY_TABLE_NAMES) -> str:
    """The backend for this node: the configured one, or for "auto" legacy only where the node uses it."""
    if configured != "auto":
        return configured
    return LEGACY if node_uses_legacy(paths) else NFTABLES
