"""ADD, CHECK and DEL as cni/main.py runs them, without root: the real applier, in-process runner and
jobs, with an in-memory backend injected (tests/support/fakes.py) and the runner's netns entry
recorded instead of made. What ADD writes is held to the golden files (tests/golden) and to rules
written out here, never to rules rebuilt by the code under test. The pod lookup is a stand-in for the
kube-apiserver where a test says so; the kernel side is tests/integration's job."""

from __future__ import annotations

import json
import socket

import pytest

from cni import main
from cni.config import PluginConfig, parse_config
from cni.errors import CHECK_MISMATCH, INVALID_CONFIG, NETFILTER_FAILURE, TRY_AGAIN_LATER, CniError
from cni.log import Logger
from cni.model import Foreign, Rule
from cni.pod.applier import Applier
from cni.pod.runner import InProcess
from cni.policy import PodFacts
from cni.protocol import Request, build_request, result_has_ipv6
from tests.support import golden
from tests.support.fakes import FakeBackend

# An IPv6 address in the previous result gives the pod both families, whatever this machine's netns has.
PREV = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}],
        "ips": [{"address": "10.88.0.5/24"}, {"address": "fd00:88::5/64"}]}
PROTECTED = PodFacts(protected=True, annotations={}, source="api")
NETNS = "/run/netns/x"


class Harness:
    """Starts real Appliers on one FakeBackend; their runner records the netns it would enter."""

    def __init__(self) -> None:
        self.backend = FakeBackend()
        self.started = 0
        self.entered: list[str] = []
        self.lookups = 0

    def runner(self) -> InProcess:
        return InProcess(self.backend.prepare, enter=self.entered.append)

    def start(self, request: Request, config: PluginConfig) -> Applier:
        self.started += 1
        return Applier(self.backend, request.netns, result_has_ipv6(request.conf.get("prevResult")), self.runner())

    def remove(self) -> list[str]:
        """DEL's removal, through the fake backend alone."""
        return [self.backend.name] if self.backend.remove() else []

    def lookup_returning(self, facts: PodFacts):
        """The pod lookup's stand-in (the kube-apiserver's part)."""
        def lookup(request: Request, config: PluginConfig) -> PodFacts:
            self.lookups += 1
            return facts
        return lookup

    def untouched(self) -> bool:
        return self.entered == [] and self.backend.calls == []


def request_for(command: str = "ADD", namespace: str = "default", name: str = "web", netns: str = NETNS,
                **conf: object) -> Request:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c0ffee", "CNI_NETNS": netns, "CNI_IFNAME": "eth0",
           "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}" if name else ""}
    stdin = {"cniVersion": "1.0.0", "name": "test", "type": "microgateway-cni", "prevResult": PREV, **conf}
    return build_request(env, json.dumps(stdin).encode())


LOGGER = Logger("error")
CONFIG = PluginConfig()


@pytest.mark.parametrize(("namespace", "name"), [("default", ""), ("kube-system", "coredns"),
                                                 ("kube-system", "microgateway-cni-x7k2p")])
def test_skipped_pods_are_passed_through_without_lookup_or_applier(namespace, name):
    harness = Harness()
    result = main.cmd_add(request_for(namespace=namespace, name=name), CONFIG, LOGGER,
                          harness.lookup_returning(PROTECTED), harness.start)
    assert result == {**PREV, "cniVersion": "1.0.0"}
    assert harness.lookups == 0 and harness.started == 0 and harness.untouched()


def test_unprotected_pod_touches_nothing():
    harness = Harness()
    result = main.cmd_add(request_for(), CONFIG, LOGGER,
                          harness.lookup_returning(PodFacts(False, {}, "api")), harness.start)
    assert result["ips"] == PREV["ips"]
    assert harness.started == 1 and harness.untouched()


@pytest.mark.parametrize("case", sorted(golden.CASES))
def test_protected_pod_gets_the_golden_rule_sets_in_its_netns(case):
    harness = Harness()
    main.cmd_add(request_for(), CONFIG, LOGGER,
                 harness.lookup_returning(PodFacts(True, golden.CASES[case], "api")), harness.start)
    assert harness.entered == [NETNS] and harness.backend.calls == ["apply"]
    for family in (4, 6):
        golden.check(case, family, harness.backend.saved(family))


# The nat rules of golden.CASES["excluded-ports"] for IPv4 per chain, written out: the excluded ports,
# then the Engine's own, return before the redirect.
EXCLUDED_PORTS_NAT_V4 = {
    "MGW_INBOUND": ["-A MGW_INBOUND -p tcp -m tcp --dport 8081 -j RETURN",
                    "-A MGW_INBOUND -p tcp -m tcp --dport 9090:9091 -j RETURN",
                    "-A MGW_INBOUND -p tcp -m tcp --dport 13378 -j RETURN",
                    "-A MGW_INBOUND -p tcp -m tcp --dport 19000:19002 -j RETURN",
                    "-A MGW_INBOUND -p tcp -j REDIRECT --to-ports 13378"],
    "MGW_OUTPUT": ["-A MGW_OUTPUT -d 127.0.0.1/32 -o lo -p tcp -m tcp --dport 19003 -j MGW_INBOUND"],
    "MGW_PREROUTING": ["-A MGW_PREROUTING -p tcp -j MGW_INBOUND"],
}


