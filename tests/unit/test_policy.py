import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cni.config import PluginConfig
from cni.errors import CniError
from cni.policy import (
    ALLOW_INBOUND_UDP_PORTS,
    EXCLUDE_INBOUND_PORTS,
    INJECT,
    ISTIO_EXCLUDE_INBOUND,
    ISTIO_INCLUDE_INBOUND,
    ISTIO_INTERCEPTION_MODE,
    NON_TCP_INBOUND,
    SERVICE_MESH,
    Plan,
    PodFacts,
    from_runtime,
    is_protected,
    parse_port_list,
    plan_for,
    skip_reason,
    without_api,
)


@pytest.mark.parametrize(("labels", "annotations", "protected"), [
    ({INJECT: "true"}, {}, True),
    ({}, {INJECT: "true"}, True),
    ({INJECT: "false"}, {INJECT: "true"}, True),
    ({INJECT: "True"}, {}, False),
    ({INJECT: "false"}, {}, False),
    ({}, {}, False),
])
def test_is_protected(labels, annotations, protected):
    assert is_protected(labels, annotations) is protected


@pytest.mark.parametrize(("namespace", "name", "skipped"), [
    ("kube-system", "coredns", True),
    ("default", "microgateway-cni-abcde", False),
    ("kube-system", "microgateway-cni-abcde", True),
    ("", "x", True),
    ("default", "", True),
    ("default", "web", False),
])
def test_skip_reason(namespace, name, skipped):
    assert bool(skip_reason(namespace, name, PluginConfig())) is skipped


def test_installer_pod_skipped_even_when_its_namespace_is_not_excluded():
    config = PluginConfig(exclude_namespaces=(), installer_namespace="mgw")
    assert skip_reason("mgw", "microgateway-cni-x1y2z", config) == "the installer's own pod"
    assert skip_reason("mgw", "web", config) == ""


@pytest.mark.parametrize(("annotations", "plan"), [
    ({}, Plan()),
    ({EXCLUDE_INBOUND_PORTS: "8081, 9090"}, Plan(excluded_ports=(8081, 9090))),
    ({EXCLUDE_INBOUND_PORTS: " 9090,8081,,9090 "}, Plan(excluded_ports=(8081, 9090))),
    ({SERVICE_MESH: "istio"}, Plan(mesh="istio")),
    ({SERVICE_MESH: "istio", ISTIO_INCLUDE_INBOUND: "8080,9090", ISTIO_EXCLUDE_INBOUND: "9090"},
     Plan(mesh="istio", istio_include=(8080, 9090), istio_exclude=(9090,))),
    ({SERVICE_MESH: "istio", ISTIO_INCLUDE_INBOUND: ""}, Plan(mesh="istio", istio_include=())),
    ({SERVICE_MESH: "none", ISTIO_INCLUDE_INBOUND: "garbage"}, Plan()),
])
def test_plan_for(annotations, plan):
    assert plan_for(annotations) == plan


@pytest.mark.parametrize(("annotations", "default", "non_tcp", "udp_ports"), [
    ({}, "drop", "drop", ()),
    ({}, "allow", "allow", ()),
    ({NON_TCP_INBOUND: "allow"}, "drop", "allow", ()),
    ({NON_TCP_INBOUND: "drop"}, "allow", "drop", ()),
    ({ALLOW_INBOUND_UDP_PORTS: "5353, 9000"}, "drop", "drop", (5353, 9000)),
    ({ALLOW_INBOUND_UDP_PORTS: " 9000,5353,,9000 "}, "drop", "drop", (5353, 9000)),
    ({ALLOW_INBOUND_UDP_PORTS: ""}, "drop", "drop", ()),
    ({SERVICE_MESH: "istio", ALLOW_INBOUND_UDP_PORTS: "443"}, "drop", "drop", (443,)),
    ({NON_TCP_INBOUND: "allow", ALLOW_INBOUND_UDP_PORTS: "443"}, "drop", "allow", (443,)),
])
def test_non_tcp_inbound_annotation_overrides_the_node_default(annotations, default, non_tcp, udp_ports):
    """The conflist sets the node's default; a pod's annotation wins in either direction."""
    plan = plan_for(annotations, default)
    assert (plan.non_tcp_inbound, plan.allowed_udp_ports) == (non_tcp, udp_ports)


