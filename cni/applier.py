"""The pod-netns side of ADD and CHECK: what runs inside the pod's network namespace, and the forked
worker it runs in.

For a backend that needs preparing (iptables-legacy) the parent never enters the pod netns. It
starts an Applier before asking the API, so the worker prepares the backend (imports python-iptables)
meanwhile on another core; then it hands over the plan, and the worker enters the pod netns, learns
its address families there, builds the rule sets and applies (or reads) them. A pod that turns out
not to be protected has its worker cancelled jobless, so it never touched anything. A backend with
nothing to prepare (nftables) runs the same jobs in-process (Applier).

`configure` and `inspect` are the jobs themselves, given a backend and the families: unit tests run
them in-process against a fake backend (tests/unit/test_orchestration.py).
"""

from __future__ import annotations

import functools

from cni.backend import Backend
from cni.config import PluginConfig
from cni.model import Rule, RuleSet, drift
from cni.policy import Plan
from cni.rules import build_rulesets
from cni.worker import Worker

TYPE_CHECKING = False  # typing is kept off the run-time path (cni/records.py): annotations only
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Job = Callable[[Backend, list[int], Plan, PluginConfig], Any]


def configure(backend: Backend, families: list[int], plan: Plan, config: PluginConfig) -> list[int]:
    """Write the plan's rule sets for `families` in the current netns; the families configured.

    Then take out what another backend left (the node switched since an earlier ADD of this pod):
    after ours are in place, so the pod is never without rules."""
    backend.apply(build_rulesets(plan, config, families))
    from cni.backend import NAMES, remove_everywhere

    if backend.name in NAMES:
        remove_everywhere(tuple(name for name in NAMES if name != backend.name))
    return families


def inspect(backend: Backend, families: list[int], plan: Plan, config: PluginConfig) -> list[str]:
    """How the current netns differs from what `configure` writes; empty when it does not."""
    expected = build_rulesets(plan, config, families)
    tables = tuple(sorted({ruleset.table for ruleset in expected}))
    live = {(state.family, state.table): state for state in backend.read(families, tables)}
    return [problem for ruleset in expected for problem in
            drift(ruleset, live[ruleset.family, ruleset.table], functools.partial(_syntax, backend, ruleset))]


def _syntax(backend: Backend, ruleset: RuleSet, rule: Rule) -> str:
    return backend.syntax(rule, ruleset.family, ruleset.table)


def _in_pod(backend: Backend, ipv6_hint: bool, job: Job, plan: Plan, config: PluginConfig) -> Any:
    """In the worker, already inside the pod netns: the families are the netns's own."""
    from cni.netns import pod_families

    return job(backend, pod_families(ipv6_hint), plan, config)


class Applier:
    """One forked worker for one pod: prepares `backend` at once, then runs configure or inspect once.

    A backend with nothing to prepare (Backend.needs_worker False: nftables) gets no worker: there
    is no import to overlap with the lookup, and a fork, the pickled hand-over and the reaping would
    only add to every ADD. Its one job runs in this process, which enters the pod netns for it and
    exits right after."""

    def __init__(self, backend: Backend, netns: str, ipv6_hint: bool) -> None:
        self._backend = backend
        self._netns = netns
        self._ipv6_hint = ipv6_hint
        self._worker = Worker(backend.prepare) if backend.needs_worker else None

    @property
    def backend_name(self) -> str:
        return self._backend.name

    def _run(self, job: Job, plan: Plan, config: PluginConfig) -> Any:
        if self._worker is None:
            from cni.netns import enter_pod

            enter_pod(self._netns)
            return _in_pod(self._backend, self._ipv6_hint, job, plan, config)
        return self._worker.run(self._netns, _in_pod, self._backend, self._ipv6_hint, job, plan, config)

    def configure(self, plan: Plan, config: PluginConfig) -> list[int]:
        families: list[int] = self._run(configure, plan, config)
        return families

    def inspect(self, plan: Plan, config: PluginConfig) -> list[str]:
        problems: list[str] = self._run(inspect, plan, config)
        return problems

    def cancel(self) -> None:
        """Stop a worker that got no job (an unprotected pod, an API error); it touched nothing."""
        if self._worker is not None:
            self._worker.dismiss()

    def __enter__(self) -> Applier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()
