"""The `auto` backend rule on fake /proc files: legacy only where the node already has legacy tables."""

from __future__ import annotations

import pytest

from cni import backend


@pytest.mark.parametrize(("ipv4", "ipv6", "expected"), [
    (None, None, "nftables"),  # no legacy modules at all (RHEL 10, Bottlerocket)
    ("", "", "nftables"),  # modules loaded, no table in use (iptables-nft, kube-proxy nftables mode)
    ("nat\nfilter\n", "", "iptables-legacy"),  # kube-proxy with iptables-legacy
    ("", "filter\n", "iptables-legacy"),
    (None, "mangle\n", "iptables-legacy"),
])
def test_auto_follows_the_node(tmp_path, ipv4, ipv6, expected):
    paths = []
    for name, content in (("ip_tables_names", ipv4), ("ip6_tables_names", ipv6)):
        path = tmp_path / name
        if content is not None:
            path.write_text(content)
        paths.append(str(path))
    assert backend.choose("auto", tuple(paths)) == expected


@pytest.mark.parametrize("configured", ["iptables-legacy", "nftables"])
def test_an_explicit_backend_is_never_second_guessed(tmp_path, configured):
    names = tmp_path / "ip_tables_names"
    names.write_text("nat\n")
    assert backend.choose(configured, (str(names),)) == configured
