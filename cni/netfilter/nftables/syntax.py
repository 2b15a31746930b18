"""nft's own text syntax, for logs, CHECK's messages and the golden files (tests/golden/*.nft): our
rules and tables as `nft list` prints them, and the model's addresses as bytes and back.
"""

from __future__ import annotations

import socket

from cni.model import Rule, RuleSet
from cni.netfilter.nftables.layout import BASE_CHAINS, FAMILIES, FAMILY_NAMES, HOOKS, TABLE, in_table, table_chains
from cni.netfilter.nftables.uapi import CT_STATES, CT_STATUSES, VERDICT_NAMES, VERDICTS

TYPE_CHECKING = False  # annotations only: typing stays off the per-pod path (cni/records.py)
if TYPE_CHECKING:
    from typing import Any

# How `nft list` spells a standard priority (the rest it prints as numbers).
PRIORITY_NAMES = {("nat", "prerouting", -100): "dstnat", ("nat", "postrouting", 100): "srcnat",
                  ("filter", "input", 0): "filter", ("filter", "forward", 0): "filter",
                  ("filter", "output", 0): "filter"}
HOOK_NAMES = {number: name for number, name, _ in HOOKS.values()}


def packed_cidr(cidr: str, family: int) -> tuple[bytes, int]:
    """"::1/128" -> (address bytes with the host bits cleared, prefix length)."""
    address, _, prefix = cidr.partition("/")
    packed = socket.inet_pton(socket.AF_INET if family == 4 else socket.AF_INET6, address)
    bits = len(packed) * 8
    length = int(prefix) if prefix else bits
    mask = ((1 << bits) - 1) ^ ((1 << (bits - length)) - 1)
    return (int.from_bytes(packed, "big") & mask).to_bytes(len(packed), "big"), length


def text_address(packed: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)


def _prefix(cidr: str, family: int) -> str:
    packed, prefix = packed_cidr(cidr, family)
    address = text_address(packed)
    return address if prefix == len(packed) * 8 else f"{address}/{prefix}"


def render(rule: Rule, family: int) -> str:
    """The rule's statement as `nft list` prints it."""
    ip = FAMILY_NAMES[FAMILIES[family]]
    parts = []
    if rule.src:
        parts.append(f"{ip} saddr {_prefix(rule.src, family)}")
    if rule.dst:
        parts.append(f"{ip} daddr {_prefix(rule.dst, family)}")
    if rule.in_iface:
        parts.append(f'iifname "{rule.in_iface}"')
    if rule.out_iface:
        parts.append(f'oifname "{rule.out_iface}"')
    protocol = rule.protocol
    if rule.dport:
        parts.append(f"{protocol} dport " + rule.dport.replace(":", "-"))
    elif protocol:
        parts.append(f"meta l4proto {protocol}")
    if rule.uid_owner is not None:
        parts.append(f"meta skuid {rule.uid_owner}")
    if rule.ctstate:
        names = rule.ctstate.upper().split(",")
        table = CT_STATUSES if all(name in CT_STATUSES for name in names) else CT_STATES
        ordered = sorted(names, key=lambda name: table.get(name, 0))  # nft prints bits in ascending order
        parts.append(f"ct {'status' if table is CT_STATUSES else 'state'} " + ",".join(n.lower() for n in ordered))
    if rule.target == "REDIRECT":
        parts.append(f"redirect to :{rule.to_port}")
    elif rule.target in VERDICTS:
        parts.append(rule.target.lower())
    else:
        parts.append(f"jump {rule.target}")
    return " ".join(parts)


def where(family: int, chain: str) -> str:
    """A chain of our nft table: "ip6 microgateway MGW_OUTPUT"."""
    return f"{FAMILY_NAMES[FAMILIES[family]]} {TABLE} {chain}"


def describe(rule: Rule, family: int, table: str) -> str:
    """A rule with its place in our nft table: "ip6 microgateway MGW_OUTPUT: tcp dport 19003 ..."."""
    return f"{where(family, in_table(rule, table).chain)}: {render(rule, family)}"


def base_syntax(base: tuple[Any, ...] | None) -> str:
    """A live chain's (type, hook, priority, policy), None for a regular chain, as nft declares it."""
    if base is None:
        return "a regular chain"
    kind, hook, priority, policy = base
    policy_name = str(VERDICT_NAMES.get(policy, policy)).lower()
    return f"type {kind} hook {HOOK_NAMES.get(hook, hook)} priority {priority}; policy {policy_name};"


def _base_header(name: str) -> str:
    table, builtin = BASE_CHAINS[name]
    _, hook, priority = HOOKS[table, builtin]
    shown = PRIORITY_NAMES.get((table, hook, priority), str(priority))
    return f"type {table} hook {hook} priority {shown}; policy accept;"


def render_table(rulesets: list[RuleSet]) -> str:
    """One family's table as `nft list table ip|ip6 microgateway` prints it: the nft golden files."""
    family = rulesets[0].family
    blocks = []
    for name, rules in table_chains(rulesets):
        lines = ([_base_header(name)] if name in BASE_CHAINS else []) + [render(rule, family) for _, rule in rules]
        blocks.append(f"\tchain {name} {{\n" + "".join(f"\t\t{line}\n" for line in lines) + "\t}")
    return f"table {FAMILY_NAMES[FAMILIES[family]]} {TABLE} {{\n" + "\n\n".join(blocks) + "\n}\n"
