"""build_rulesets against the golden rule sets (tests/golden, tests/support/golden.py)."""

from __future__ import annotations

import pytest

from cni.config import PluginConfig
from cni.policy import plan_for
from cni.rules import build_rulesets
from tests.support import golden


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("case", sorted(golden.CASES))
def test_rules_match_the_golden_files(case: str, family: int) -> None:
    rulesets = build_rulesets(plan_for(golden.CASES[case]), PluginConfig(), [family])
    golden.check(case, family, "".join(ruleset.render() for ruleset in rulesets), update=True)


def test_every_golden_file_belongs_to_a_case() -> None:
    expected = {golden.path(case, family, suffix).name
                for case in golden.CASES for family in (4, 6) for suffix in golden.SUFFIXES}
    assert {p.name for p in golden.DIR.iterdir()} == expected
