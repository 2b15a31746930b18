"""Our rules in the current netns: applied and read with python-iptables (legacy x_tables), in a
Worker (cni/worker.py); removed with libiptc directly (cni/libiptc.py).

One libiptc handle per family: everything (old state removed, new chains, jumps) goes into it and is
committed as a single table replace, so a rule set is never half-written (I6).
"""

from __future__ import annotations

import sys

from cni import libraries
from cni.errors import NETFILTER_FAILURE, CniError
from cni.rules import BUILTIN_JUMPS, CHAIN_PREFIX, OWN_CHAINS, Rule, RuleSet
from cni.worker import Worker, fan_out

TYPE_CHECKING = False  # typing costs ~8 ms of a frozen start (cni/records.py): annotations only
if TYPE_CHECKING:
    from typing import Any

COMMIT_ATTEMPTS = 3


def _iptc() -> Any:
    """python-iptables, imported only by a Worker (ADD and CHECK)."""
    libraries.locate()
    if "iptc" not in sys.modules:
        import ctypes.util

        ctypes.util.find_library = libraries.find_library_fast
        # setuptools' distutils shim (installed by a .pth at start-up, so its env switch comes too late)
        # costs ~300 ms when python-iptables imports distutils.sysconfig; the stdlib one does the job.
        sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "DistutilsMetaFinder"]
    import iptc

    return iptc


def _open_nat(family: int) -> Any:
    iptc = _iptc()
    table_class = iptc.Table if family == 4 else iptc.Table6
    try:
        table = table_class(table_class.NAT, autocommit=False)
        table.autocommit = False
        table.refresh()
    except iptc.IPTCError as exc:
        raise CniError(NETFILTER_FAILURE, f"cannot open the IPv{family} nat table: {exc}") from None
    return table


def _new_rule(family: int, spec: Rule) -> Any:
    iptc = _iptc()
    rule = iptc.Rule() if family == 4 else iptc.Rule6()
    rule.protocol = "tcp"
    if spec.src:
        rule.src = spec.src
    if spec.dst:
        rule.dst = spec.dst
    if spec.out_iface:
        rule.out_interface = spec.out_iface
    if spec.dport:
        rule.create_match("tcp").dport = spec.dport
    if spec.uid_owner is not None:
        rule.create_match("owner").uid_owner = str(spec.uid_owner)
    target = rule.create_target(spec.target)
    if spec.to_port is not None:
        target.to_ports = str(spec.to_port)
    return rule


def _remove_ours(table: Any) -> bool:
    """Drop every jump to an MGW_ chain and every MGW_ chain from the handle; True if any existed.

    The same selection as libiptc._remove_in_handle (DEL, rollback): this one works inside the
    python-iptables handle ADD commits, so clearing the old state and writing the new is one commit."""
    iptc = _iptc()
    found = False
    for builtin, _ in BUILTIN_JUMPS:
        chain = iptc.Chain(table, builtin)
        for rule in chain.rules:
            if rule.target.name.startswith(CHAIN_PREFIX):
                chain.delete_rule(rule)
                found = True
    ours = [chain for chain in table.chains if chain.name.startswith(CHAIN_PREFIX)]
    for chain in ours:
        chain.flush()
    for chain in ours:
        table.delete_chain(chain)
    return found or bool(ours)


def _commit(table: Any, family: int, what: str) -> None:
    iptc = _iptc()
    try:
        table.commit()
    except iptc.IPTCError as exc:
        raise CniError(NETFILTER_FAILURE, f"{what}: IPv{family} nat commit failed: {exc}") from None


def _apply_one(ruleset: RuleSet) -> None:
    iptc = _iptc()
    family = ruleset.family
    last: CniError | None = None
    for _ in range(COMMIT_ATTEMPTS):
        table = _open_nat(family)
        try:
            _remove_ours(table)
            # Every own chain exists even when empty (Istio capturing all ports leaves MGW_PREROUTING
            # empty), so the jumps always resolve.
            chains = {name: table.create_chain(name) for name in OWN_CHAINS}
            for spec in ruleset.rules:
                chains[spec.chain].append_rule(_new_rule(family, spec))
            for spec in ruleset.jumps:
                iptc.Chain(table, spec.chain).insert_rule(_new_rule(family, spec), 0)
        except (iptc.IPTCError, iptc.XTablesError, ValueError) as exc:
            raise CniError(NETFILTER_FAILURE, f"cannot build the IPv{family} rule set: {exc}") from None
        try:
            _commit(table, family, "apply")
            return
        except CniError as exc:  # EAGAIN: another writer changed the table since our snapshot
            last = exc
    assert last is not None
    raise last


