"""Our rule sets as nf_tables netlink: each rule's expressions, in the order `nft` prints them, each
chain's attributes, and the one batch that replaces our tables (docs/design.md, "nftables backend").
"""

from __future__ import annotations

import functools
import struct

from cni.errors import NETFILTER_FAILURE, CniError
from cni.model import Rule, RuleSet, by_family, is_ours
from cni.netfilter.nftables import nfnetlink as nl
from cni.netfilter.nftables import uapi
from cni.netfilter.nftables.layout import BASE_CHAINS, FAMILIES, HOOKS, TABLE, in_table, table_chains
from cni.netfilter.nftables.syntax import describe, packed_cidr


def expr(name: str, *data: bytes) -> bytes:
    return nl.nest(uapi.LIST_ELEM, nl.string(uapi.EXPR_NAME, name), nl.nest(uapi.EXPR_DATA, *data))


def meta(key: int) -> bytes:
    return expr("meta", nl.be32(uapi.META_KEY, key), nl.be32(uapi.META_DREG, uapi.REG_1))


def _payload(base: int, offset: int, length: int) -> bytes:
    return expr("payload", nl.be32(uapi.PAYLOAD_DREG, uapi.REG_1), nl.be32(uapi.PAYLOAD_BASE, base),
                 nl.be32(uapi.PAYLOAD_OFFSET, offset), nl.be32(uapi.PAYLOAD_LEN, length))


def cmp(op: int, value: bytes) -> bytes:
    return expr("cmp", nl.be32(uapi.CMP_SREG, uapi.REG_1), nl.be32(uapi.CMP_OP, op),
                nl.nest(uapi.CMP_DATA, nl.attr(uapi.DATA_VALUE, value)))


def _bitwise(mask: bytes) -> bytes:
    return expr("bitwise", nl.be32(uapi.BITWISE_SREG, uapi.REG_1), nl.be32(uapi.BITWISE_DREG, uapi.REG_1),
                 nl.be32(uapi.BITWISE_LEN, len(mask)), nl.nest(uapi.BITWISE_MASK, nl.attr(uapi.DATA_VALUE, mask)),
                 nl.nest(uapi.BITWISE_XOR, nl.attr(uapi.DATA_VALUE, bytes(len(mask)))))


def verdict(code: int, chain: str = "") -> bytes:
    attributes = [nl.be32(uapi.VERDICT_CODE, code)] + ([nl.string(uapi.VERDICT_CHAIN, chain)] if chain else [])
    return expr("immediate", nl.be32(uapi.IMMEDIATE_DREG, uapi.REG_VERDICT),
                nl.nest(uapi.IMMEDIATE_DATA, nl.nest(uapi.DATA_VERDICT, *attributes)))


def _address(family: int, offset: int, cidr: str) -> list[bytes]:
    packed, prefix = packed_cidr(cidr, family)
    length = uapi.ADDRESS[family][2]
    exprs = [_payload(uapi.NETWORK_HEADER, offset, length)]
    if prefix < length * 8:
        exprs.append(_bitwise((((1 << prefix) - 1) << (length * 8 - prefix)).to_bytes(length, "big")))
    exprs.append(cmp(uapi.CMP_EQ, packed))
    return exprs


def _protocol(rule: Rule) -> str | None:
    protocol = rule.protocol
    if protocol is not None and protocol not in uapi.PROTOCOLS:
        raise CniError(NETFILTER_FAILURE, f"nftables backend: protocol {rule.protocol!r} is not supported")
    return protocol


def _ct_match(states: str) -> tuple[int, int]:
    """--ctstate's value as (ct key, bits): states and NAT pseudo-states cannot mix in one nft match."""
    names = states.upper().split(",")
    if all(name in uapi.CT_STATES for name in names):
        return uapi.CT_STATE, sum(uapi.CT_STATES[name] for name in names)
    if all(name in uapi.CT_STATUSES for name in names):
        return uapi.CT_STATUS, sum(uapi.CT_STATUSES[name] for name in names)
    raise CniError(NETFILTER_FAILURE, f"nftables backend: conntrack state {states!r} is not supported")


