"""Everything that speaks to the kernel's netfilter (docs/design.md, "Backend seam").

`backend` is the interface every backend implements and imports no backend; `choice` picks and loads
the node's backend; `legacy/` (iptables-legacy: python-iptables, libiptc, the /proc table names) and
`nftables/` (native nf_tables over netlink) are the backends, each with its low-level module.
"""
