"""The nftables backend against the kernel: each golden case through the plugin into a live pod,
listed by `nft` (the golden .nft files) and decoded by pyroute2, independently of our decoder."""

from __future__ import annotations

import sys

import pytest

from cni.config import PluginConfig
from cni.model import Rule, RuleSet, drift
from cni.netfilter.nftables.backend import NftablesBackend
from cni.netfilter.nftables.syntax import render_table
from cni.pod.runner import Worker
from cni.policy import plan_for
from cni.rules import build_nat
from tests.support import golden
from tests.support.node import Node, Pod, pod_fixture

DECODE = """
import json, sys
from pyroute2.netlink.nfnetlink.nftsocket import NFT_MSG_GETRULE, NFTSocket, nft_rule_msg

found = []
for nfproto in (2, 10):
    sock = NFTSocket(nfgen_family=nfproto)
    try:
        msg = nft_rule_msg()
        msg["nfgen_family"] = nfproto
        for rule in sock.request_get(msg, NFT_MSG_GETRULE):
            if rule.get_attr("NFTA_RULE_TABLE") != "microgateway":
                continue
            exprs = []
            for expr in rule.get_attr("NFTA_RULE_EXPRESSIONS"):
                data = expr.get_attr("NFTA_EXPR_DATA")
                detail = ""
                if expr.get_attr("NFTA_EXPR_NAME") == "immediate":
                    value = data.get_attr("NFTA_IMMEDIATE_DATA")
                    verdict = value.get_attr("NFTA_DATA_VERDICT")
                    if verdict is not None:
                        code, chain = verdict.get_attr("NFTA_VERDICT_CODE"), verdict.get_attr("NFTA_VERDICT_CHAIN")
                        detail = f"{code} {chain or ''}"
                    else:
                        detail = value.get_attr("NFTA_DATA_VALUE").hex()
                exprs.append([expr.get_attr("NFTA_EXPR_NAME"), detail.strip()])
            found.append([nfproto, rule.get_attr("NFTA_RULE_CHAIN"), exprs])
    finally:
        sock.close()
json.dump(found, sys.stdout)
"""


@pytest.fixture(scope="module")
def nft_node():
    with Node(families=(4, 6), backend="nftables") as node:
        yield node


@pytest.mark.parametrize("case", sorted(golden.CASES))
def test_live_tables_match_the_golden_files(nft_node, case):
    """What the plugin writes is what the golden file says, as the kernel lists it back through nft."""
    name = f"g-{case}"
    nft_node.add_pod_fixture(pod_fixture(name, annotations=golden.CASES[case]))
    pod = nft_node.new_pod(name, nft_node.write_conflist())
    for family in (4, 6):
        assert nft_node.nft_table(pod, family) == golden.path(case, family, ".nft").read_text(), (case, family)
    nft_node.cni("check", pod, nft_node.conf_dir / "10-mgw.conflist")


def test_pyroute2_reads_our_rules_as_we_meant_them(nft_node):
    """An independent decoder (pyroute2) sees our verdicts, jump targets and the redirect port."""
    import json

    nft_node.add_pod_fixture(pod_fixture("decoded", annotations=golden.CASES["istio-all"]))
    pod = nft_node.new_pod("decoded", nft_node.write_conflist())
    rules = json.loads(nft_node.exec(pod.netns, [sys.executable, "-c", DECODE]).stdout)
    for nfproto in (2, 10):
        chains = [(chain, exprs) for proto, chain, exprs in rules if proto == nfproto]
        assert [chain for chain, _ in chains[:2]] == ["nat-PREROUTING", "nat-OUTPUT"]
        assert chains[0][1][-1] == ["immediate", "NFT_JUMP MGW_PREROUTING"]
        inbound = [exprs for chain, exprs in chains if chain == "MGW_INBOUND"]
        assert inbound[-1][-2:] == [["immediate", (13378).to_bytes(2, "big").hex()], ["redir", ""]]
        assert all(exprs[-1] == ["immediate", "NFT_RETURN"] for exprs in inbound[:-1])
        output = [exprs for chain, exprs in chains if chain == "MGW_OUTPUT"]
        assert len(output) == 3 and all(exprs[-1] == ["immediate", "NFT_JUMP MGW_INBOUND"] for exprs in output)


def _round_trip(rulesets: list[RuleSet]) -> tuple[list[str], bool, bool]:
    """In the test netns (a worker's job): apply twice, read, compare; remove twice."""
    backend = NftablesBackend()
    backend.apply(rulesets)
    backend.apply(rulesets)
    tables = tuple(sorted({rs.table for rs in rulesets}))
    live = {(state.family, state.table): state for state in backend.read([4, 6], tables)}
    problems = [p for rs in rulesets for p in drift(rs, live[rs.family, rs.table])]
    return problems, backend.remove(), backend.remove()


def test_filter_rules_of_non_tcp_inbound_round_trip_through_the_kernel(nft_node):
    """Every field the non-TCP-inbound rules use (interface, conntrack state and DNAT status,
    protocols, ports, accept, return and drop) lands in a filter-INPUT base chain and reads back as
    written; nft lists it as the renderer says."""
    rulesets = [build_nat(plan_for({}), PluginConfig(), family) for family in (4, 6)]
    for family in (4, 6):
        icmp = "icmp" if family == 4 else "ipv6-icmp"
        rules = (Rule("MGW_INPUT", "RETURN", protocol=None, in_iface="lo"),
                 Rule("MGW_INPUT", "RETURN", protocol=None, ctstate="RELATED,ESTABLISHED"),
                 Rule("MGW_INPUT", "RETURN", ctstate="DNAT"),
                 Rule("MGW_INPUT", "RETURN", dport="19000:19002"),
                 Rule("MGW_INPUT", "DROP"),
                 Rule("MGW_INPUT", "ACCEPT", protocol=icmp),
                 Rule("MGW_INPUT", "ACCEPT", protocol="udp", dport="5353"),
                 Rule("MGW_INPUT", "DROP", protocol=None))
        rulesets.append(RuleSet(family=family, table="filter", chains=("MGW_INPUT",), rules=rules,
                                jumps=(Rule("INPUT", "MGW_INPUT", protocol=None),)))
    netns = f"mgwt-{nft_node.id}-filter"
    nft_node.add_netns(netns)
    with Worker(lambda: None) as worker:
        worker.run(f"/run/netns/{netns}", NftablesBackend().apply, rulesets)
    listed = Pod(name="filter", namespace="default", netns=netns, container_id="f1")
    for family in (4, 6):
        assert nft_node.nft_table(listed, family) == render_table([rs for rs in rulesets if rs.family == family])
    with Worker(lambda: None) as worker:
        problems, removed, removed_again = worker.run(f"/run/netns/{netns}", _round_trip, rulesets)
    assert problems == [] and removed is True and removed_again is False
