"""The nftables backend's encoder and decoder without a kernel: every rule of the model survives the
round trip through nf_tables expressions, and anything else is reported, not silently accepted."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cni.config import PluginConfig
from cni.errors import CniError
from cni.model import Rule
from cni.netfilter.nftables import decoder, encoder, syntax, uapi
from cni.netfilter.nftables import nfnetlink as nl
from cni.netfilter.nftables.backend import NftablesBackend
from cni.policy import Plan, plan_for
from cni.rules import build_nat, build_rulesets
from tests.support import golden


def encoded(rule: Rule, family: int) -> bytes:
    """The NFTA_RULE_EXPRESSIONS payload the kernel stores and dumps back."""
    return b"".join(encoder.expressions(rule, family))


ports = st.integers(1, 65535)
dports = st.one_of(st.none(), ports.map(str), st.tuples(ports, ports).map(
    lambda p: f"{min(p)}:{max(p)}" if p[0] != p[1] else str(p[0])))


@st.composite
def rules(draw: st.DrawFn) -> tuple[Rule, int]:
    family = draw(st.sampled_from([4, 6]))
    bits = 32 if family == 4 else 128
    address = st.tuples(st.integers(0, 2**bits - 1), st.integers(1, bits))

    def cidr(value: tuple[int, int]) -> str:
        number, prefix = value
        number &= ((1 << bits) - 1) ^ ((1 << (bits - prefix)) - 1)
        packed = number.to_bytes(bits // 8, "big")
        return f"{syntax.text_address(packed)}/{prefix}"

    target = draw(st.sampled_from(["RETURN", "REDIRECT", "MGW_INBOUND", "MGW_OUTPUT", "ACCEPT", "DROP"]))
    protocol = draw(st.sampled_from(["tcp", "udp", "icmp", "ipv6-icmp", None]))
    states = draw(st.one_of(st.lists(st.sampled_from(list(uapi.CT_STATES)), unique=True),
                            st.sampled_from([["DNAT"], ["SNAT"]])))
    return Rule(
        chain=draw(st.sampled_from(["MGW_INBOUND", "MGW_OUTPUT", "PREROUTING"])),
        target=target,
        protocol=protocol,
        dport=draw(dports) if protocol in ("tcp", "udp") else None,
        src=draw(st.one_of(st.none(), address.map(cidr))),
        dst=draw(st.one_of(st.none(), address.map(cidr))),
        in_iface=draw(st.sampled_from([None, "lo", "eth0"])),
        out_iface=draw(st.sampled_from([None, "lo", "eth0", "a" * 15])),
        uid_owner=draw(st.one_of(st.none(), st.integers(0, 2**32 - 2))),
        # the order iptables-save prints, which decoding reproduces
        ctstate=",".join(s for s in (*uapi.CT_STATES, *uapi.CT_STATUSES) if s in states) or None,
        to_port=draw(ports) if target == "REDIRECT" else None,
    ), family


@given(rules())
def test_every_rule_of_the_model_survives_the_round_trip(case):
    rule, family = case
    assert decoder.decode(rule.chain, family, encoded(rule, family)) == rule


@pytest.mark.parametrize("mesh", ["none", "istio"])
@pytest.mark.parametrize("family", [4, 6])
def test_built_rule_sets_round_trip(mesh, family):
    ruleset = build_nat(Plan(mesh=mesh, excluded_ports=(8081,)), PluginConfig(), family)
    for rule in (*ruleset.rules, *ruleset.jumps):
        assert decoder.decode(rule.chain, family, encoded(rule, family)) == rule


def test_foreign_expressions_are_unexpected():
    """A counter, a different protocol or a goto is not ours: CHECK must see it as drift."""
    base = Rule("MGW_INBOUND", "RETURN", dport="80")
    counter = encoder.expr("counter")
    with pytest.raises(decoder.Unexpected):
        decoder.decode("MGW_INBOUND", 4, encoded(base, 4) + counter)
    gre = [encoder.meta(uapi.META_L4PROTO), encoder.cmp(uapi.CMP_EQ, bytes([47])),
           encoder.verdict(uapi.VERDICTS["RETURN"])]
    with pytest.raises(decoder.Unexpected):
        decoder.decode("MGW_INBOUND", 4, b"".join(gre))
    goto = [encoder.meta(uapi.META_L4PROTO), encoder.cmp(uapi.CMP_EQ, bytes([6])),
            encoder.verdict(-4, "MGW_INBOUND")]
    with pytest.raises(decoder.Unexpected):
        decoder.decode("PREROUTING", 4, b"".join(goto))


def test_batch_replaces_existing_tables_and_creates_exclusively():
    rulesets = [build_nat(Plan(), PluginConfig(), 4)]
    commands = encoder.batch(rulesets, present={4, 6})
    kinds = [(command, family) for command, family, *_ in commands]
    assert kinds[:3] == [(nl.DELTABLE, nl.NFPROTO_IPV4), (nl.NEWTABLE, nl.NFPROTO_IPV4),
                         (nl.NEWCHAIN, nl.NFPROTO_IPV4)]
    assert (nl.DELTABLE, nl.NFPROTO_IPV6) in kinds and (nl.NEWTABLE, nl.NFPROTO_IPV6) not in kinds
    new_table = commands[1]
    assert new_table[2] & nl.NLM_F_EXCL
    fresh = encoder.batch(rulesets, present=set())
    assert all(command != nl.DELTABLE for command, *_ in fresh)


def test_base_chains_hook_nat_at_dstnat_priority_with_accept_policy():
    body = dict(nl.attributes(encoder.chain_body("nat-PREROUTING")))
    hook = dict(nl.attributes(body[uapi.CHAIN_HOOK]))
    assert nl.text(body[uapi.CHAIN_TYPE]) == "nat"
    assert nl.int32(hook[uapi.HOOK_NUM]) == 0 and nl.int32(hook[uapi.HOOK_PRIORITY]) == -100
    assert nl.int32(body[uapi.CHAIN_POLICY]) == uapi.NF_ACCEPT
    assert uapi.CHAIN_HOOK not in dict(nl.attributes(encoder.chain_body("MGW_INBOUND")))


def test_uid_is_compared_in_host_byte_order_ports_in_network_byte_order():
    """meta skuid loads a host-order u32, tcp dport the packet's big-endian field."""
    exprs = decoder.rule_expressions(encoded(Rule("MGW_OUTPUT", "RETURN", dport="19003", uid_owner=1337), 4))
    values = [decoder._data_value(data[uapi.CMP_DATA]) for name, data in exprs if name == "cmp"]
    assert struct.pack(">H", 19003) in values and struct.pack("=I", 1337) in values