def _normalize_net(value: str | None, family: int) -> str | None:
    if not value:
        return None
    import ipaddress

    network = ipaddress.ip_network(value, strict=False)
    return None if network.prefixlen == 0 else f"{network.network_address}/{network.prefixlen}"


def _decode(rule: Any, chain: str, family: int) -> Rule | str:
    """A live rule as a Rule, or a description when it has anything our rules never have."""
    extras: list[str] = []
    dport = uid = to_port = None
    if rule.protocol != "tcp" or rule.in_interface:
        extras.append(f"protocol={rule.protocol} in={rule.in_interface}")
    for match in rule.matches:
        params = match.get_all_parameters()
        if match.name == "tcp" and set(params) == {"dport"} and len(params["dport"]) == 1:
            dport = params["dport"][0]
        elif match.name == "owner" and set(params) == {"uid-owner"} and len(params["uid-owner"]) == 1:
            uid = int(params["uid-owner"][0])
        else:
            extras.append(f"-m {match.name} {params}")
    target = rule.target
    tparams = target.get_all_parameters() if target.name == "REDIRECT" else {}
    if target.name == "REDIRECT":
        ports = tparams.get("to-ports", [])
        if set(tparams) == {"to-ports"} and len(ports) == 1 and ports[0].isdigit():
            to_port = int(ports[0])
        else:
            extras.append(f"REDIRECT {tparams}")
    decoded = Rule(
        chain=chain,
        target=target.name,
        dport=dport,
        src=_normalize_net(rule.src, family),
        dst=_normalize_net(rule.dst, family),
        out_iface=rule.out_interface or None,
        uid_owner=uid,
        to_port=to_port,
    )
    if extras:
        return decoded.render() + " [unexpected: " + "; ".join(extras) + "]"
    return decoded


def _read_one(family: int) -> tuple[list[Rule | str], list[Rule | str]]:
    """Our chains' rules (chain order by name) and the jumps into them, as live in the kernel."""
    iptc = _iptc()
    table = _open_nat(family)
    rules: list[Rule | str] = []
    for chain in sorted(table.chains, key=lambda c: c.name):
        if chain.name.startswith(CHAIN_PREFIX):
            rules.extend(_decode(rule, chain.name, family) for rule in chain.rules)
    jumps: list[Rule | str] = []
    for builtin, _ in BUILTIN_JUMPS:
        for rule in iptc.Chain(table, builtin).rules:
            if rule.target.name.startswith(CHAIN_PREFIX):
                jumps.append(_decode(rule, builtin, family))
    return rules, jumps


def apply_families(rulesets: list[RuleSet]) -> None:
    """Job for a Worker, in the pod netns: replace our rules in every family; if any family fails,
    take the others back out (I6)."""
    outcomes = fan_out([(rs.family, _apply_one, (rs,)) for rs in rulesets])
    failed = [o for o in outcomes.values() if isinstance(o, CniError)]
    if failed:
        remove([family for family, outcome in outcomes.items() if not isinstance(outcome, CniError)])
        raise failed[0]


def remove(families: list[int]) -> bool:
    """Remove everything of ours from each family, in this process; True if anything existed.

    Every family is tried before the first failure is raised."""
    from cni import libiptc

    removed = False
    failures = []
    for family in families:
        try:
            removed = libiptc.remove_ours(family) or removed
        except CniError as exc:
            failures.append(exc)
    if failures:
        raise failures[0]
    return removed


def read_families(families: list[int]) -> dict[int, tuple[list[Rule | str], list[Rule | str]]]:
    """Our chains' rules and jumps per family, in the pod netns (a Worker's job, or diagnose's)."""
    outcomes = fan_out([(family, _read_one, (family,)) for family in families])
    for outcome in outcomes.values():
        if isinstance(outcome, CniError):
            raise outcome
    return outcomes  # type: ignore[return-value]


def worker() -> Worker:
    """A Worker that imports python-iptables while the caller asks the API (cni/worker.py)."""
    return Worker(_iptc)
