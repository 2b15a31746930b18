"""A live pod's rules, as iptables-legacy-save prints them, against the golden rule sets."""

from __future__ import annotations

from tests.support import golden
from tests.support.node import pod_fixture


def test_live_rules_match_the_golden_files(node):
    conflist = node.write_conflist()
    for index, case in enumerate(sorted(golden.CASES)):
        name = f"golden{index}"
        node.add_pod_fixture(pod_fixture(name, annotations=golden.CASES[case]))
        pod = node.new_pod(name, conflist)
        for family in (4, 6):
            golden.check(case, family, golden.ours(node.nat_rules(pod, family)))
