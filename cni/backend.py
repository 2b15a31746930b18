"""The netfilter backend seam: one interface for writing, reading and removing our rules, whatever
speaks to the kernel behind it (docs/design.md, "Backend seam"), and which backend a node gets
(docs/design.md, "Choosing the backend").

The orchestration (cni/main.py, cni/applier.py) and diagnose only see this interface and the records
of cni/model.py. Every method works in the *current* network namespace; entering the pod's is the
caller's job. Every commit that can race another writer goes through `retrying`, the one retry loop.
"""

from __future__ import annotations

import abc

from cni.contract import NETFILTER_BACKENDS
from cni.errors import NETFILTER_FAILURE, CniError
from cni.model import TABLES, Live, Rule, RuleSet

TYPE_CHECKING = False  # typing is kept off the run-time path (cni/records.py): annotations only
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    T = TypeVar("T")

COMMIT_ATTEMPTS = 3
AUTO, LEGACY, NFTABLES = NETFILTER_BACKENDS
NAMES = (LEGACY, NFTABLES)
LEGACY_TABLE_NAMES = ("/proc/self/net/ip_tables_names", "/proc/self/net/ip6_tables_names")


class Conflict(Exception):
    """Another writer replaced the table between our snapshot and our commit: take a new snapshot."""


def retrying(attempt: Callable[[], T], what: str) -> T:
    """attempt() until it does not raise Conflict, at most COMMIT_ATTEMPTS times; then a CNI error.

    One attempt is a whole snapshot -> change -> commit, so a retry never mixes two snapshots."""
    last: Conflict | None = None
    for _ in range(COMMIT_ATTEMPTS):
        try:
            return attempt()
        except Conflict as exc:
            last = exc
    raise CniError(NETFILTER_FAILURE, f"{what}: {last} (gave up after {COMMIT_ATTEMPTS} attempts)")


class Backend(abc.ABC):
    """Writes, reads and removes our rules (cni/model.py) in the current netns."""

    name = ""
    # Whether apply/read run in the applier's forked worker, so `prepare` overlaps the pod lookup.
    needs_worker = True

    def prepare(self) -> None:  # noqa: B027 - optional hook; most backends need nothing
        """Load what apply and read need; the applier runs it while the pod is looked up."""

    @abc.abstractmethod
    def apply(self, rulesets: list[RuleSet]) -> None:
        """Replace everything of ours with `rulesets`: one atomic commit per table and family.

        If any commit fails, everything of ours is removed again from every family and table (a
        protected pod never runs with part of its rules, I6) and the first error is raised."""

    @abc.abstractmethod
    def read(self, families: list[int], tables: tuple[str, ...] = TABLES) -> list[Live]:
        """Our chains, rules and jumps per family and table as they are in the kernel; a table that
        does not exist reads as empty. What the model cannot express comes back as Foreign entries."""

    @abc.abstractmethod
    def remove(self) -> bool:
        """Remove everything of ours from every family and table; True if anything was there.

        Every family and table is tried before the first failure is raised."""

    def syntax(self, rule: Rule, family: int, table: str) -> str:
        """The rule in this backend's own syntax, for CHECK's messages (iptables-save by default)."""
        return rule.render()


def load(name: str) -> Backend:
    """The backend a conflist names (`netfilterBackend`, after `choose`)."""
    if name == LEGACY:
        from cni.iptables_legacy import LegacyBackend

        return LegacyBackend()
    if name == NFTABLES:
        from cni.nftables import NftablesBackend

        return NftablesBackend()
    raise CniError(NETFILTER_FAILURE, f"netfilter backend {name!r} is not available")


def _table_names(path: str) -> set[str]:
    try:
        with open(path) as names:
            return set(names.read().split())
    except FileNotFoundError:  # the file exists only while the x_tables modules are loaded
        return set()


def legacy_tables(family: int) -> set[str]:
    """The legacy (x_tables) tables that exist in the current netns. Nothing of ours can be in a table
    that does not, and opening one would make the kernel create it."""
    return _table_names(LEGACY_TABLE_NAMES[0 if family == 4 else 1])


def node_uses_legacy(paths: tuple[str, ...] = LEGACY_TABLE_NAMES) -> bool:
    """True when the current netns has any legacy x_tables table."""
    try:
        return any(_table_names(path) for path in paths)
    except OSError:  # unreadable: no evidence that the node uses legacy
        return False


def choose(configured: str, paths: tuple[str, ...] = LEGACY_TABLE_NAMES) -> str:
    """The backend for this node: the configured one, or for "auto" the node's own.

    Called in the runtime's netns - the node's - before anything else: where it has legacy tables
    (kube-proxy or another agent writing with iptables-legacy), the kernel has x_tables and the node
    uses it, so the pod gets legacy rules like everything else there. Otherwise - the legacy modules
    missing (RHEL 10, Bottlerocket) or loaded but unused (iptables-nft, kube-proxy's nftables mode) -
    it gets native nftables. Two small /proc reads."""
    if configured != AUTO:
        return configured
    return LEGACY if node_uses_legacy(paths) else NFTABLES


def remove_everywhere(names: tuple[str, ...] = NAMES) -> list[str]:
    """Remove ours from every backend in the current netns (a node may have switched backends since a
    pod's ADD); the backends that had something. Each is tried before the first failure is raised."""
    removed: list[str] = []
    failures: list[CniError] = []
    for name in names:
        try:
            if load(name).remove():
                removed.append(name)
        except CniError as exc:
            failures.append(exc)
    if failures:
        raise failures[0]
    return removed
