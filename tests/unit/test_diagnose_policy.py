import pytest

from validator.diagnose import invariants

GOOD = {"chains": ["MGW_INBOUND", "MGW_OUTPUT", "MGW_PREROUTING"], "rules": [], "prerouting_jump": True,
        "output_jump": True, "redirects_to_engine": True, "unrestricted_output": [], "istio_mode": False,
        "guard": {"rules": [], "non_tcp": "drop"}}
REDIRECTED = {"syn_dport": 13378, "verdict": "redirected to :13378"}
RESET = {"syn_dport": 19003, "verdict": "not redirected: reset"}


@pytest.mark.parametrize(("chains", "traces", "broken"), [
    ({4: GOOD}, {4: REDIRECTED}, set()),
    ({4: GOOD, 6: GOOD}, {4: REDIRECTED, 6: RESET}, {"I4"}),
    ({4: {**GOOD, "chains": []}}, {4: RESET}, {"I1", "I4"}),
    ({4: {**GOOD, "prerouting_jump": False}}, {4: REDIRECTED}, {"I1"}),
    ({4: {**GOOD, "redirects_to_engine": False}}, {4: RESET}, {"I1", "I4"}),
    ({4: {**GOOD, "unrestricted_output": ["-A MGW_OUTPUT -p tcp -j MGW_INBOUND"]}}, {4: REDIRECTED}, {"I3"}),
    ({4: {**GOOD, "istio_mode": True, "output_jump": False}}, {4: REDIRECTED}, {"I2"}),
    ({4: GOOD, 6: {**GOOD, "guard": {"rules": [], "non_tcp": "missing"}}}, {4: REDIRECTED, 6: REDIRECTED}, {"I7"}),
    ({4: {**GOOD, "guard": {"rules": [], "non_tcp": "allow"}}}, {4: REDIRECTED}, set()),
])
def test_invariants(chains, traces, broken):
    findings = invariants(chains, traces, 13378)
    assert {name for name, finding in findings.items() if not finding.startswith("ok")} == broken
    assert set(findings) == {"I1", "I2", "I3", "I4", "I7"}
