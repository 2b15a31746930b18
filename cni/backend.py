"""The netfilter backend seam: one interface for writing, reading and removing our rules, whatever
speaks to the kernel behind it (docs/design.md, "Backend seam").

The orchestration (cni/main.py, cni/applier.py) and diagnose only see this interface and the records
of cni/model.py. Every method works in the *current* network namespace; entering the pod's is the
caller's job. Every commit that can race another writer goes through `retrying`, the one retry loop.
"""

from __future__ import annotations

import abc

from cni.errors import NETFILTER_FAILURE, CniError
from cni.model import TABLES, Live, RuleSet

TYPE_CHECKING = False  # typing is kept off the run-time path (cni/records.py): annotations only
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    T = TypeVar("T")

COMMIT_ATTEMPTS = 3
DEFAULT = "iptables-legacy"


class Conflict(Exception):
    """Another writer replaced the table between our snapshot and our commit: take a new snapshot."""


def retrying(attempt: Callable[[], T], what: str) -> T:
    """attempt() until it does not raise Conflict, at most COMMIT_ATTEMPTS times; then a CNI error.

    One attempt is a whole snapshot -> change -> commit, so a retry never mixes two snapshots."""
    for _ in range(COMMIT_ATTEMPTS - 1):
        try:
            return attempt()
        except Conflict:
            continue
    try:
        return attempt()
    except Conflict as exc:
        raise CniError(NETFILTER_FAILURE, f"{what}: {exc} (gave up after {COMMIT_ATTEMPTS} attempts)") from None


class Backend(abc.ABC):
    """Writes, reads and removes our rules (cni/model.py) in the current netns."""

    name = ""

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


def load(name: str = DEFAULT) -> Backend:
    """The backend a conflist names (`netfilterBackend`)."""
    if name == "iptables-legacy":
        from cni.iptables_legacy import LegacyBackend

        return LegacyBackend()
    raise CniError(NETFILTER_FAILURE, f"netfilter backend {name!r} is not available")
