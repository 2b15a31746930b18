"""I7 switches and lifecycle: nonTCPInbound allow/drop (conflist and annotation), the filter-table
rules under CHECK and DEL, and a failed filter commit taking the nat rules back out (I6)."""

from __future__ import annotations

import json
import sys

import pytest

from tests.support.attacks import ProgramOutput, attack
from tests.support.node import APP_UID, ENGINE_UID, Node, Pod, pod_fixture
from tests.support.pods import client_pod, target
from tests.support.runtime import cni_env, cni_error, exec_plugin, plugin_conf

PREFIX = "sidecar.microgateway.airlock.com/"


def exposed_pod(node: Node, name: str, annotations: dict[str, str], **entry: object) -> tuple[Pod, ProgramOutput]:
    node.add_pod_fixture(pod_fixture(name, annotations=annotations))
    pod = node.new_pod(name, node.write_conflist(plugin=node.plugin_entry(**entry), name=f"{name}.conflist"))
    # Container runtimes open every port to unprivileged users inside a pod.
    node.exec(pod.netns, ["sysctl", "-qw", "net.ipv4.ip_unprivileged_port_start=0"])
    app = ProgramOutput(node.spawn(pod.netns, [sys.executable, "-m", "tests.support.programs.exposed", "app",
                                               "--name", name, "--tcp-ports", "8080", "--udp-ports", "443,5353"],
                                   uid=APP_UID))
    node.spawn(pod.netns, [sys.executable, "-m", "tests.support.programs.standins", "engine", "--name", name,
                           "--port", "13378", "--families", "4,6"], uid=ENGINE_UID)
    return pod, app


def udp_replies(node: Node, client: Pod, pod: Pod) -> dict[str, str]:
    plan = {"udp": [[0, pod.ip(), 443, ""], [1, pod.ip(), 5353, ""]], "linger": 1.0}
    return attack(node, client.netns, plan)["udp"]


@pytest.mark.parametrize(("entry", "annotations", "open_ports"), [
    ({}, {}, set()),
    ({}, {PREFIX + "allowInboundUDPPorts": "5353"}, {"1"}),
    ({}, {PREFIX + "nonTCPInbound": "allow"}, {"0", "1"}),
    ({"nonTCPInbound": "allow"}, {}, {"0", "1"}),
    ({"nonTCPInbound": "allow"}, {PREFIX + "nonTCPInbound": "drop"}, set()),
])
def test_udp_in_only_where_allowed_and_tcp_on_the_engine_regardless(node, entry, annotations, open_ports):
    """The annotation wins over the conflist's default; TCP goes to the Engine in every case."""
    pod, _ = exposed_pod(node, "web", annotations, **entry)
    client = client_pod(node)
    assert set(udp_replies(node, client, pod)) == open_ports
    assert node.connect(client.netns, [target(pod, 8080)]) == {target(pod, 8080): "engine=web orig=8080"}


def test_check_sees_a_missing_filter_rule_and_del_removes_them_all(node):
    pod, _ = exposed_pod(node, "web", {})
    conflist = node.conf_dir / "web.conflist"
    assert node.cni("check", pod, conflist, check=False).returncode == 0
    for tool in ("iptables-legacy", "ip6tables-legacy"):
        node.exec(pod.netns, [tool, "-t", "filter", "-A", "INPUT", "-p", "udp", "--dport", "9", "-j", "DROP"])
    node.exec(pod.netns, ["iptables-legacy", "-t", "filter", "-D", "MGW_INPUT", "-j", "DROP"])
    check = node.cni("check", pod, conflist, check=False)
    assert check.returncode != 0 and "-A MGW_INPUT -j DROP" in check.stdout + check.stderr, check
    node.cni("del", pod, conflist)
    for family in (4, 6):
        save = node.exec(pod.netns, [("iptables" if family == 4 else "ip6tables") + "-legacy-save"]).stdout
        assert "MGW_" not in save, save
        assert "-A INPUT -p udp -m udp --dport 9 -j DROP" in save, "DEL must keep foreign filter rules"


def test_failed_filter_commit_takes_the_nat_rules_back_out(node):
    """I6 across tables: the IPv4 filter table cannot be written (a foreign chain jumps into
    MGW_INPUT); the nat rules written before it must go again, and ADD fails."""
    node.add_pod_fixture(pod_fixture("web"))
    pod = node.new_pod("web", node.write_conflist(chained=False, name="primary.conflist"))
    for rule in (["-N", "MGW_INPUT"], ["-N", "FOREIGN"], ["-A", "FOREIGN", "-j", "MGW_INPUT"]):
        node.exec(pod.netns, ["iptables-legacy", "-t", "filter", *rule])
    add = exec_plugin(node, cni_env(pod), json.dumps(
        {**plugin_conf(node, "1.0.0"), "prevResult": pod.result}).encode())
    error = cni_error(add)
    assert "filter" in error["msg"], error
    assert node.mgw_rules(pod) == [] and node.mgw_rules(pod, 6) == []
    filter6 = node.exec(pod.netns, ["ip6tables-legacy-save", "-t", "filter"]).stdout
    assert "MGW_" not in filter6
