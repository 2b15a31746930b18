"""Plan -> our rule sets: per address family one in the nat table, one in the filter table. Pure: no I/O.

Design (docs/design.md, "Rule design"), the same for IPv4 and IPv6:

  PREROUTING -p tcp -j MGW_PREROUTING      inserted first
  OUTPUT     -p tcp -j MGW_OUTPUT          inserted first
  MGW_INBOUND     RETURN for exempt ports (Engine's own, excluded, Istio's), else REDIRECT to the Engine.
                  Every redirect of the pod goes through this one chain, so the 19003 probe exercises
                  the very rule real inbound traffic takes (I4).
  MGW_PREROUTING  no mesh: everything to MGW_INBOUND (I1). Istio: only the ports Istio does not capture,
                  so we never compete with a redirect Istio makes, in either iptables backend (I2).
  MGW_OUTPUT      the probe (lo, loopback address, validation port) -> MGW_INBOUND (I4). Istio: the
                  proxy's uid on lo, from the inbound passthrough source or to loopback -> MGW_INBOUND;
                  Istio itself never NATs those packets, so again no competition (I2). Nothing else
                  in OUTPUT is touched, so the Engine's own connection to the app is never redirected (I3).

  filter table (docs/design.md, "I7: nothing but TCP gets in"):
  INPUT      -j MGW_INPUT                 inserted first
  MGW_INPUT  RETURN for lo, replies (RELATED,ESTABLISHED), TCP some redirect took (ctstate DNAT, ours or
             Istio's) and TCP to exempt ports; other TCP DROP, so no address or family the nat rules miss
             is a way around the Engine (I1). With nonTCPInbound drop: RETURN for ICMP/ICMPv6 and the
             allowed UDP ports, then DROP for everything else (I7). RETURN, not ACCEPT: rules of others
             after our jump stay in force; DROP, not REJECT: no ICMP errors towards spoofed sources.
"""

from __future__ import annotations

from cni.config import PluginConfig
from cni.contract import LOOPBACK
from cni.model import Rule, RuleSet
from cni.policy import Plan

NAT = "nat"
# Our chains, each constant named as the chain; the built-in chains they hang from are plain strings
# ("PREROUTING").
MGW_INBOUND = "MGW_INBOUND"
MGW_PREROUTING = "MGW_PREROUTING"
MGW_OUTPUT = "MGW_OUTPUT"
NAT_CHAINS = (MGW_INBOUND, MGW_OUTPUT, MGW_PREROUTING)
NAT_JUMPS = (("PREROUTING", MGW_PREROUTING), ("OUTPUT", MGW_OUTPUT))

FILTER = "filter"
MGW_INPUT = "MGW_INPUT"
FILTER_CHAINS = (MGW_INPUT,)
FILTER_JUMPS = (("INPUT", MGW_INPUT),)
ICMP = {4: "icmp", 6: "ipv6-icmp"}  # iptables-save's names
REPLIES = "RELATED,ESTABLISHED"  # in the order libxt_conntrack prints states
REDIRECTED = "DNAT"  # conntrack's mark on a connection that a REDIRECT (a destination NAT) took

HOST_PREFIX = {4: "/32", 6: "/128"}
# Source address of Istio's inbound passthrough connections to the application.
ISTIO_PASSTHROUGH_SOURCE = {4: "127.0.0.6/32", 6: "::6/128"}


def port_ranges(ports: set[int]) -> list[str]:
    """Collapse ports into iptables `--dport` values: {1,2,3,7} -> ['1:3', '7']."""
    ranges: list[str] = []
    ordered = sorted(ports)
    start = 0
    for i in range(1, len(ordered) + 1):
        if i == len(ordered) or ordered[i] != ordered[i - 1] + 1:
            low, high = ordered[start], ordered[i - 1]
            ranges.append(str(low) if low == high else f"{low}:{high}")
            start = i
    return ranges


