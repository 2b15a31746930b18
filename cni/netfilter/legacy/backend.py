"""The legacy (x_tables) backend: python-iptables writes and reads, libiptc removes.

python-iptables is imported only by `prepare` (the pod's worker, or diagnose), never by DEL: removal
needs no matches or targets, so it uses libiptc directly (libiptc.py) in the calling process.
libxtables registers an extension for the first family that loads it, so one process cannot REDIRECT
for IPv4 and IPv6 (python-iptables issues #135, #316, #325): writing and reading run in a forked
child per family (cni/forks.py's fan_out), so the calling process stays clean for the next call. The
import leaves no family state behind, so every child starts clean without importing again.

Each table of each family is one python-iptables handle: our old state removed, our chains and
jumps written, one commit - a table replace, so a rule set is never half-written (I6).
"""

from __future__ import annotations

import functools
import sys

from cni.errors import NETFILTER_FAILURE, CniError
from cni.forks import fan_out
from cni.model import BUILTIN_CHAINS, TABLES, Foreign, Live, Rule, RuleSet, by_family, is_ours, ours_in
from cni.netfilter.backend import LEGACY, Backend, Conflict, retrying
from cni.netfilter.legacy import libraries
from cni.netfilter.legacy.tables import legacy_tables

TYPE_CHECKING = False  # annotations only: typing stays off the per-pod path (cni/records.py)
if TYPE_CHECKING:
    from typing import Any

# python-iptables' name for "no -p": a rule without a protocol matches all of them.
ANY_PROTOCOL = ("ip", "all", "0")
# Where python-iptables' protocol names differ from iptables-save's (the model's).
PROTOCOL_NUMBERS = {"ipv6-icmp": "58"}
PROTOCOL_NAMES = {"icmpv6": "ipv6-icmp"}
PORT_MATCHES = ("tcp", "udp")


def _iptc() -> Any:
    """python-iptables, with its library lookups pointed at the right place first."""
    libraries.locate()
    if "iptc" not in sys.modules:
        import ctypes.util

        ctypes.util.find_library = libraries.find_library_fast
        # setuptools' distutils shim (installed by a .pth at start-up, so its env switch comes too late)
        # is slow when python-iptables imports distutils.sysconfig; the stdlib one does the job.
        sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "DistutilsMetaFinder"]
    import iptc

    return iptc


def _open(family: int, table: str) -> Any:
    iptc = _iptc()
    table_class = iptc.Table if family == 4 else iptc.Table6
    try:
        handle = table_class(table, autocommit=False)
        handle.autocommit = False
        handle.refresh()
    except iptc.IPTCError as exc:
        if "temporarily unavailable" in str(exc):
            raise Conflict(f"IPv{family} {table} table changed while it was read") from None
        raise CniError(NETFILTER_FAILURE, f"cannot open the IPv{family} {table} table: {exc}") from None
    return handle


def _encode(family: int, spec: Rule) -> Any:
    iptc = _iptc()
    rule = iptc.Rule() if family == 4 else iptc.Rule6()
    if spec.protocol:
        rule.protocol = PROTOCOL_NUMBERS.get(spec.protocol, spec.protocol)
    if spec.src:
        rule.src = spec.src
    if spec.dst:
        rule.dst = spec.dst
    if spec.in_iface:
        rule.in_interface = spec.in_iface
    if spec.out_iface:
        rule.out_interface = spec.out_iface
    if spec.dport:
        rule.create_match(spec.protocol).dport = spec.dport
    if spec.uid_owner is not None:
        rule.create_match("owner").uid_owner = str(spec.uid_owner)
    if spec.ctstate:
        rule.create_match("conntrack").ctstate = spec.ctstate
    target = rule.create_target(spec.target)
    if spec.to_port is not None:
        target.to_ports = str(spec.to_port)
    return rule


def _remove_ours(handle: Any, table: str) -> None:
    """Everything of ours out of the handle (cni/model.py's selection), uncommitted."""
    iptc = _iptc()
    chains = {chain.name: chain for chain in handle.chains}
    # Only built-in chains' rules are decoded (jumps into ours start there): others', such as Istio's
    # chains, would cost an extension load per match on every ADD. Other chains count by name alone.
    rules = {name: chains[name].rules for name in BUILTIN_CHAINS[table] if name in chains}
    jumps, ours = ours_in(table, {name: [rule.target.name for rule in rules.get(name, [])] for name in chains})
    for builtin, index in jumps:
        iptc.Chain(handle, builtin).delete_rule(rules[builtin][index])
    for name in ours:
        chains[name].flush()
    for name in ours:
        handle.delete_chain(chains[name])


def _apply_table(ruleset: RuleSet) -> None:
    """One attempt: replace ours in one table of one family with a single commit."""
    iptc = _iptc()
    family, table = ruleset.family, ruleset.table
    handle = _open(family, table)
    try:
        _remove_ours(handle, table)
        chains = {name: handle.create_chain(name) for name in ruleset.chains}
        for spec in ruleset.rules:
            chains[spec.chain].append_rule(_encode(family, spec))
        for spec in reversed(ruleset.jumps):  # each inserted at the top: the first ends up first
            iptc.Chain(handle, spec.chain).insert_rule(_encode(family, spec), 0)
    except (iptc.IPTCError, iptc.XTablesError, ValueError) as exc:
        raise CniError(NETFILTER_FAILURE, f"cannot build the IPv{family} {table} rule set: {exc}") from None
    try:
        handle.commit()
    except iptc.IPTCError as exc:
        raise Conflict(f"IPv{family} {table} commit failed: {exc}") from None


