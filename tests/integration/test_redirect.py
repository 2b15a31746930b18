"""I1-I4 with real traffic: client pod -> protected pod through the chain bridge + microgateway-cni."""

from __future__ import annotations

import pytest

from tests.support.node import ENGINE_UID, pod_fixture
from tests.support.pods import APP_PORTS, client_pod, probe_from_inside, protected_pod, sweep_ports, target
from tests.support.tampering import tamper

pytestmark = pytest.mark.backends
EXCLUDE = {"sidecar.microgateway.airlock.com/excludeInboundPorts": "8081"}


def test_no_mesh_every_port_reaches_engine_except_excluded_and_own(node):
    """I1: a sweep of 150+ ports all land on :13378; excluded and Engine-own ports reach the app."""
    pod = protected_pod(node, "web", EXCLUDE)
    client = client_pod(node)
    ports = sweep_ports()
    replies = node.connect(client.netns, [target(pod, p) for p in ports if p != 8081])
    for port in ports:
        if port == 8081:
            continue
        reply = replies[target(pod, port)]
        expected = f"engine=web orig={port}"
        assert reply.startswith(expected), (port, reply)
    direct = node.connect(client.netns, [target(pod, 8081), target(pod, 19001)])
    assert direct == {target(pod, 8081): "app=web port=8081", target(pod, 19001): "app=web port=19001"}
    assert replies[target(pod, 8080)] == "engine=web orig=8080 -> app=web port=8080"


@pytest.mark.parametrize("fixture_name", ["node6", "node46"])
def test_ipv6_and_dual_stack(request, backend, fixture_name):
    """I1 for IPv6: no IPv6 path around the Engine; dual-stack keeps IPv4 protected too."""
    node = request.getfixturevalue(fixture_name)
    pod = protected_pod(node, "web", EXCLUDE)
    client = client_pod(node)
    ports = sweep_ports(count=40)
    for family in node.families:
        replies = node.connect(client.netns, [target(pod, p, family) for p in ports])
        for port in ports:
            reply = replies[target(pod, port, family)]
            if port == 8081:
                assert reply == "app=web port=8081"
            else:
                assert reply.startswith(f"engine=web orig={port}"), (family, port, reply)
    assert node.mgw_rules(pod, 6), "IPv6 rules missing"
    loopbacks = [{4: "127.0.0.1:19003", 6: "[::1]:19003"}[family] for family in node.families]
    probes = probe_from_inside(node, pod, loopbacks)
    assert probes == dict.fromkeys(loopbacks, "engine=web orig=19003")


def test_ipv4_only_pod_still_gets_ipv6_rules_when_kernel_gives_it_ipv6(node):
    """Loopback ::1 and link-local addresses exist whenever IPv6 is enabled: they get rules too."""
    pod = protected_pod(node, "web")
    assert any("13378" in line and "redirect" in line.lower() for line in node.mgw_rules(pod, 6))


def test_no_loop_engine_connection_to_app_is_not_redirected(node):
    """I3: the Engine's own connections to the application (loopback or pod IP) reach the app."""
    pod = protected_pod(node, "web")
    replies = probe_from_inside(node, pod, ["127.0.0.1:8080", target(pod, 8080), "127.0.0.1:9090"], uid=ENGINE_UID)
    assert replies == {"127.0.0.1:8080": "app=web port=8080", target(pod, 8080): "app=web port=8080",
                       "127.0.0.1:9090": "app=web port=9090"}


def test_probe_goes_through_the_inbound_chain(node):
    """I4: 127.0.0.1:19003 lands on :13378; break the shared redirect and the probe fails with it."""
    pod = protected_pod(node, "web")
    assert probe_from_inside(node, pod, ["127.0.0.1:19003"]) == {"127.0.0.1:19003": "engine=web orig=19003"}
    tamper(node, pod, "delete redirect")
    assert probe_from_inside(node, pod, ["127.0.0.1:19003"])["127.0.0.1:19003"].startswith("error")


def test_non_protected_pod_untouched(node):
    node.add_pod_fixture(pod_fixture("plain", protected=False))
    conflist = node.write_conflist()
    pod = node.new_pod("plain", conflist)
    node.start_workloads(pod, APP_PORTS)
    client = client_pod(node)
    assert node.mgw_rules(pod) == [] and node.mgw_rules(pod, 6) == []
    replies = node.connect(client.netns, [target(pod, 8080), target(pod, 5555)])
    assert replies[target(pod, 8080)] == "app=plain port=8080"
    assert replies[target(pod, 5555)].startswith("error")
    assert pod.result["ips"], "prevResult must be passed through"


def test_concurrent_pods_all_configured_none_crossed(node):
    """20 protected pods ADDed at once through libcni; each pod's traffic reaches its own Engine."""
    import concurrent.futures

    names = [f"web{i}" for i in range(20)]
    for name in names:
        node.add_pod_fixture(pod_fixture(name))
    conflist = node.write_conflist()
    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        pods = list(pool.map(lambda n: node.new_pod(n, conflist), names))
    client = client_pod(node)
    for pod in pods:
        node.spawn(pod.netns, [node_python(), "-m", "tests.support.programs.standins", "engine", "--name", pod.name,
                               "--port", "13378"], uid=ENGINE_UID)
    replies = node.connect(client.netns, [target(pod, 8080) for pod in pods])
    for pod in pods:
        assert replies[target(pod, 8080)] == f"engine={pod.name} orig=8080"
        assert len(node.mgw_rules(pod)) == len(node.mgw_rules(pods[0]))
    assert len({pod.ip() for pod in pods}) == 20


def node_python() -> str:
    import sys

    return sys.executable