def exempt_ports(plan: Plan, config: PluginConfig) -> set[int]:
    """Ports that must never be redirected to the Engine."""
    ports = {config.engine_port, *config.engine_own_ports, *plan.excluded_ports}
    if plan.mesh == "istio":
        ports.update(config.istio_ports)
    return ports


def build_nat(plan: Plan, config: PluginConfig, family: int) -> RuleSet:
    """The nat-table rule set of one family."""
    loopback = LOOPBACK[family] + HOST_PREFIX[family]
    exempt = exempt_ports(plan, config)
    rules = [Rule(MGW_INBOUND, "RETURN", dport=dport) for dport in port_ranges(exempt)]
    rules.append(Rule(MGW_INBOUND, "REDIRECT", to_port=config.engine_port))

    if plan.mesh == "none":
        rules.append(Rule(MGW_PREROUTING, MGW_INBOUND))
    elif plan.istio_include is None:
        uncaptured = set(plan.istio_exclude) - exempt
        rules.extend(Rule(MGW_PREROUTING, MGW_INBOUND, dport=dport) for dport in port_ranges(uncaptured))
    else:
        captured = set(plan.istio_include) - set(plan.istio_exclude)
        rules.extend(Rule(MGW_PREROUTING, "RETURN", dport=dport) for dport in port_ranges(captured))
        rules.append(Rule(MGW_PREROUTING, MGW_INBOUND))

    rules.append(Rule(MGW_OUTPUT, MGW_INBOUND, dst=loopback, out_iface="lo", dport=str(config.validation_port)))
    if plan.mesh == "istio":
        uid = config.istio_proxy_uid
        rules.append(Rule(MGW_OUTPUT, MGW_INBOUND, src=ISTIO_PASSTHROUGH_SOURCE[family], out_iface="lo", uid_owner=uid))
        rules.append(Rule(MGW_OUTPUT, MGW_INBOUND, dst=loopback, out_iface="lo", uid_owner=uid))

    jumps = tuple(Rule(builtin, own) for builtin, own in NAT_JUMPS)
    return RuleSet(family=family, table=NAT, chains=NAT_CHAINS, rules=tuple(rules), jumps=jumps)


# The guard's last rule when non-TCP inbound is dropped (I7): what diagnose looks for.
CATCH_ALL_DROP = Rule(MGW_INPUT, "DROP", protocol=None)


def build_guard(plan: Plan, config: PluginConfig, family: int) -> RuleSet:
    """The filter-table rule set of one family: what may come in at all."""
    rules = [Rule(MGW_INPUT, "RETURN", protocol=None, in_iface="lo"),
             Rule(MGW_INPUT, "RETURN", protocol=None, ctstate=REPLIES),
             Rule(MGW_INPUT, "RETURN", ctstate=REDIRECTED)]
    rules.extend(Rule(MGW_INPUT, "RETURN", dport=dport) for dport in port_ranges(exempt_ports(plan, config)))
    rules.append(Rule(MGW_INPUT, "DROP"))
    if plan.non_tcp_inbound == "drop":
        rules.append(Rule(MGW_INPUT, "RETURN", protocol=ICMP[family]))
        rules.extend(Rule(MGW_INPUT, "RETURN", protocol="udp", dport=dport)
                     for dport in port_ranges(set(plan.allowed_udp_ports)))
        rules.append(CATCH_ALL_DROP)
    jumps = tuple(Rule(builtin, own, protocol=None) for builtin, own in FILTER_JUMPS)
    return RuleSet(family=family, table=FILTER, chains=FILTER_CHAINS, rules=tuple(rules), jumps=jumps)


def build_rulesets(plan: Plan, config: PluginConfig, families: list[int]) -> list[RuleSet]:
    """Every rule set a protected pod gets: per family the nat set, then the filter set."""
    return [ruleset for family in families
            for ruleset in (build_nat(plan, config, family), build_guard(plan, config, family))]
