"""Which backend a node gets (docs/design.md, "Choosing the backend"), loading it by name, and removing
ours from every backend.

Backends are imported only when loaded: a command pays for the one it uses.
"""

from __future__ import annotations

from cni.errors import NETFILTER_FAILURE, CniError
from cni.netfilter.backend import AUTO, LEGACY, NAMES, NFTABLES, Backend
from cni.netfilter.legacy.tables import TABLE_NAMES, node_uses_legacy


def load(name: str) -> Backend:
    """The backend a conflist names (`netfilterBackend`, after `choose`)."""
    if name == LEGACY:
        from cni.netfilter.legacy.backend import LegacyBackend

        return LegacyBackend()
    if name == NFTABLES:
        from cni.netfilter.nftables.backend import NftablesBackend

        return NftablesBackend()
    raise CniError(NETFILTER_FAILURE, f"netfilter backend {name!r} is not available")


def choose(configured: str, paths: tuple[str, ...] = TABLE_NAMES) -> str:
    """The backend for this node: the configured one, or for "auto" the node's own.

    Called in the runtime's netns - the node's - before anything else: where it has legacy tables
    (kube-proxy or another agent writing with iptables-legacy), the kernel has x_tables and the node
    uses it, so the pod gets legacy rules like everything else there. Otherwise - the legacy modules
    missing (RHEL 10, Bottlerocket) or loaded but unused (iptables-nft, kube-proxy's nftables mode) -
    it gets native nftables. Two small /proc reads."""
    if configured != AUTO:
        return configured
    return LEGACY if node_uses_legacy(paths) else NFTABLES


def remove_everywhere(names: tuple[str, ...] = NAMES) -> list[str]:
    """Remove ours from every backend in the current netns (a node may have switched backends since a
    pod's ADD); the backends that had something. Each is tried before the first failure is raised."""
    removed: list[str] = []
    failures: list[CniError] = []
    for name in names:
        try:
            if load(name).remove():
                removed.append(name)
        except CniError as exc:
            failures.append(exc)
    if failures:
        raise failures[0]
    return removed