@pytest.mark.parametrize(("annotations", "named"), [
    ({SERVICE_MESH: "linkerd"}, SERVICE_MESH),
    ({SERVICE_MESH: ""}, SERVICE_MESH),
    ({EXCLUDE_INBOUND_PORTS: "80,http"}, EXCLUDE_INBOUND_PORTS),
    ({EXCLUDE_INBOUND_PORTS: "0"}, EXCLUDE_INBOUND_PORTS),
    ({EXCLUDE_INBOUND_PORTS: "65536"}, EXCLUDE_INBOUND_PORTS),
    ({EXCLUDE_INBOUND_PORTS: "-1"}, EXCLUDE_INBOUND_PORTS),
    ({EXCLUDE_INBOUND_PORTS: "\u00b2"}, EXCLUDE_INBOUND_PORTS),
    ({EXCLUDE_INBOUND_PORTS: "\u0968\u0966"}, EXCLUDE_INBOUND_PORTS),
    ({SERVICE_MESH: "istio", ISTIO_INCLUDE_INBOUND: "8080;9090"}, ISTIO_INCLUDE_INBOUND),
    ({SERVICE_MESH: "istio", ISTIO_INTERCEPTION_MODE: "TPROXY"}, ISTIO_INTERCEPTION_MODE),
    ({NON_TCP_INBOUND: "reject"}, NON_TCP_INBOUND),
    ({NON_TCP_INBOUND: "Allow"}, NON_TCP_INBOUND),
    ({NON_TCP_INBOUND: ""}, NON_TCP_INBOUND),
    ({ALLOW_INBOUND_UDP_PORTS: "443,quic"}, ALLOW_INBOUND_UDP_PORTS),
    ({ALLOW_INBOUND_UDP_PORTS: "0"}, ALLOW_INBOUND_UDP_PORTS),
    ({ALLOW_INBOUND_UDP_PORTS: "65536"}, ALLOW_INBOUND_UDP_PORTS),
    ({ALLOW_INBOUND_UDP_PORTS: "\u00b2"}, ALLOW_INBOUND_UDP_PORTS),
    ({NON_TCP_INBOUND: "allow", ALLOW_INBOUND_UDP_PORTS: "53-54"}, ALLOW_INBOUND_UDP_PORTS),
    ({SERVICE_MESH: "istio", ALLOW_INBOUND_UDP_PORTS: "5353;9000"}, ALLOW_INBOUND_UDP_PORTS),
])
def test_invalid_annotations_fail_with_code_7_naming_them(annotations, named):
    with pytest.raises(CniError) as err:
        plan_for(annotations)
    assert err.value.code == 7
    assert named in err.value.msg


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.text(max_size=40))
def test_port_list_parser_returns_ports_or_cni_error(raw):
    try:
        ports = parse_port_list("k", raw)
    except CniError as err:
        assert err.code == 7 and "k" in err.msg
    else:
        assert all(1 <= p <= 65535 for p in ports)
        assert list(ports) == sorted(set(ports))


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.dictionaries(st.sampled_from([SERVICE_MESH, EXCLUDE_INBOUND_PORTS, ISTIO_INCLUDE_INBOUND,
                                        ISTIO_EXCLUDE_INBOUND, ISTIO_INTERCEPTION_MODE, NON_TCP_INBOUND,
                                        ALLOW_INBOUND_UDP_PORTS, "other"]),
                       st.text(max_size=20)))
def test_plan_for_returns_plan_or_cni_error(annotations):
    try:
        plan = plan_for(annotations)
    except CniError as err:
        assert err.code == 7
    else:
        assert plan.mesh in ("none", "istio")
        assert plan.non_tcp_inbound in ("drop", "allow")


CAPABILITY = "io.kubernetes.cri.pod-annotations"


@pytest.mark.parametrize(("conf", "runtime", "no_api"), [
    # The runtime handed no annotations: nothing is known, the API must decide, and without it we fail.
    ({}, None, None),
    ({"runtimeConfig": {}}, None, None),
    ({"runtimeConfig": {CAPABILITY: "not a mapping"}}, None, None),
    # It handed them and they protect the pod: conclusive either way.
    ({"runtimeConfig": {CAPABILITY: {INJECT: "true", SERVICE_MESH: "istio"}}},
     PodFacts(True, {INJECT: "true", SERVICE_MESH: "istio"}, "runtime"), "n/a"),
    # It handed them and they do not: the label may still protect it; only when the API cannot tell
    # is the pod ordinary, and the reason goes with it.
    ({"runtimeConfig": {CAPABILITY: {}}}, None, PodFacts(False, {}, "runtime", "kube-apiserver unreachable")),
    ({"runtimeConfig": {CAPABILITY: {INJECT: "false", "team": 7}}}, None,
     PodFacts(False, {INJECT: "false", "team": "7"}, "runtime", "kube-apiserver unreachable")),
])
def test_what_the_runtimes_annotations_decide_with_and_without_the_api(conf, runtime, no_api):
    assert from_runtime(conf) == runtime
    if runtime is None:
        assert without_api(conf, "kube-apiserver unreachable") == no_api
