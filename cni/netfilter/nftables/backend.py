"""The native nftables backend: our rule sets as the tables `ip microgateway` and `ip6 microgateway`.

Writes are one netlink batch for every family and table (encoder.py, sent by nfnetlink.py): the old
tables deleted, the new ones written, in one transaction (I6) - no fork per family, no rollback.
Reads dump our tables and decode them (decoder.py) into the model, table by model table. The tables'
layout is layout.py's, the kernel's numbers uapi.py's, nft's text syntax syntax.py's.
"""

from __future__ import annotations

from cni.model import TABLES, Foreign, Live, Rule, RuleSet, is_ours
from cni.netfilter.backend import NFTABLES, Backend, Conflict, retrying
from cni.netfilter.nftables import nfnetlink as nl
from cni.netfilter.nftables import uapi
from cni.netfilter.nftables.encoder import batch
from cni.netfilter.nftables.layout import BASE_CHAINS, FAMILIES, HOOKS, TABLE
from cni.netfilter.nftables.syntax import base_syntax, describe, where

TYPE_CHECKING = False  # annotations only: typing stays off the per-pod path (cni/records.py)
if TYPE_CHECKING:
    from typing import Any

    # Per family: {chain: its attributes} and [(chain, rule expressions)] in the table's order.
    Snapshot = dict[int, tuple[dict[str, dict[int, bytes]], list[tuple[str, bytes]]]]


def _expected_base(name: str) -> tuple[str, int, int, int]:
    table, builtin = BASE_CHAINS[name]
    hook, _, priority = HOOKS[table, builtin]
    return table, hook, priority, uapi.NF_ACCEPT


def _present(sock: nl.Netlink) -> set[int]:
    """The families (4, 6) that have our table."""
    by_proto = {nfproto: family for family, nfproto in FAMILIES.items()}
    return {by_proto[obj.family] for obj in sock.dump(nl.GETTABLE)
            if obj.family in by_proto and nl.text(obj.attrs.get(uapi.TABLE_NAME, b"")) == TABLE}


