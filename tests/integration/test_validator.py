"""The validator, unprivileged (uid 1002) inside real pods configured (or not) by the plugin."""

from __future__ import annotations

import json
import sys

import pytest

from tests.support.node import VALIDATOR_UID, Node, Pod, executable, pod_fixture
from tests.support.tampering import nft_handle, tamper

pytestmark = pytest.mark.backends

VALIDATOR = str(executable("microgateway-network-validator"))


def run_validator(node: Node, pod: Pod, *args: str) -> tuple[int, dict, str]:
    code, stdout, message = node.validate(pod, *args)
    lines = stdout.splitlines()
    assert len(lines) == 1, stdout  # one JSON line on stdout, nothing else
    return code, json.loads(lines[0]), message


def configured_pod(node: Node, annotations: dict[str, str] | None = None) -> Pod:
    node.add_pod_fixture(pod_fixture("web", annotations=annotations))
    return node.new_pod("web", node.write_conflist())


@pytest.mark.parametrize("fixture_name", ["node", "node6", "node46"])
@pytest.mark.parametrize("mesh", ["none", "istio"])
def test_passes_in_configured_pod(request, backend, fixture_name, mesh):
    node = request.getfixturevalue(fixture_name)
    pod = configured_pod(node, {"sidecar.microgateway.airlock.com/serviceMesh": mesh})
    code, verdict, message = run_validator(node, pod)
    assert code == 0, verdict
    assert verdict["verdict"] == "pass"
    assert [p["family"] for p in verdict["probes"]] == [4, 6]  # ::1 exists in every pod here
    assert all(p["outcome"] == "redirected" for p in verdict["probes"])
    assert "passed" in message


def assert_fails(node: Node, pod: Pod, outcome: str | None = None) -> dict:
    code, verdict, message = run_validator(node, pod, "--deadline", "0.5")
    assert code == 3, verdict
    assert verdict["verdict"] == "fail"
    if outcome:
        assert outcome in [p["outcome"] for p in verdict.get("probes", [])] or verdict.get("reason") == outcome
    assert "DaemonSet" in message and "delete this pod" in message
    return verdict


def test_fails_without_rules(node):
    pod = node.new_pod("web", node.write_conflist(chained=False))
    assert_fails(node, pod, "refused")


def test_fails_when_rules_flushed_after_add(node):
    pod = configured_pod(node)
    tamper(node, pod, "flush inbound")
    assert_fails(node, pod)


def test_fails_when_redirected_to_another_port(node):
    pod = configured_pod(node)
    tamper(node, pod, "redirect elsewhere")
    assert_fails(node, pod)


def test_not_fooled_by_a_listener_on_the_validation_port(node):
    pod = node.new_pod("web", node.write_conflist(chained=False))
    node.spawn(pod.netns, [sys.executable, "-m", "tests.support.programs.standins", "engine", "--name", "impostor",
                           "--port", "19003", "--host4", "127.0.0.1"], uid=1000)
    assert_fails(node, pod, "foreign")


def test_engine_port_already_taken_is_its_own_failure(node):
    pod = configured_pod(node)
    node.spawn(pod.netns, [sys.executable, "-m", "tests.support.programs.standins", "engine", "--name", "early",
                           "--port", "13378"], uid=1000)
    verdict = assert_fails(node, pod, "engine-port-in-use")
    assert verdict["reason"] == "engine-port-in-use"


def test_fails_when_only_one_family_configured(node46):
    pod = configured_pod(node46)
    tamper(node46, pod, "flush inbound", family=6)
    verdict = assert_fails(node46, pod)
    assert [p["ok"] for p in verdict["probes"]] == [True, False]


def test_runs_as_non_root(node):
    pod = configured_pod(node)
    uid = node.exec(pod.netns, ["id", "-u"], uid=VALIDATOR_UID).stdout.strip()
    assert uid == str(VALIDATOR_UID)
    assert run_validator(node, pod)[0] == 0


def test_engine_can_bind_its_port_right_after_the_validator(node):
    """The probe's TIME_WAIT on :13378 must not block the Engine, which binds it as soon as the init
    container exits."""
    pod = configured_pod(node)
    assert run_validator(node, pod)[0] == 0
    node.spawn(pod.netns, [sys.executable, "-m", "tests.support.programs.standins", "engine", "--name", "web",
                           "--port", "13378", "--families", "4,6"], uid=1001)


def diagnose(node: Node, pod: Pod) -> tuple[int, dict]:
    done = node.exec(pod.netns, [VALIDATOR, "diagnose", "--json"], check=False)
    return done.returncode, json.loads(done.stdout)


def test_diagnose_configured_pod_is_healthy(node):
    pod = configured_pod(node, {"sidecar.microgateway.airlock.com/serviceMesh": "istio"})
    node.start_workloads(pod, [8080])
    code, report = diagnose(node, pod)
    assert code == 0, report["invariants"]
    assert report["probes"]["4"]["syn_dport"] == 13378 and report["probes"]["4"]["reply"] == "SA"
    assert report["chains"]["6"]["chains"] == ["MGW_INBOUND", "MGW_OUTPUT", "MGW_PREROUTING"]
    assert report["chains"]["4"]["backends"] == [node.backend]
    shown = "-A MGW_INBOUND -p tcp -j REDIRECT --to-ports 13378" if node.backend == "iptables-legacy" else \
        "ip microgateway MGW_INBOUND: meta l4proto tcp redirect to :13378"
    assert shown in report["chains"]["4"]["rules"]


def test_diagnose_explains_flushed_rules_and_a_loop(node):
    pod = configured_pod(node)
    tamper(node, pod, "flush inbound")
    tamper(node, pod, "output loop")
    code, report = diagnose(node, pod)
    assert code == 3
    findings = report["invariants"]
    assert "REDIRECT" in findings["I1"] and "loop" in findings["I3"] and "reset" in findings["I4"]
    assert findings["I2"] == "ok"


def test_diagnose_shows_the_filter_guard_and_names_it_missing(node):
    """I7 in diagnose: the guard's rules per family; without it, the finding says what gets in."""
    pod = configured_pod(node)
    code, report = diagnose(node, pod)
    assert code == 0 and report["invariants"]["I7"] == "ok", report["invariants"]
    guard = report["chains"]["6"]["guard"]
    if node.backend == "iptables-legacy":  # shown, and removed, in the syntax of the backend that holds it
        jump, icmp = "-A INPUT -j MGW_INPUT", "-A MGW_INPUT -p ipv6-icmp -j RETURN"
        remove_jump = ["ip6tables-legacy", "-t", "filter", "-D", "INPUT", "-j", "MGW_INPUT"]
    else:
        jump = "ip6 microgateway filter-INPUT: jump MGW_INPUT"
        icmp = "ip6 microgateway MGW_INPUT: meta l4proto ipv6-icmp return"
        remove_jump = ["nft", "delete", "rule", "ip6", "microgateway", "filter-INPUT", "handle",
                       nft_handle(node, pod, 6, "filter-INPUT", "jump MGW_INPUT")]
    assert guard["non_tcp"] == "drop" and guard["rules"][0] == jump, guard
    assert icmp in guard["rules"], guard
    node.exec(pod.netns, remove_jump)
    code, report = diagnose(node, pod)
    assert code == 3 and report["invariants"]["I7"].startswith("IPv6: no MGW_INPUT guard"), report["invariants"]
