"""The backend seam's contract (docs/design.md, "Backend seam") against each backend, in a real netns:
apply, read back, apply again, remove. A new backend joins BACKENDS and must pass unchanged."""

from __future__ import annotations

import pytest

from cni.config import PluginConfig
from cni.model import Live, RuleSet, drift
from cni.netfilter.backend import Backend
from cni.netfilter.legacy.backend import LegacyBackend
from cni.netfilter.nftables.backend import NftablesBackend
from cni.pod.runner import Worker
from cni.policy import plan_for
from cni.rules import build_rulesets

BACKENDS = [LegacyBackend, NftablesBackend]
FAMILIES = [4, 6]


def _scenario(backend: Backend, rulesets: list[RuleSet]) -> dict[str, object]:
    """Runs in a worker inside the test netns."""
    tables = tuple(sorted({rs.table for rs in rulesets}))
    backend.apply(rulesets)
    first = backend.read(FAMILIES, tables)
    backend.apply(rulesets)
    second = backend.read(FAMILIES, tables)
    removed = backend.remove()
    after = backend.read(FAMILIES, tables)
    return {"first": first, "second": second, "removed": removed, "after": after,
            "removed_again": backend.remove()}


@pytest.fixture
def netns(node):
    name = f"mgwt-{node.id}-backend"
    node.add_netns(name)
    return name


def _problems(expected: list[RuleSet], live: list[Live]) -> list[str]:
    by_key = {(state.family, state.table): state for state in live}
    return [p for rs in expected for p in drift(rs, by_key[rs.family, rs.table])]


@pytest.mark.parametrize("backend_class", BACKENDS)
@pytest.mark.parametrize("case", ["nat", "nat+filter"])
def test_apply_read_apply_remove(node, netns, backend_class, case):
    backend = backend_class()
    rulesets = build_rulesets(plan_for({"sidecar.microgateway.airlock.com/serviceMesh": "istio"}), PluginConfig(),
                              FAMILIES)
    if case == "nat":
        rulesets = [ruleset for ruleset in rulesets if ruleset.table == "nat"]
    with Worker(backend.prepare) as worker:
        seen = worker.run(f"/run/netns/{netns}", _scenario, backend, rulesets)
    assert _problems(rulesets, seen["first"]) == []
    assert seen["second"] == seen["first"], "apply again must replace, not add"
    assert seen["removed"] is True and seen["removed_again"] is False
    assert all(not (live.chains or live.rules or live.jumps or live.foreign) for live in seen["after"])


@pytest.mark.parametrize("backend_class", BACKENDS)
def test_remove_keeps_foreign_rules_and_reports_no_foreign_when_clean(node, netns, backend_class):
    node.exec(netns, ["iptables-legacy", "-t", "nat", "-A", "PREROUTING", "-p", "udp", "-j", "RETURN"])
    backend = backend_class()
    rulesets = build_rulesets(plan_for({}), PluginConfig(), [4])
    with Worker(backend.prepare) as worker:
        seen = worker.run(f"/run/netns/{netns}", _scenario, backend, rulesets)
    assert all(not live.foreign for live in seen["first"])
    assert "-A PREROUTING -p udp -j RETURN" in node.exec(netns, ["iptables-legacy-save", "-t", "nat"]).stdout


def test_legacy_reads_what_the_model_cannot_express_as_foreign(node, netns):
    backend = LegacyBackend()
    rulesets = build_rulesets(plan_for({}), PluginConfig(), [4])
    with Worker(backend.prepare) as worker:
        worker.run(f"/run/netns/{netns}", backend.apply, rulesets)
    node.exec(netns, ["iptables-legacy", "-t", "nat", "-I", "MGW_INBOUND", "1", "-p", "tcp", "-m", "comment",
                      "--comment", "added by hand", "-j", "RETURN"])
    node.exec(netns, ["iptables-legacy", "-t", "nat", "-I", "MGW_OUTPUT", "1", "!", "-o", "lo", "-j", "RETURN"])
    with Worker(backend.prepare) as worker:
        live = worker.run(f"/run/netns/{netns}", backend.read, [4], ("nat",))
    reasons = sorted(entry.reason for entry in live[0].foreign)
    assert len(reasons) == 2 and "inverted match" in reasons and any("comment" in r for r in reasons), reasons
    assert drift(rulesets[0], live[0])[:2] == [f"unexpected IPv4 nat: {e.text} [{e.reason}]" for e in live[0].foreign]
