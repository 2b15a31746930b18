"""The `auto` backend rule on fake /proc files: legacy only where the node already has legacy tables."""

from __future__ import annotations

import pytest

from cni import backend
from cni.config import PluginConfig
from cni.errors import CniError
from cni.policy import Plan


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


class FakeBackend(backend.Backend):
    """Records what it is asked; `fails` makes remove raise."""

    needs_worker = False

    def __init__(self, name: str, had: bool = False, fails: bool = False) -> None:
        self.name, self.had, self.fails, self.calls = name, had, fails, []

    def apply(self, rulesets):
        self.calls.append(("apply", [(rs.family, rs.table) for rs in rulesets]))

    def read(self, families, tables=("nat",)):
        return []

    def remove(self):
        self.calls.append(("remove",))
        if self.fails:
            raise CniError(100, f"{self.name} failed")
        return self.had


def test_del_tries_every_backend_before_raising(monkeypatch):
    fakes = {"iptables-legacy": FakeBackend("iptables-legacy", fails=True), "nftables": FakeBackend("nftables", True)}
    monkeypatch.setattr(backend, "load", fakes.__getitem__)
    with pytest.raises(CniError, match="iptables-legacy failed"):
        backend.remove_everywhere()
    assert fakes["nftables"].calls == [("remove",)]
    fakes["iptables-legacy"].fails = False
    assert backend.remove_everywhere() == ["nftables"]


def test_a_backend_without_preparation_runs_in_process_and_clears_the_other(monkeypatch):
    """nftables: no worker is forked; after applying, what the other backend left is removed."""
    from cni import applier, netns

    nft, legacy = FakeBackend("nftables"), FakeBackend("iptables-legacy", had=True)
    monkeypatch.setattr(backend, "load", {"nftables": nft, "iptables-legacy": legacy}.__getitem__)
    monkeypatch.setattr(netns, "enter_pod", lambda path: None)
    monkeypatch.setattr(netns, "pod_families", lambda hint: [4, 6])
    with applier.Applier(nft, "/run/netns/none", ipv6_hint=False) as pod:
        assert pod._worker is None
        assert pod.configure(Plan(), PluginConfig()) == [4, 6]
    assert nft.calls[0][0] == "apply" and {(4, "nat"), (6, "nat")} <= set(nft.calls[0][1])
    assert legacy.calls == [("remove",)]
