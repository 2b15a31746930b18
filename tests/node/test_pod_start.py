"""What our plugin adds to an ordinary pod's start on containerd 2.

From RunPodSandbox to the pod's container running (StartContainer returned, as the kubelet sees it),
ROUNDS times with our plugin chained and ROUNDS times with the primary's conflist alone, alternately, so
that a slow spell of the machine hits both alike. The pods are ordinary pods in `default`, what most pods
of a node are: the plugin's whole unprotected path, its API lookup of the pod's labels included (the API
stand-in's). Their container is the pause image's (busybox). The installer (a process in the node's network
namespace, tests/support/crinode.py) is stopped once it has chained (SIGTERM without a deletion keeps the
chain), so only the test switches the conflist, and each pod starts once containerd's verbose status shows
the switch loaded. The pods are made through CRI directly; tests/cluster/test_workloads.py has the real
kubelet's figures (creation to Ready).
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

from tests.support import images, report, workloads
from tests.support.crinode import CriNode
from tests.support.programs import conf_agent

ROUNDS = 10
PAUSED = {"name": "app", "image": images.PAUSE, "command": ["/bin/sh", "-c", "exec sleep 3600"]}


def load(kube: CriNode, document: dict[str, Any]) -> None:
    """The primary's conflist replaced atomically, as its agent would, and loaded by containerd."""
    assert kube.containerd is not None
    conf_agent.write_atomic(kube.primary, document)
    kube.containerd.wait_loaded(document)


def start_seconds(kube: CriNode, name: str) -> float:
    """One ordinary pod, already in the API, from RunPodSandbox to its container running; then deleted."""
    started = time.monotonic()
    pod = kube.create(workloads.pod(name, [PAUSED]))
    seconds = time.monotonic() - started
    assert kube.runtime.container_status(pod.container_ids["app"])["state"] == "CONTAINER_RUNNING"
    kube.delete(pod)
    return seconds


def test_pod_start_with_and_without_our_plugin() -> None:
    with CriNode() as kube:
        kube.install()
        assert kube.stop_installer() == 0
        documents = {"with": json.loads(kube.primary.read_text()), "without": json.loads(kube.primary_text)}
        assert [p["type"] for p in documents["with"]["plugins"]] == ["bridge", "microgateway-cni"]
        seconds: dict[str, list[float]] = {label: [] for label in documents}
        for i in range(ROUNDS):
            for label, document in documents.items():
                load(kube, document)
                seconds[label].append(start_seconds(kube, f"start-{label}-{i}"))
    medians = {label: statistics.median(values) for label, values in seconds.items()}
    spread = {label: f"{min(values) * 1000:.0f}-{max(values) * 1000:.0f}" for label, values in seconds.items()}
    report.add(f"pod start on containerd 2 (RunPodSandbox to a running container; ordinary pod in default; median "
               f"of {ROUNDS}, alternating): {medians['with'] * 1000:.0f} ms with our plugin ({spread['with']}), "
               f"{medians['without'] * 1000:.0f} ms without ({spread['without']}): "
               f"+{(medians['with'] - medians['without']) * 1000:.0f} ms")
    assert medians["with"] - medians["without"] < 1.0, medians
