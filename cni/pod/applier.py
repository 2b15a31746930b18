"""ADD's and CHECK's work on a pod: the two jobs that run inside its netns, and the Applier that hands
one of them to the pod's runner (cni/pod/runner.py).

The jobs learn the pod's address families where they run, inside the pod netns (cni/pod/netns.py,
imported there: ctypes is not paid by an unprotected pod), then build the plan's rule sets and apply
them or compare them with what is there. They take the backend as an
argument, so a test gives them a fake one (tests/support/fakes.py).
"""

from __future__ import annotations

import functools

from cni.config import PluginConfig
from cni.model import Rule, RuleSet, drift
from cni.netfilter.backend import NAMES, Backend
from cni.policy import Plan
from cni.rules import build_rulesets

TYPE_CHECKING = False  # annotations only: typing stays off the per-pod path (cni/records.py)
if TYPE_CHECKING:
    from cni.pod.runner import InProcess, Worker

    Runner = InProcess | Worker


def apply_plan(backend: Backend, plan: Plan, config: PluginConfig, ipv6_hint: bool) -> list[int]:
    """Write the plan's rule sets for the current netns's families; the families configured.

    Then take out what another backend left (the node switched since an earlier ADD of this pod):
    after ours are in place, so the pod is never without rules."""
    from cni.pod.netns import pod_families

    families = pod_families(ipv6_hint)
    backend.apply(build_rulesets(plan, config, families))
    from cni.netfilter.choice import remove_everywhere

    if backend.name in NAMES:
        remove_everywhere(tuple(name for name in NAMES if name != backend.name))
    return families


def plan_drift(backend: Backend, plan: Plan, config: PluginConfig, ipv6_hint: bool) -> list[str]:
    """How the current netns differs from what `apply_plan` writes; empty when it does not."""
    from cni.pod.netns import pod_families

    families = pod_families(ipv6_hint)
    expected = build_rulesets(plan, config, families)
    tables = tuple(sorted({ruleset.table for ruleset in expected}))
    live = {(state.family, state.table): state for state in backend.read(families, tables)}
    return [problem for ruleset in expected for problem in
            drift(ruleset, live[ruleset.family, ruleset.table], functools.partial(_syntax, backend, ruleset))]


def _syntax(backend: Backend, ruleset: RuleSet, rule: Rule) -> str:
    return backend.syntax(rule, ruleset.family, ruleset.table)


class Applier:
    """One pod's backend and runner: runs apply_plan or plan_drift once in the pod netns, or is
    cancelled without a job (an unprotected pod, an API error) and so touches nothing."""

    def __init__(self, backend: Backend, netns: str, ipv6_hint: bool, runner: Runner) -> None:
        self.backend = backend
        self.netns = netns
        self.ipv6_hint = ipv6_hint
        self.runner = runner

    def configure(self, plan: Plan, config: PluginConfig) -> list[int]:
        families: list[int] = self.runner.run(self.netns, apply_plan, self.backend, plan, config, self.ipv6_hint)
        return families

    def inspect(self, plan: Plan, config: PluginConfig) -> list[str]:
        problems: list[str] = self.runner.run(self.netns, plan_drift, self.backend, plan, config, self.ipv6_hint)
        return problems

    def __enter__(self) -> Applier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.runner.dismiss()
