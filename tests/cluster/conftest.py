"""The cluster tier: a real kube-apiserver (with etcd, kube-controller-manager and kube-scheduler) reads the
manifests, enforces RBAC and the ValidatingAdmissionPolicy, and issues the installer's tokens.

Tests act as a user would, through kubectl, and as the installer does, through its own API client. One control
plane per module; everything it starts is removed when the module ends, also after a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support import report
from tests.support.cluster.controlplane import ControlPlane

TIER = "cluster"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Start-up times and the API server's exact answers (tests/support/report.py) at the end of the run."""
    if report.TIERS.get(TIER):
        terminalreporter.section("cluster tier report")
        for line in report.TIERS[TIER]:
            terminalreporter.write_line(line)


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[ControlPlane]:
    if os.geteuid() != 0:
        pytest.skip("the cluster tier needs root (a network namespace for the control plane)")
    with ControlPlane() as plane:
        report.add(f"{request.module.__name__}: etcd ready {plane.timings['etcd']:.1f} s, kube-apiserver /readyz "
                   f"{plane.timings['kube-apiserver']:.1f} s after start (PKI and namespace included)", TIER)
        yield plane
