"""The demo's own checks, run by the test suite so the README's first command cannot rot."""


from tests.support.demo import Report, run_demo


def test_demo_passes():
    report = Report()
    assert run_demo(report), [c for c in report.checks if not c[1]]
    assert len(report.checks) >= 15
