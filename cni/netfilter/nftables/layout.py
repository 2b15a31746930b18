"""Our nft tables (docs/design.md, "nftables backend"): `ip microgateway` and `ip6 microgateway`, owned
whole by us. For every built-in chain a rule set jumps from, a base chain named `<table>-<chain>`
(nat-PREROUTING: type nat, hook prerouting, priority dstnat -100, policy accept) holds those jumps;
the MGW_ chains hold the rules. What the encoder writes, syntax.py prints and the backend reads back.
"""

from __future__ import annotations

from cni.model import BUILTIN_CHAINS, Rule, RuleSet
from cni.netfilter.nftables import nfnetlink as nl

TABLE = "microgateway"
FAMILIES = {4: nl.NFPROTO_IPV4, 6: nl.NFPROTO_IPV6}
FAMILY_NAMES = {nl.NFPROTO_IPV4: "ip", nl.NFPROTO_IPV6: "ip6"}
# (model table, built-in chain) -> (netfilter hook number, hook name, priority): the priorities of
# iptables' own tables (NF_IP_PRI_NAT_DST, NF_IP_PRI_NAT_SRC, NF_IP_PRI_FILTER), which Istio's native
# nftables chains use too.
HOOKS = {
    ("nat", "PREROUTING"): (0, "prerouting", -100),
    ("nat", "INPUT"): (1, "input", 100),
    ("nat", "OUTPUT"): (3, "output", -100),
    ("nat", "POSTROUTING"): (4, "postrouting", 100),
    ("filter", "INPUT"): (1, "input", 0),
    ("filter", "FORWARD"): (2, "forward", 0),
    ("filter", "OUTPUT"): (3, "output", 0),
}


def base_chain(table: str, builtin: str) -> str:
    """Our base chain for a model table's built-in chain: nat-PREROUTING, filter-INPUT."""
    return f"{table}-{builtin}"


BASE_CHAINS = {base_chain(table, builtin): (table, builtin) for table, builtin in HOOKS}


def in_table(rule: Rule, table: str) -> Rule:
    """A rule as it lives in our nft table: a jump sits in our base chain for its built-in chain."""
    if rule.chain not in BUILTIN_CHAINS[table]:
        return rule
    moved: Rule = rule._replace(chain=base_chain(table, rule.chain))  # type: ignore[attr-defined]  # a namedtuple
    return moved


def table_chains(rulesets: list[RuleSet]) -> list[tuple[str, list[tuple[str, Rule]]]]:
    """One family's nft table: its chains in creation order (base chains in built-in order, then
    ours), each with its (model table, rule) list - what `nft list table` shows, in that order."""
    chains: dict[str, list[tuple[str, Rule]]] = {}
    for ruleset in rulesets:
        for builtin in BUILTIN_CHAINS[ruleset.table]:
            jumps = [(ruleset.table, jump) for jump in ruleset.jumps if jump.chain == builtin]
            if jumps:
                chains[base_chain(ruleset.table, builtin)] = jumps
    for ruleset in rulesets:
        for name in ruleset.chains:
            chains.setdefault(name, [])
        for rule in ruleset.rules:
            chains[rule.chain].append((ruleset.table, rule))
    return list(chains.items())
