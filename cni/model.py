"""Backend-neutral netfilter rules: what the plugin writes, and what a backend reads back. Pure.

Every backend (docs/design.md, "Backend seam") writes a RuleSet per table and family and reads back a
Live of the same shape, so CHECK, diagnose and the golden files compare records, never backend
syntax. What is "ours" is defined here once: chains named MGW_*, and rules in a table's built-in
chains that jump to them.
"""

from __future__ import annotations

from cni.records import record

TYPE_CHECKING = False  # annotations only: typing stays off the per-pod path (cni/records.py)
if TYPE_CHECKING:
    from collections.abc import Callable

CHAIN_PREFIX = "MGW_"
# Built-in chains per table, in the order iptables-save prints them.
BUILTIN_CHAINS = {
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
}
TABLES = tuple(BUILTIN_CHAINS)


def is_ours(chain_or_target: str) -> bool:
    """Our chains, and (given a rule's target) the rules that jump into them."""
    return chain_or_target.startswith(CHAIN_PREFIX)


@record
class Rule:
    """One rule; a field left None does not match. protocol is named as iptables-save prints it
    (/etc/protocols: tcp, udp, icmp, ipv6-icmp); None matches every protocol."""

    chain: str
    target: str
    protocol: str | None = "tcp"
    dport: str | None = None
    src: str | None = None
    dst: str | None = None
    in_iface: str | None = None
    out_iface: str | None = None
    uid_owner: int | None = None
    ctstate: str | None = None
    to_port: int | None = None

    def render(self) -> str:
        """iptables-save syntax, in the order iptables-save prints a rule's parts."""
        parts = [f"-A {self.chain}"]
        for flag, value in (("-s", self.src), ("-d", self.dst), ("-i", self.in_iface), ("-o", self.out_iface),
                            ("-p", self.protocol)):
            if value:
                parts.append(f"{flag} {value}")
        if self.dport:
            parts.append(f"-m {self.protocol} --dport {self.dport}")
        if self.uid_owner is not None:
            parts.append(f"-m owner --uid-owner {self.uid_owner}")
        if self.ctstate:
            parts.append(f"-m conntrack --ctstate {self.ctstate}")
        parts.append(f"-j {self.target}")
        if self.to_port is not None:
            parts.append(f"--to-ports {self.to_port}")
        return " ".join(parts)


@record
class RuleSet:
    """Our state in one table of one family: chains (created even when empty, so jumps resolve), their
    rules in order, and the jumps from built-in chains, each inserted at the top of its chain."""

    family: int
    table: str
    chains: tuple[str, ...]
    rules: tuple[Rule, ...]
    jumps: tuple[Rule, ...]

    def render(self) -> str:
        """iptables-save text of just our part of the table (the golden files' format)."""
        return render_table(self.table, self.chains, self.rules, self.jumps)


def by_family(rulesets: list[RuleSet]) -> dict[int, list[RuleSet]]:
    """Rule sets grouped per address family: each backend commits a family's tables together."""
    grouped: dict[int, list[RuleSet]] = {}
    for ruleset in rulesets:
        grouped.setdefault(ruleset.family, []).append(ruleset)
    return grouped


@record
class Foreign:
    """Something in our chains, or a jump into them, that no RuleSet can express."""

    chain: str
    text: str
    reason: str


@record
class Live:
    """Our state as read from the kernel: a RuleSet's fields plus what could not be decoded."""

    family: int
    table: str
    chains: tuple[str, ...]
    rules: tuple[Rule, ...]
    jumps: tuple[Rule, ...]
    foreign: tuple[Foreign, ...] = ()


def render_table(table: str, chains: tuple[str, ...], rules: tuple[Rule, ...], jumps: tuple[Rule, ...]) -> str:
    """iptables-save's order: chain declarations, built-in chains' rules, then our chains by name."""
    lines = [f"*{table}", *(f":{chain} - [0:0]" for chain in sorted(chains))]
    for builtin in BUILTIN_CHAINS[table]:
        lines.extend(jump.render() for jump in jumps if jump.chain == builtin)
    for chain in sorted(chains):
        lines.extend(rule.render() for rule in rules if rule.chain == chain)
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def drift(expected: RuleSet, live: Live, syntax: Callable[[Rule], str] = Rule.render) -> list[str]:
    """Why live differs from expected, one line per difference, rules spelled in `syntax` (the
    backend's own); empty when they match.

    Compared chain by chain (order matters only within a chain), so no backend has to return rules
    in any particular order across chains."""
    where = f"IPv{expected.family} {expected.table}"
    problems = [f"unexpected {where}: {entry.text} [{entry.reason}]" for entry in live.foreign]
    problems += [f"missing {where}: chain {c}" for c in expected.chains if c not in live.chains]
    problems += [f"unexpected {where}: chain {c}" for c in live.chains if c not in expected.chains]
    chains = sorted({*expected.chains, *live.chains, *BUILTIN_CHAINS[expected.table]})
    for chain in chains:
        want = [r for r in (*expected.rules, *expected.jumps) if r.chain == chain]
        have = [r for r in (*live.rules, *live.jumps) if r.chain == chain]
        missing = [r for r in want if r not in have]
        unexpected = [r for r in have if r not in want]
        problems += [f"missing {where}: {syntax(r)}" for r in missing]
        problems += [f"unexpected {where}: {syntax(r)}" for r in unexpected]
        if not missing and not unexpected and want != have:
            problems.append(f"{where}: rules of {chain} are out of order or duplicated")
    return problems


def ours_in(table: str, targets: dict[str, list[str]]) -> tuple[list[tuple[str, int]], list[str]]:
    """What removing ours deletes, given each chain's rule targets in order: (built-in chain, rule
    index) of every jump into our chains, last first so earlier indexes stay valid; and our chains.

    The one selection every backend's removal uses (ADD's replace, DEL, rollback). A jump into our
    chains from a foreign chain is not ours: it makes the removal fail rather than leave the foreign
    chain jumping nowhere."""
    jumps = [(chain, index) for chain in BUILTIN_CHAINS[table] if chain in targets
             for index, target in enumerate(targets[chain]) if is_ours(target)]
    return jumps[::-1], sorted(chain for chain in targets if is_ours(chain))