def test_excluded_ports_return_before_the_redirect():
    harness = Harness()
    annotations = {"sidecar.microgateway.airlock.com/excludeInboundPorts": "9091,8081, 9090"}
    main.cmd_add(request_for(), CONFIG, LOGGER, harness.lookup_returning(PodFacts(True, annotations, "api")),
                 harness.start)
    nat = harness.backend.state[4, "nat"]
    assert {chain: [rule.render() for rule in nat.rules if rule.chain == chain]
            for chain in nat.chains} == EXCLUDED_PORTS_NAT_V4
    assert [jump.render() for jump in nat.jumps] == ["-A PREROUTING -p tcp -j MGW_PREROUTING",
                                                     "-A OUTPUT -p tcp -j MGW_OUTPUT"]


def unreachable_api(tmp_path) -> PluginConfig:
    """A kubeconfig naming a loopback port nobody listens on, with a short API deadline."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "current-context": "c", "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
        "clusters": [{"name": "k", "cluster": {"server": f"https://127.0.0.1:{port}",
                                               "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "t"}}]}))
    return parse_config({"kubernetes": {"kubeconfig": str(kubeconfig), "apiDeadlineSeconds": 0.2}})


def no_kubeconfig(tmp_path) -> PluginConfig:
    return parse_config({"kubernetes": {"kubeconfig": str(tmp_path / "absent")}})


def garbled_kubeconfig(tmp_path) -> PluginConfig:
    (tmp_path / "kubeconfig").write_text("{not: [json, nor yaml")
    return parse_config({"kubernetes": {"kubeconfig": str(tmp_path / "kubeconfig")}})


API_CONDITIONS = [(unreachable_api, TRY_AGAIN_LATER, "unreachable"), (no_kubeconfig, INVALID_CONFIG, "absent"),
                  (garbled_kubeconfig, INVALID_CONFIG, "neither JSON nor YAML")]


@pytest.mark.parametrize(("condition", "code", "named"), API_CONDITIONS, ids=["unreachable", "missing", "garbled"])
def test_without_the_api_or_the_runtimes_annotations_add_fails_closed(tmp_path, condition, code, named):
    """The real lookup; the runtime handed no annotations, so the pod may be protected by either."""
    harness = Harness()
    with pytest.raises(CniError) as failed:
        main.cmd_add(request_for(), condition(tmp_path), LOGGER, main.lookup_pod, harness.start)
    assert failed.value.code == code and named in failed.value.msg
    assert harness.started == 1 and harness.untouched()


@pytest.mark.parametrize(("condition", "code", "named"), API_CONDITIONS, ids=["unreachable", "missing", "garbled"])
def test_without_the_api_a_pod_its_annotations_do_not_protect_is_passed_through_with_a_warning(
        tmp_path, condition, code, named):
    harness = Harness()
    log = tmp_path / "plugin.log"
    request = request_for(runtimeConfig={"io.kubernetes.cri.pod-annotations": {"team": "shop"}})
    result = main.cmd_add(request, condition(tmp_path), Logger("warn", str(log)), main.lookup_pod, harness.start)
    assert result["ips"] == PREV["ips"]
    assert harness.started == 1 and harness.untouched()
    [entry] = [json.loads(line) for line in log.read_text().splitlines()]
    assert entry["level"] == "warn" and entry["msg"].startswith("passed through")
    assert named in entry["reason"] and "validator" in entry["guard"]


def test_runtime_annotations_are_conclusive_without_the_api():
    """No kubeconfig exists: the rules can only come from the runtime's annotations."""
    request = request_for(runtimeConfig={"io.kubernetes.cri.pod-annotations": {
        "sidecar.microgateway.airlock.com/inject": "true", "sidecar.microgateway.airlock.com/serviceMesh": "istio"}})
    harness = Harness()
    config = parse_config({"kubernetes": {"kubeconfig": "/nonexistent/kubeconfig"}})
    main.cmd_add(request, config, LOGGER, main.lookup_pod, harness.start)
    for family in (4, 6):
        golden.check("istio-all", family, harness.backend.saved(family))


@pytest.mark.parametrize("annotations", [
    {"sidecar.microgateway.airlock.com/serviceMesh": "linkerd"},
    {"sidecar.microgateway.airlock.com/excludeInboundPorts": "80,http"},
    {"sidecar.microgateway.airlock.com/serviceMesh": "istio", "sidecar.istio.io/interceptionMode": "TPROXY"},
])
def test_bad_annotations_are_error_7_before_anything_is_applied(annotations):
    harness = Harness()
    with pytest.raises(CniError) as failed:
        main.cmd_add(request_for(), CONFIG, LOGGER, harness.lookup_returning(PodFacts(True, annotations, "api")),
                     harness.start)
    assert failed.value.code == INVALID_CONFIG
    assert harness.untouched()


