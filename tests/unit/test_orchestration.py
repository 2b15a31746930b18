"""ADD, CHECK and DEL as cni/main.py runs them, without root: a fake backend in memory and an inline
applier instead of the forked worker. The rule sets, the plan, the policy and the drift are the real
ones; the kernel side is tests/integration's job."""

from __future__ import annotations

import json
import socket

import pytest

from cni import main
from cni.applier import configure, inspect
from cni.backend import Backend
from cni.config import PluginConfig, parse_config
from cni.errors import CHECK_MISMATCH, INVALID_CONFIG, NETFILTER_FAILURE, TRY_AGAIN_LATER, CniError
from cni.log import Logger
from cni.model import TABLES, Foreign, Live, Rule, RuleSet
from cni.policy import PodFacts, plan_for
from cni.protocol import Request, build_request
from cni.rules import INBOUND, build_rulesets

PREV = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}], "ips": [{"address": "10.88.0.5/24"}]}
PROTECTED = PodFacts(protected=True, annotations={}, source="api")


class FakeBackend(Backend):
    """Our rules in a dict, keyed by (family, table); `fail` makes the next apply or remove fail."""

    name = "fake"

    def __init__(self) -> None:
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
        return [self.state.get((f, t), Live(f, t, (), (), ())) for f in families for t in tables]

    def remove(self) -> bool:
        self.calls.append("remove")
        if self.fail:
            raise self.fail
        found, self.state = bool(self.state), {}
        return found


class InlineApplier:
    """cni.applier.Applier's interface, running the same jobs in this process for fixed families."""

    def __init__(self, backend: Backend, families: list[int]) -> None:
        self.backend, self.families, self.cancelled = backend, families, False

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def configure(self, plan, config):
        return configure(self.backend, self.families, plan, config)

    def inspect(self, plan, config):
        return inspect(self.backend, self.families, plan, config)

    def cancel(self) -> None:
        self.cancelled = True

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class Harness:
    def __init__(self, families=(4, 6)) -> None:
        self.backend = FakeBackend()
        self.appliers: list[InlineApplier] = []
        self.lookups = 0
        self.families = list(families)

    def start(self, request: Request, config: PluginConfig) -> InlineApplier:
        applier = InlineApplier(self.backend, self.families)
        self.appliers.append(applier)
        return applier

    def remove(self) -> list[str]:
        """DEL's removal, through the fake backend alone."""
        return [self.backend.name] if self.backend.remove() else []

    def lookup_returning(self, facts: PodFacts):
        def lookup(request: Request, config: PluginConfig) -> PodFacts:
            self.lookups += 1
            return facts
        return lookup


