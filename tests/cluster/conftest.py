"""The cluster tier: a real kube-apiserver (with etcd, kube-controller-manager and kube-scheduler) reads the
manifests, enforces RBAC and the ValidatingAdmissionPolicy, and issues the installer's tokens.

Tests act as a user would, through kubectl, and as the installer does, through its own API client. One control
plane per module, with a worker node (tests/support/cluster/cluster.py's Cluster) for a module that says
`CLUSTER = Cluster`; everything it starts is removed when the module ends, also after a failure.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import report
from tests.support.cluster.cluster import Cluster
from tests.support.cluster.controlplane import ControlPlane

TIER = "cluster"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Start-up times and the API server's exact answers (tests/support/report.py) at the end of the run."""
    if report.TIERS.get(TIER):
        terminalreporter.section("cluster tier report")
        for line in report.TIERS[TIER]:
            terminalreporter.write_line(line)


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The module's cluster: a control plane alone, or with a worker node where the module sets `CLUSTER = Cluster`."""
    module = request.module.__name__.rsplit(".", 1)[-1]
    if getattr(request.module, "CLUSTER", ControlPlane) is Cluster:
        if os.geteuid() != 0:
            pytest.skip("the cluster tier needs root (network and mount namespaces, cgroups, containerd, kubelet)")
        began = time.monotonic()
        with Cluster() as running:
            report.add(f"cluster ({module}.py): control plane and worker node Ready {running.start_seconds:.1f} s "
                       "after start", TIER)
            yield running
        report.add(f"cluster, {module}.py: {time.monotonic() - began:.0f} s wall time, cluster start and removal "
                   "included", TIER)
        return
    if os.geteuid() != 0:
        pytest.skip("the cluster tier needs root (a network namespace for the control plane)")
    with ControlPlane() as plane:
        report.add(f"{request.module.__name__}: etcd ready {plane.timings['etcd']:.1f} s, kube-apiserver /readyz "
                   f"{plane.timings['kube-apiserver']:.1f} s after start (PKI and namespace included)", TIER)
        yield plane
