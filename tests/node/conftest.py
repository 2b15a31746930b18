"""The node tier: pods made by containerd's CRI plugin, driven in the kubelet's place by tests/support/cri.

containerd, runc, the CNI plugins and the images are real; the kube-apiserver is Node's stand-in.
Everything a fixture starts is removed when it ends, also after a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support import images, report
from tests.support.containerd import Containerd, release


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The node tier's report (pods, paths, storm, latency: tests/support/report.py) at the end of the run."""
    if report.LINES:
        terminalreporter.section("node tier report")
        for line in report.LINES:
            terminalreporter.write_line(line)


@pytest.fixture(scope="module")
def containerd() -> Iterator[Containerd]:
    """containerd 2 on a fresh Node with the plain bridge conflist (cniVersion 1.1.0: STATUS is called) and
    the pause image imported.

    Our plugin is not in the node's bin_dir: in this tier the installer is the one to put it there.
    """
    if os.geteuid() != 0:
        pytest.skip("the node tier needs root (network and mount namespaces, cgroups, containerd)")
    chosen = release()
    with chosen.node() as node:
        chosen.write_primary(node)
        with Containerd(node, keep_plugin=False) as runtime:
            runtime.import_image(images.pause_archive(), images.PAUSE)
            runtime.wait_network_ready()
            yield runtime
