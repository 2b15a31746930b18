"""I2: behind an Istio proxy, whether Istio's rules are written before or after ours, with
iptables-legacy, iptables-nft or Istio's native nftables mode - for each backend of ours."""

from __future__ import annotations

import pytest

from tests.support.istio import write_istio
from tests.support.node import ENGINE_UID, ISTIO_UID, pod_fixture
from tests.support.pods import client_pod, target

pytestmark = pytest.mark.backends

ANNOTATIONS = {"sidecar.microgateway.airlock.com/serviceMesh": "istio",
               "sidecar.microgateway.airlock.com/excludeInboundPorts": "8081",
               "traffic.sidecar.istio.io/excludeInboundPorts": "9090"}
PORTS = [8080, 8081, 9090, 15000, 15020]


@pytest.mark.parametrize("istio_backend", ["legacy", "nft", "native-nft"])
@pytest.mark.parametrize("order", ["istio-first", "istio-after"])
@pytest.mark.parametrize("fixture_name", ["node", "node46"])
def test_istio(request, backend, fixture_name, order, istio_backend):
    node = request.getfixturevalue(fixture_name)
    node.add_pod_fixture(pod_fixture("mesh", annotations=ANNOTATIONS))
    conflist = node.write_conflist()
    if order == "istio-first":  # Istio CNI earlier in the chain
        pod = node.new_pod("mesh", conflist, before_add=lambda p: write_istio(node, p, istio_backend))
    else:  # istio-init runs after every CNI plugin
        pod = node.new_pod("mesh", conflist)
        write_istio(node, pod, istio_backend)
    node.start_workloads(pod, PORTS, istio=True)
    client = client_pod(node)
    for family in node.families:
        t = {port: target(pod, port, family) for port in (8080, 8081, 9090, 15020, 4444)}
        replies = node.connect(client.netns, list(t.values()))
        # captured by Istio, then from 127.0.0.6 (::6) to the pod IP -> Engine -> app
        assert replies[t[8080]] == "istio=mesh -> engine=mesh orig=8080 -> app=mesh port=8080", family
        assert replies[t[4444]] == "istio=mesh -> engine=mesh orig=4444", family
        # excluded from the Engine: Istio still handles it
        assert replies[t[8081]] == "istio=mesh -> app=mesh port=8081", family
        # not captured by Istio: straight to the Engine
        assert replies[t[9090]] == "engine=mesh orig=9090 -> app=mesh port=9090", family
        # Istio's own ports are untouched
        assert replies[t[15020]] == "app=mesh port=15020", family
    loopback = node.connect(pod.netns, ["127.0.0.1:8080", "127.0.0.1:15000"], uid=ISTIO_UID)
    assert loopback == {"127.0.0.1:8080": "engine=mesh orig=8080 -> app=mesh port=8080",
                        "127.0.0.1:15000": "app=mesh port=15000"}
    # I3 in istio mode: the Engine's own connection is not redirected
    assert node.connect(pod.netns, [target(pod, 8080)], uid=ENGINE_UID) == {target(pod, 8080): "app=mesh port=8080"}
    # I4 in istio mode
    assert node.connect(pod.netns, ["127.0.0.1:19003"], uid=1002) == {"127.0.0.1:19003": "engine=mesh orig=19003"}