def test_a_failing_apply_is_the_commands_error():
    harness = Harness()
    harness.backend.fail = CniError(NETFILTER_FAILURE, "IPv6 nat commit failed")
    with pytest.raises(CniError, match="IPv6 nat commit failed"):
        main.cmd_add(request_for(), CONFIG, LOGGER, harness.lookup_returning(PROTECTED), harness.start)


def _configured() -> Harness:
    harness = Harness()
    main.cmd_add(request_for(), CONFIG, LOGGER, harness.lookup_returning(PROTECTED), harness.start)
    return harness


def _check(harness: Harness) -> None:
    main.cmd_check(request_for("CHECK"), CONFIG, LOGGER, harness.lookup_returning(PROTECTED), harness.start)


def _edit(harness: Harness, family: int, **fields: object) -> None:
    harness.backend.state[family, "nat"] = harness.backend.state[family, "nat"]._replace(**fields)


def test_check_passes_on_what_add_wrote():
    harness = _configured()
    _check(harness)
    assert harness.backend.calls == ["apply", "read"] and harness.entered == [NETNS, NETNS]


@pytest.mark.parametrize(("family", "edit", "expected"), [
    (4, lambda live: {"rules": live.rules[:-1]}, "missing IPv4 nat: -A MGW_OUTPUT -d 127.0.0.1/32"),
    (6, lambda live: {"rules": (*live.rules, Rule("MGW_INBOUND", "RETURN", dport="8080"))}, "unexpected IPv6 nat"),
    (4, lambda live: {"rules": tuple(reversed(live.rules))}, "rules of MGW_INBOUND are out of order"),
    (4, lambda live: {"jumps": live.jumps[:1]}, "missing IPv4 nat: -A OUTPUT -p tcp -j MGW_OUTPUT"),
    (6, lambda live: {"jumps": live.jumps * 2}, "rules of OUTPUT are out of order or duplicated"),
    (4, lambda live: {"chains": live.chains[:2]}, "missing IPv4 nat: chain MGW_PREROUTING"),
    (4, lambda live: {"foreign": (Foreign("MGW_INBOUND", "-A MGW_INBOUND -j LOG", "-j LOG {}"),)},
     "unexpected IPv4 nat: -A MGW_INBOUND -j LOG"),
])
def test_check_reports_drift(family, edit, expected):
    harness = _configured()
    _edit(harness, family, **edit(harness.backend.state[family, "nat"]))
    with pytest.raises(CniError) as failed:
        _check(harness)
    assert failed.value.code == CHECK_MISMATCH and expected in failed.value.details, failed.value.details


def test_check_of_an_unprotected_pod_reads_nothing():
    harness = Harness()
    main.cmd_check(request_for("CHECK"), CONFIG, LOGGER, harness.lookup_returning(PodFacts(False, {}, "api")),
                   harness.start)
    assert harness.untouched()


@pytest.mark.parametrize("netns", ["", "/run/netns/mgw-unit-never-existed"])
def test_del_without_a_netns_succeeds_without_the_backend(netns):
    harness = Harness()
    main.cmd_del(request_for("DEL", netns=netns), CONFIG, LOGGER, harness.remove)
    assert harness.backend.calls == []


def test_del_on_a_netns_path_that_is_no_namespace_any_more_succeeds(tmp_path):
    """After the runtime unmounted it, a netns path is an ordinary file; its rules died with the netns."""
    stale = tmp_path / "netns"
    stale.write_text("")
    harness = Harness()
    main.cmd_del(request_for("DEL", netns=str(stale)), CONFIG, LOGGER, harness.remove)
    assert harness.backend.calls == []


def test_del_that_cannot_remove_still_succeeds(capsys):
    """A failing DEL would stop libcni's chain and leave the pod stuck Terminating (docs/design.md)."""
    harness = _configured()
    harness.backend.fail = CniError(NETFILTER_FAILURE, "cannot delete MGW_INBOUND")
    main.cmd_del(request_for("DEL"), CONFIG, Logger("warn"), harness.remove, harness.runner())
    captured = capsys.readouterr()
    assert captured.out == "" and "cannot delete MGW_INBOUND" in captured.err
    harness.backend.fail = None
    main.cmd_del(request_for("DEL"), CONFIG, LOGGER, harness.remove, harness.runner())
    assert harness.backend.state == {} and harness.entered == [NETNS, NETNS, NETNS]


def test_run_prints_nothing_but_the_result_or_the_error(capsys):
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_NETNS": NETNS, "CNI_IFNAME": "eth0"}
    code, document = main.run(env, json.dumps({"cniVersion": "1.0.0", "name": "n", "prevResult": PREV}).encode())
    assert code == 0 and document == {**PREV, "cniVersion": "1.0.0"}
    code, document = main.run(env, b'{"cniVersion": "1.0.0", "logLevel": "loud"}')
    assert code == 1 and document is not None and document["code"] == INVALID_CONFIG and "logLevel" in document["msg"]
    assert capsys.readouterr().out == ""
