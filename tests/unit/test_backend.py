"""Choosing and loading backends (cni/netfilter/choice.py): the `auto` rule on fake /proc files (legacy only
where the node already has legacy tables), DEL through every backend, ADD clearing the other backend."""

from __future__ import annotations

import pytest

from cni.config import PluginConfig
from cni.errors import CniError
from cni.model import Live
from cni.netfilter import choice
from cni.pod.applier import Applier
from cni.pod.runner import InProcess
from cni.policy import Plan
from tests.support.fakes import FakeBackend


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
    assert choice.choose("auto", tuple(paths)) == expected


@pytest.mark.parametrize("configured", ["iptables-legacy", "nftables"])
def test_an_explicit_backend_is_never_second_guessed(tmp_path, configured):
    names = tmp_path / "ip_tables_names"
    names.write_text("nat\n")
    assert choice.choose(configured, (str(names),)) == configured


def _holding_rules(name: str) -> FakeBackend:
    fake = FakeBackend(name)
    fake.state = {(4, "nat"): Live(4, "nat", ("MGW_INBOUND",), (), ())}
    return fake


def test_del_tries_every_backend_before_raising(monkeypatch):
    fakes = {"iptables-legacy": FakeBackend("iptables-legacy"), "nftables": _holding_rules("nftables")}
    fakes["iptables-legacy"].fail = CniError(100, "iptables-legacy failed")
    monkeypatch.setattr(choice, "load", fakes.__getitem__)
    with pytest.raises(CniError, match="iptables-legacy failed"):
        choice.remove_everywhere()
    assert fakes["nftables"].calls == ["remove"] and fakes["nftables"].state == {}
    fakes["iptables-legacy"].fail = None
    fakes["nftables"] = _holding_rules("nftables")
    assert choice.remove_everywhere() == ["nftables"]


def test_applying_with_one_backend_clears_the_other(monkeypatch):
    """After our rules are in place through nftables, what iptables-legacy held for the pod is removed."""
    nft, legacy = FakeBackend("nftables"), _holding_rules("iptables-legacy")
    monkeypatch.setattr(choice, "load", {"nftables": nft, "iptables-legacy": legacy}.__getitem__)
    entered: list[str] = []
    with Applier(nft, "/run/netns/none", True, InProcess(nft.prepare, enter=entered.append)) as pod:
        assert pod.configure(Plan(), PluginConfig()) == [4, 6]
    assert entered == ["/run/netns/none"]
    assert nft.calls == ["apply"] and set(nft.state) == {(4, "nat"), (4, "filter"), (6, "nat"), (6, "filter")}
    assert legacy.calls == ["remove"] and legacy.state == {}