def _apply_family(rulesets: list[RuleSet]) -> None:
    for ruleset in rulesets:
        retrying(functools.partial(_apply_table, ruleset), "apply")


def _net(value: str | None, family: int) -> str | None:
    """A prefix as iptables-save prints it; None for "any"."""
    if not value or value.startswith("!"):
        return value or None
    import ipaddress

    network = ipaddress.ip_network(value, strict=False)
    return None if network.prefixlen == 0 else f"{network.network_address}/{network.prefixlen}"


def _decode(rule: Any, chain: str, family: int) -> Rule | Foreign:
    """A live rule as a Rule, or as Foreign when it has anything our rules never have."""
    odd: list[str] = []
    protocol = None if rule.protocol in ANY_PROTOCOL else PROTOCOL_NAMES.get(rule.protocol, rule.protocol)
    fields = {"src": rule.src, "dst": rule.dst, "in_iface": rule.in_interface, "out_iface": rule.out_interface}
    if any((value or "").startswith("!") for value in (protocol, *fields.values())):
        odd.append("inverted match")
    values: dict[str, Any] = {}
    for match in rule.matches:
        params = match.get_all_parameters()
        single = {key: value[0] for key, value in params.items() if len(value) == 1}
        if match.name == protocol and match.name in PORT_MATCHES and set(single) == set(params) == {"dport"}:
            values["dport"] = single["dport"]
        elif match.name == "owner" and set(single) == set(params) == {"uid-owner"}:
            values["uid_owner"] = int(single["uid-owner"])
        elif match.name == "conntrack" and set(single) == set(params) == {"ctstate"}:
            values["ctstate"] = single["ctstate"]
        else:
            odd.append(f"-m {match.name} {params}")
    target = rule.target
    params = target.get_all_parameters()
    ports = params.get("to-ports", [])
    if target.name == "REDIRECT" and set(params) == {"to-ports"} and len(ports) == 1 and ports[0].isdigit():
        values["to_port"] = int(ports[0])
    elif params:
        odd.append(f"-j {target.name} {params}")
    decoded = Rule(chain=chain, target=target.name, protocol=protocol,
                   src=_net(fields["src"], family), dst=_net(fields["dst"], family),
                   in_iface=fields["in_iface"] or None, out_iface=fields["out_iface"] or None, **values)
    if odd:
        return Foreign(chain=chain, text=decoded.render(), reason="; ".join(odd))
    return decoded


def _read_table(family: int, table: str) -> Live:
    handle = _open(family, table)
    chains, rules, jumps, foreign = [], [], [], []
    for chain in handle.chains:
        name = chain.name
        if is_ours(name):
            chains.append(name)
            found = [_decode(rule, name, family) for rule in chain.rules]
        elif handle.builtin_chain(name):
            found = [_decode(rule, name, family) for rule in chain.rules if is_ours(rule.target.name)]
        else:
            continue
        for item in found:
            if isinstance(item, Foreign):
                foreign.append(item)
            elif is_ours(name):
                rules.append(item)
            else:
                jumps.append(item)
    return Live(family=family, table=table, chains=tuple(sorted(chains)), rules=tuple(rules), jumps=tuple(jumps),
                foreign=tuple(foreign))


def _read_family(family: int, tables: tuple[str, ...]) -> list[Live]:
    present = legacy_tables(family)
    return [retrying(functools.partial(_read_table, family, table), "read") if table in present
            else Live(family=family, table=table, chains=(), rules=(), jumps=()) for table in tables]


class LegacyBackend(Backend):
    """iptables-legacy: python-iptables and libiptc on the x_tables kernel interface."""

    name = LEGACY

    def prepare(self) -> None:
        _iptc()

    def apply(self, rulesets: list[RuleSet]) -> None:
        outcomes = fan_out([(family, _apply_family, (sets,)) for family, sets in by_family(rulesets).items()])
        failed = [outcome for outcome in outcomes.values() if isinstance(outcome, CniError)]
        if failed:
            import contextlib  # the failure path only: nothing else on ADD imports it

            with contextlib.suppress(CniError):  # the apply error is the one to report
                self.remove()
            raise failed[0]

    def read(self, families: list[int], tables: tuple[str, ...] = TABLES) -> list[Live]:
        outcomes = fan_out([(family, _read_family, (family, tables)) for family in families])
        lives: list[Live] = []
        for family in families:
            outcome = outcomes[family]
            if isinstance(outcome, CniError):
                raise outcome
            lives.extend(outcome)
        return lives

    def remove(self) -> bool:
        from cni.netfilter.legacy import libiptc

        removed, failures = False, []
        for family in (4, 6):
            for table in sorted(legacy_tables(family) & set(TABLES)):
                try:
                    removed = retrying(functools.partial(libiptc.remove_ours, family, table), "remove") or removed
                except CniError as exc:
                    failures.append(exc)
        if failures:
            raise failures[0]
        return removed
