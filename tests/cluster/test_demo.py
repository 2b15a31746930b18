"""The demo's own checks, run by the test suite so the README's first command cannot rot."""

import os

import pytest

from tests.support.demo import Report, run_demo


def test_demo_passes() -> None:
    if os.geteuid() != 0:
        pytest.skip("the demo runs a cluster in network and mount namespaces and needs root")
    report = Report()
    assert run_demo(report), [c for c in report.checks if not c[1]]
    assert len(report.checks) >= 15
