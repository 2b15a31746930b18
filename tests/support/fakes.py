"""An in-memory netfilter backend, injected where a test must not touch the kernel: the unit tests run
the real applier, runner and jobs with it (portmap's nftables tests inject their fake the same way).
Backends against the kernel are tests/integration/test_backend.py's job."""

from __future__ import annotations

from cni.errors import CniError
from cni.model import BUILTIN_CHAINS, TABLES, Live, RuleSet, render_table
from cni.netfilter.backend import Backend


class FakeBackend(Backend):
    """Our rules in a dict keyed by (family, table), as the last apply left them.

    `fail` makes apply and remove raise it; `calls` lists the methods asked, in order."""

    needs_worker = False

    def __init__(self, name: str = "fake") -> None:
        self.name = name
        self.state: dict[tuple[int, str], Live] = {}
        self.fail: CniError | None = None
        self.calls: list[str] = []

    def apply(self, rulesets: list[RuleSet]) -> None:
        self.calls.append("apply")
        if self.fail:
            raise self.fail
        self.state = {(rs.family, rs.table): Live(rs.family, rs.table, rs.chains, rs.rules, rs.jumps)
                      for rs in rulesets}

    def read(self, families: list[int], tables: tuple[str, ...] = TABLES) -> list[Live]:
        self.calls.append("read")
        return [self.state.get((family, table), Live(family, table, (), (), ()))
                for family in families for table in tables]

    def remove(self) -> bool:
        self.calls.append("remove")
        if self.fail:
            raise self.fail
        found, self.state = bool(self.state), {}
        return found

    def saved(self, family: int) -> str:
        """The family's state in the golden files' format (iptables-save text of our part, nat then filter)."""
        return "".join(render_table(table, live.chains, live.rules, live.jumps)
                       for table in BUILTIN_CHAINS if (live := self.state.get((family, table))))