def expressions(rule: Rule, family: int) -> list[bytes]:
    """The rule as nf_tables expressions, in the order `nft` prints them (render)."""
    src_offset, dst_offset, _ = uapi.ADDRESS[family]
    exprs: list[bytes] = []
    if rule.src:
        exprs += _address(family, src_offset, rule.src)
    if rule.dst:
        exprs += _address(family, dst_offset, rule.dst)
    for key, name in ((uapi.META_IIFNAME, rule.in_iface), (uapi.META_OIFNAME, rule.out_iface)):
        if name:
            exprs += [meta(key), cmp(uapi.CMP_EQ, name.encode().ljust(uapi.IFNAMSIZ, b"\0"))]
    protocol = _protocol(rule)
    if protocol:
        exprs += [meta(uapi.META_L4PROTO), cmp(uapi.CMP_EQ, bytes([uapi.PROTOCOLS[protocol]]))]
    if rule.dport:
        if protocol not in uapi.PORT_PROTOCOLS:
            raise CniError(NETFILTER_FAILURE, f"nftables backend: a port needs tcp, udp or sctp: {rule.render()}")
        low, _, high = rule.dport.partition(":")
        exprs.append(_payload(uapi.TRANSPORT_HEADER, uapi.DPORT_OFFSET, 2))
        if high:
            exprs += [cmp(uapi.CMP_GTE, struct.pack(">H", int(low))),
                      cmp(uapi.CMP_LTE, struct.pack(">H", int(high)))]
        else:
            exprs.append(cmp(uapi.CMP_EQ, struct.pack(">H", int(low))))
    if rule.uid_owner is not None:
        exprs += [meta(uapi.META_SKUID), cmp(uapi.CMP_EQ, struct.pack("=I", rule.uid_owner))]
    if rule.ctstate:
        key, bits = _ct_match(rule.ctstate)
        exprs += [expr("ct", nl.be32(uapi.CT_KEY, key), nl.be32(uapi.CT_DREG, uapi.REG_1)),
                  _bitwise(struct.pack("=I", bits)), cmp(uapi.CMP_NEQ, bytes(4))]
    if rule.target == "REDIRECT":
        if rule.to_port is None:
            raise CniError(NETFILTER_FAILURE, f"nftables backend: REDIRECT without a port: {rule.render()}")
        exprs += [expr("immediate", nl.be32(uapi.IMMEDIATE_DREG, uapi.REG_1),
                        nl.nest(uapi.IMMEDIATE_DATA, nl.attr(uapi.DATA_VALUE, struct.pack(">H", rule.to_port)))),
                  expr("redir", nl.be32(uapi.REDIR_REG_PROTO_MIN, uapi.REG_1),
                        nl.be32(uapi.REDIR_FLAGS, uapi.NF_NAT_RANGE_PROTO_SPECIFIED))]
    elif rule.target in uapi.VERDICTS:
        exprs.append(verdict(uapi.VERDICTS[rule.target]))
    elif is_ours(rule.target):
        exprs.append(verdict(uapi.JUMP, rule.target))
    else:
        raise CniError(NETFILTER_FAILURE, f"nftables backend: target {rule.target!r} is not supported")
    return exprs


def _table() -> bytes:
    return nl.string(uapi.TABLE_NAME, TABLE)


def chain_body(name: str) -> bytes:
    body = nl.string(uapi.CHAIN_TABLE, TABLE) + nl.string(uapi.CHAIN_NAME, name)
    if name in BASE_CHAINS:
        table, builtin = BASE_CHAINS[name]
        hook, _, priority = HOOKS[table, builtin]
        body += nl.nest(uapi.CHAIN_HOOK, nl.be32(uapi.HOOK_NUM, hook), nl.be32(uapi.HOOK_PRIORITY, priority))
        body += nl.be32(uapi.CHAIN_POLICY, uapi.NF_ACCEPT) + nl.string(uapi.CHAIN_TYPE, table)
    return body


def _rule_body(rule: Rule, family: int, table: str) -> bytes:
    return (nl.string(uapi.RULE_TABLE, TABLE) + nl.string(uapi.RULE_CHAIN, in_table(rule, table).chain)
            + nl.nest(uapi.RULE_EXPRESSIONS, *expressions(rule, family)))


def _rule_error(rule: Rule, family: int, table: str) -> str:
    """What a failed NEWRULE names (rendered only then)."""
    return f"rule {describe(rule, family, table)}"


def batch(rulesets: list[RuleSet], present: set[int]) -> list[nl.Command]:
    """The one transaction that replaces our tables (in the families `present`) with these rule sets.

    Tables are deleted only where they exist and created exclusively, so a table that appeared since
    we looked aborts the whole transaction instead of merging into it. Deleting nothing also keeps the
    socket's close quick: nf_tables waits for an RCU grace period there once it has objects to free."""
    commands: list[nl.Command] = []
    wanted = by_family(rulesets)
    for family, nfproto in FAMILIES.items():
        if family in present:
            commands.append((nl.DELTABLE, nfproto, 0, _table(), f"delete IPv{family} table {TABLE}"))
        if family not in wanted:
            continue
        commands.append((nl.NEWTABLE, nfproto, nl.NLM_F_CREATE | nl.NLM_F_EXCL, _table(),
                         f"add IPv{family} table {TABLE}"))
        chains = table_chains(wanted[family])
        for name, _ in chains:
            commands.append((nl.NEWCHAIN, nfproto, nl.NLM_F_CREATE, chain_body(name), f"add IPv{family} chain {name}"))
        for _, rules in chains:
            for table, rule in rules:
                commands.append((nl.NEWRULE, nfproto, nl.NLM_F_CREATE | nl.NLM_F_APPEND,
                                 _rule_body(rule, family, table), functools.partial(_rule_error, rule, family, table)))
    return commands
