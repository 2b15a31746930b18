"""The netfilter backend interface: writing, reading and removing our rules, whatever speaks to the
kernel behind it (docs/design.md, "Backend seam"). Imports no backend.

The orchestration (cni/main.py, cni/pod/) and diagnose only see this interface and the records of
cni/model.py. Every method works in the *current* network namespace; entering the pod's is the
caller's job (cni/pod/runner.py). Every commit that can race another writer goes through `retrying`,
the one retry loop.
"""

from __future__ import annotations

import abc

from cni.contract import NETFILTER_BACKENDS
from cni.errors import NETFILTER_FAILURE, CniError
from cni.model import TABLES, Live, Rule, RuleSet

TYPE_CHECKING = False  # annotations only: typing stays off the per-pod path (cni/records.py)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    T = TypeVar("T")

COMMIT_ATTEMPTS = 3
AUTO, LEGACY, NFTABLES = NETFILTER_BACKENDS
NAMES = (LEGACY, NFTABLES)


class Conflict(Exception):
    """Another writer changed the table between our snapshot and our commit: take a new snapshot."""


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
    # Whether apply/read run in a forked worker, so `prepare` overlaps the pod lookup (cni/pod/runner.py).
    needs_worker = True

    def prepare(self) -> None:  # noqa: B027 - optional hook; most backends need nothing
        """Load what apply and read need; a worker runs it while the pod is looked up."""

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