def request_for(command: str = "ADD", namespace: str = "default", name: str = "web", netns: str = "/run/netns/x",
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
    assert harness.lookups == 0 and harness.appliers == [] and harness.backend.calls == []


def test_unprotected_pod_cancels_the_applier_and_touches_nothing():
    harness = Harness()
    result = main.cmd_add(request_for(), CONFIG, LOGGER,
                          harness.lookup_returning(PodFacts(False, {}, "api")), harness.start)
    assert result["ips"] == PREV["ips"]
    assert harness.appliers[0].cancelled and harness.backend.calls == []


def test_protected_pod_gets_the_plans_rule_sets_for_every_family():
    harness = Harness()
    annotations = {"sidecar.microgateway.airlock.com/excludeInboundPorts": "8081"}
    main.cmd_add(request_for(), CONFIG, LOGGER, harness.lookup_returning(PodFacts(True, annotations, "api")),
                 harness.start)
    expected = build_rulesets(plan_for(annotations), CONFIG, [4, 6])
    assert [harness.backend.state[rs.family, rs.table].rules for rs in expected] == [rs.rules for rs in expected]
    assert harness.appliers[0].cancelled  # the with block always ends the applier


def test_api_unreachable_is_error_11_and_nothing_is_applied(tmp_path):
    """The real lookup against a loopback port nobody listens on, with a short API deadline."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "current-context": "c", "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
        "clusters": [{"name": "k", "cluster": {"server": f"https://127.0.0.1:{port}",
                                               "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "t"}}]}))
    config = parse_config({"kubernetes": {"kubeconfig": str(kubeconfig), "apiDeadlineSeconds": 0.2}})
    harness = Harness()
    with pytest.raises(CniError) as failed:
        main.cmd_add(request_for(), config, LOGGER, main.lookup_pod, harness.start)
    assert failed.value.code == TRY_AGAIN_LATER and "unreachable" in failed.value.msg
    assert harness.appliers[0].cancelled and harness.backend.calls == []


def test_runtime_annotations_are_conclusive_without_the_api():
    request = request_for(runtimeConfig={"io.kubernetes.cri.pod-annotations": {
        "sidecar.microgateway.airlock.com/inject": "true", "sidecar.microgateway.airlock.com/serviceMesh": "istio"}})
    harness = Harness(families=[4])
    config = parse_config({"kubernetes": {"kubeconfig": "/nonexistent/kubeconfig"}})
    main.cmd_add(request, config, LOGGER, main.lookup_pod, harness.start)
    assert any(rule.uid_owner == config.istio_proxy_uid for rule in harness.backend.state[4, "nat"].rules)


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
    assert harness.appliers[0].cancelled and harness.backend.calls == []


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
    _check(_configured())


@pytest.mark.parametrize(("family", "edit", "expected"), [
    (4, lambda live: {"rules": live.rules[:-1]}, "missing IPv4 nat: -A MGW_OUTPUT -d 127.0.0.1/32"),
    (6, lambda live: {"rules": (*live.rules, Rule(INBOUND, "RETURN", dport="8080"))}, "unexpected IPv6 nat"),
    (4, lambda live: {"rules": tuple(reversed(live.rules))}, "rules of MGW_INBOUND are out of order"),
    (4, lambda live: {"jumps": live.jumps[:1]}, "missing IPv4 nat: -A OUTPUT -p tcp -j MGW_OUTPUT"),
    (6, lambda live: {"jumps": live.jumps * 2}, "rules of OUTPUT are out of order or duplicated"),
    (4, lambda live: {"chains": live.chains[:2]}, "missing IPv4 nat: chain MGW_PREROUTING"),
    (4, lambda live: {"foreign": (Foreign(INBOUND, "-A MGW_INBOUND -j LOG", "-j LOG {}"),)},
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
    assert harness.backend.calls == [] and harness.appliers[0].cancelled


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


def test_del_that_cannot_remove_still_succeeds(monkeypatch, capsys):
    """A failing DEL would stop libcni's chain and leave the pod stuck Terminating (docs/design.md)."""
    import cni.netns

    monkeypatch.setattr(cni.netns, "enter", lambda path: None)
    harness = _configured()
    harness.backend.fail = CniError(NETFILTER_FAILURE, "cannot delete MGW_INBOUND")
    main.cmd_del(request_for("DEL"), CONFIG, Logger("warn"), harness.remove)
    captured = capsys.readouterr()
    assert captured.out == "" and "cannot delete MGW_INBOUND" in captured.err
    harness.backend.fail = None
    main.cmd_del(request_for("DEL"), CONFIG, LOGGER, harness.remove)
    assert harness.backend.state == {}


def test_run_prints_nothing_but_the_result_or_the_error(capsys):
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0"}
    code, document = main.run(env, json.dumps({"cniVersion": "1.0.0", "name": "n", "prevResult": PREV}).encode())
    assert code == 0 and document == {**PREV, "cniVersion": "1.0.0"}
    code, document = main.run(env, b'{"cniVersion": "1.0.0", "logLevel": "loud"}')
    assert code == 1 and document is not None and document["code"] == INVALID_CONFIG and "logLevel" in document["msg"]
    assert capsys.readouterr().out == ""