def test_filter_rules_translate_every_field():
    """The non-TCP-inbound kind of rule: interface, conntrack state, other protocols, accept/drop."""
    established = Rule("MGW_INPUT", "ACCEPT", protocol=None, ctstate="RELATED,ESTABLISHED")
    assert syntax.render(established, 4) == "ct state established,related accept"
    assert decoder.decode("MGW_INPUT", 4, encoded(established, 4)) == established
    loopback = Rule("MGW_INPUT", "ACCEPT", protocol=None, in_iface="lo")
    assert syntax.render(loopback, 6) == 'iifname "lo" accept'
    redirected = Rule("MGW_INPUT", "RETURN", ctstate="DNAT")
    assert syntax.render(redirected, 4) == "meta l4proto tcp ct status dnat return"
    assert decoder.decode("MGW_INPUT", 4, encoded(redirected, 4)) == redirected
    with pytest.raises(CniError):
        encoder.expressions(Rule("MGW_INPUT", "RETURN", ctstate="ESTABLISHED,DNAT"), 4)
    udp = Rule("MGW_INPUT", "ACCEPT", protocol="udp", dport="53")
    assert syntax.render(udp, 6) == "udp dport 53 accept"
    assert decoder.decode("MGW_INPUT", 6, encoded(Rule("MGW_INPUT", "DROP", protocol=None), 6)).target == "DROP"


def test_render_matches_nft_list_syntax():
    rule = Rule("MGW_OUTPUT", "MGW_INBOUND", src="::6/128", out_iface="lo", uid_owner=1337)
    assert syntax.render(rule, 6) == 'ip6 saddr ::6 oifname "lo" meta l4proto tcp meta skuid 1337 jump MGW_INBOUND'
    assert syntax.render(Rule("MGW_INBOUND", "RETURN", dport="19000:19002"), 4) == "tcp dport 19000-19002 return"
    assert syntax.render(Rule("MGW_INBOUND", "REDIRECT", to_port=13378), 4) == "meta l4proto tcp redirect to :13378"


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("case", sorted(golden.CASES))
def test_nft_tables_match_the_golden_files(case, family):
    """tests/golden/<case>-v<family>.nft: what `nft list table` prints for the case (MGW_UPDATE_GOLDEN=1)."""
    rulesets = build_rulesets(plan_for(golden.CASES[case]), PluginConfig(), [family])
    golden.check(case, family, syntax.render_table(rulesets), update=True, suffix=".nft")


@pytest.mark.parametrize("err", nl.UNSUPPORTED)
def test_a_kernel_without_nf_tables_holds_nothing_of_ours(monkeypatch, err):
    """Reading and removing find nothing (DEL on a legacy-only node, diagnose anywhere); applying fails.
    The kernel's refusal is simulated: this machine has nf_tables."""
    def no_nf_tables() -> nl.Netlink:
        raise nl.NetlinkError("cannot open a netfilter netlink socket", err)

    monkeypatch.setattr(nl, "Netlink", no_nf_tables)
    backend = NftablesBackend()
    assert not any(live.chains or live.rules or live.jumps for live in backend.read([4, 6]))
    assert backend.remove() is False
    rulesets = build_rulesets(plan_for(golden.CASES["no-mesh"]), PluginConfig(), [4])
    with pytest.raises(CniError, match="cannot open a netfilter netlink socket"):
        backend.apply(rulesets)


def test_other_netlink_errors_still_fail_reading_and_removing(monkeypatch):
    def refused() -> nl.Netlink:
        raise nl.NetlinkError("cannot open a netfilter netlink socket", 1)

    monkeypatch.setattr(nl, "Netlink", refused)
    backend = NftablesBackend()
    with pytest.raises(CniError, match="Operation not permitted"):
        backend.read([4])
    with pytest.raises(CniError, match="Operation not permitted"):
        backend.remove()