class _NothingWithoutNfTables:
    """Reading or removing in a kernel without nf_tables (or that may not load it) finds nothing of ours
    instead of failing: DEL on a legacy-only node, diagnose anywhere. Applying never tolerates it."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, traceback: object) -> bool:
        return isinstance(exc, nl.NetlinkError) and exc.errno in nl.UNSUPPORTED


def _snapshot() -> Snapshot:
    """Our tables as dumped, undecoded, per family that has one."""
    present: set[int] = set()
    with _NothingWithoutNfTables(), nl.Netlink() as sock:
        present = _present(sock)
        if present:
            chains = sock.dump(nl.GETCHAIN)
            # Unfiltered: a rule dump filtered by table name stops after the first family's table.
            rules = sock.dump(nl.GETRULE)
    if not present:
        return {}
    by_proto = {FAMILIES[family]: family for family in present}
    state: Snapshot = {family: ({}, []) for family in present}
    for chain in chains:
        family = by_proto.get(chain.family)
        if family is None or nl.text(chain.attrs.get(uapi.CHAIN_TABLE, b"")) != TABLE:
            continue
        state[family][0][nl.text(chain.attrs.get(uapi.CHAIN_NAME, b""))] = chain.attrs
    for rule in rules:
        family = by_proto.get(rule.family)
        if family is not None and nl.text(rule.attrs.get(uapi.RULE_TABLE, b"")) == TABLE:
            state[family][1].append((nl.text(rule.attrs.get(uapi.RULE_CHAIN, b"")),
                                     rule.attrs.get(uapi.RULE_EXPRESSIONS, b"")))
    return state


def _reachable(table: str, chains: dict[str, Any], rules: list[tuple[str, Rule | Foreign]]) -> set[str]:
    """The regular chains that a model table's base chains reach through jumps."""
    targets: dict[str, set[str]] = {}
    for chain, entry in rules:
        if isinstance(entry, Rule) and is_ours(entry.target):
            targets.setdefault(chain, set()).add(entry.target)
    seen: set[str] = set()
    todo = [name for name in chains if BASE_CHAINS.get(name, ("",))[0] == table]
    while todo:
        for target in targets.get(todo.pop(), set()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def _live(family: int, table: str, chains: dict[str, Any], rules: list[tuple[str, Rule | Foreign]]) -> Live:
    """A model table's part of our nft table. A regular chain belongs to the model table whose base
    chains reach it; one that none reaches (its jump removed) shows in every table read, so CHECK
    still sees it."""
    reached = {name: _reachable(name, chains, rules) for name in TABLES}
    mine = {name for name in chains if name not in BASE_CHAINS
            and (name in reached[table] or not any(name in found for found in reached.values()))}
    live_chains: list[str] = []
    jumps: list[Rule] = []
    live_rules: list[Rule] = []
    foreign: list[Foreign] = []
    for name, base in chains.items():
        if name in BASE_CHAINS and BASE_CHAINS[name][0] == table and base != _expected_base(name):
            foreign.append(Foreign(chain=name, text=f"{where(family, name)}: {base_syntax(base)}",
                                   reason=f"expected {base_syntax(_expected_base(name))}"))
        elif name in mine and (base is not None or not is_ours(name)):
            foreign.append(Foreign(chain=name, text=f"{where(family, name)}: {base_syntax(base)}",
                                   reason="not a chain of ours"))
        elif name in mine:
            live_chains.append(name)
    for chain, entry in rules:
        in_base = BASE_CHAINS.get(chain, ("",))[0] == table
        if isinstance(entry, Foreign):
            if in_base or chain in live_chains:
                foreign.append(entry)
        elif in_base:
            jumps.append(entry._replace(chain=BASE_CHAINS[chain][1]))  # type: ignore[attr-defined]  # a namedtuple
        elif chain in live_chains:
            live_rules.append(entry)
    return Live(family=family, table=table, chains=tuple(sorted(live_chains)), rules=tuple(live_rules),
                jumps=tuple(jumps), foreign=tuple(foreign))


class NftablesBackend(Backend):
    """Native nftables over netlink (nfnetlink.py): no nft binary, no libnftables, no heavy import."""

    name = NFTABLES
    needs_worker = False  # nothing to prepare: its imports are light (nfnetlink.py)

    def apply(self, rulesets: list[RuleSet]) -> None:
        with nl.Netlink() as sock:
            def attempt() -> None:
                try:
                    sock.transact(batch(rulesets, _present(sock)))
                except nl.StaleBatch as exc:  # our table came or went since we looked
                    raise Conflict(exc.msg) from None

            retrying(attempt, "apply")

    def read(self, families: list[int], tables: tuple[str, ...] = TABLES) -> list[Live]:
        # Only CHECK and diagnose read: ADD and DEL do not pay for the decoder's import.
        from cni.netfilter.nftables.decoder import Unexpected, base_declaration, decode, rule_expressions

        state = _snapshot()
        lives: list[Live] = []
        for family in families:
            attributes, raw = state.get(family, ({}, []))
            chains = {name: base_declaration(attrs) for name, attrs in attributes.items()}
            rules: list[tuple[str, Rule | Foreign]] = []
            for chain, payload in raw:
                try:
                    rules.append((chain, decode(chain, family, payload)))
                except Unexpected as exc:
                    names = " ".join(name for name, _ in rule_expressions(payload))
                    rules.append((chain, Foreign(chain=chain, text=f"{where(family, chain)}: [{names}]",
                                                 reason=str(exc))))
            lives.extend(_live(family, table, chains, rules) for table in tables)
        return lives

    def remove(self) -> bool:
        present: set[int] = set()
        with _NothingWithoutNfTables(), nl.Netlink() as sock:
            present = _present(sock)
            if present:
                sock.transact(batch([], present))
        return bool(present)

    def syntax(self, rule: Rule, family: int, table: str) -> str:
        return describe(rule, family, table)
