"""CNI STATUS on the real one-node cluster: the kubelet's node stays Ready for every condition that concerns
the pods we look up, and goes NotReady only when our conflist entry is invalid.

containerd 2.0.1 and newer run the STATUS of every plugin in the loaded conflist on each CRI Status request
when the conflist's cniVersion is 1.1.0 or newer; an error turns the runtime's NetworkReady false and the
kubelet marks the node NotReady (docs/design.md, "STATUS"). The cluster's primary conflist is such a one
(flannel's shape, 1.1.0, the Go-built reference plugins) and the installer, applied from the default overlay
with its ConfigMap's MGW_LOG_LEVEL set to debug, chains our plugin into it at debug level, so the plugin's
log shows each STATUS the kubelet's runtime checks cause.

For each condition - none, the kubeconfig missing, a kubeconfig that does not parse, the API unreachable for
the plugin, our entry invalid (`logLevel: loud`) - the test reads the node's Ready condition with kubectl
(and watches it for the whole time the condition lasts) and creates four pods: an ordinary pod in
`kube-system` (excluded), an ordinary pod in `default`, a pod protected by the inject annotation (which the
runtime hands the plugin) and one protected by the inject label only (which only the API tells). The
installer is stopped first (its pod leaves the node; SIGTERM without a deletion keeps the plugin chained),
as it would write the kubeconfig again at once; each condition is undone before the next, the installer
comes back at the end.

Expected (docs/design.md, "STATUS" and "When the API cannot tell"): STATUS succeeds whenever our entry is
valid; when the API cannot tell a pod's labels, ADD passes a pod the runtime's annotations do not mark
protected through as ordinary, with a warning in the plugin's log, so the ordinary pod in `default` starts,
the annotated pod is configured from the runtime's annotations and its validator passes, and the label-only
pod is refused by its validator (exit 3) and never runs its app.

"API unreachable": the real kube-apiserver cannot be stopped without taking kubectl, the kubelet's pod
source and the controllers with it. The plugin reaches the API through the kubeconfig the installer wrote,
whose server is the `kubernetes` Service's ClusterIP, which kube-proxy DNATs to the API server; the test
leaves that kubeconfig alone and makes the node's own network namespace refuse (TCP reset) connections to
the ClusterIP before kube-proxy's DNAT (Cluster.service_refused). That is what the plugin sees when the API
server behind an intact Service is gone. Not shown: an API server that is down for everyone (the kubelet,
kube-proxy and kubectl reach it at its own address and keep it), a black hole (each attempt would wait its
5 s connect timeout; the deadline bounds both), and a slow or refusing (401/403) API server. The entry's
apiDeadlineSeconds stays the manifests' 30 s: two pods wait it out, in parallel.
"""

from __future__ import annotations

import itertools
import json
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml

from tests.support import report, workloads
from tests.support.cluster.cluster import OVERLAY, Cluster
from tests.support.cluster.controlplane import NODE_NAME
from tests.support.cluster.observe import (
    Fate,
    KubeconfigAltered,
    add_lines,
    configured_from,
    pass_through_warnings,
    plugin_statuses,
    pod_fates,
)
from tests.support.cluster.worker import image
from tests.support.node import wait_for
from tests.support.programs import conf_agent

PLUGIN = "microgateway-cni"
CHAINED = ["bridge", "portmap", PLUGIN]
CLUSTER = Cluster  # a worker node too (tests/cluster/conftest.py)
TIER = "cluster"
COLUMNS = ("ordinary kube-system", "ordinary default", "protected (annotation)", "protected (label)")
# How long the pods of one condition get to show their fate: the API condition's ADDs wait out the entry's
# apiDeadlineSeconds (30 s) before they pass the pod through, and the cores are shared.
DECIDE_SECONDS = 90.0
# A condition must last this long before the node's Ready condition counts as kept: the kubelet asks the
# runtime every 5 s and posts a change of its node's status within its 10 s nodeStatusUpdateFrequency.
KEEP_SECONDS = 20.0
ROWS: dict[str, list[str]] = {}  # condition -> the table's cells, in the order the tests ran


@pytest.fixture(scope="module", autouse=True)
def table() -> Iterator[None]:
    """The STATUS table, in the order the conditions ran, at the end of the module."""
    yield
    if ROWS:
        note("STATUS on containerd 2.4.2, the node's Ready condition read with `kubectl get node`:")
        note("| condition | node Ready (kubectl) | " + " | ".join(COLUMNS) + " |")
        note("|---" * (len(COLUMNS) + 2) + "|")
        for condition, cells in ROWS.items():
            note(f"| {condition} | " + " | ".join(cells) + " |")


def note(line: str) -> None:
    report.add(line, TIER)


def debug_overlay(cluster: Cluster) -> str:
    """The default overlay as `kubectl kustomize` renders it, with the ConfigMap's MGW_LOG_LEVEL at debug:
    the installer writes the plugin's logLevel from it, and the plugin logs STATUS at debug level only."""
    documents = list(yaml.safe_load_all(cluster.kubectl("kustomize", OVERLAY)))
    configmaps = [doc for doc in documents if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == PLUGIN]
    assert len(configmaps) == 1, [doc["kind"] for doc in documents]
    configmaps[0]["data"]["MGW_LOG_LEVEL"] = "debug"
    return yaml.safe_dump_all(documents)


@pytest.fixture(scope="module")
def installed(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "-f", "-", input=debug_overlay(cluster))
    cluster.installer_ready()
    assert cluster.worker.taints() == [], "the installer lifted the start-up taint"


def entry(cluster: Cluster) -> dict[str, Any]:
    """Our entry in the primary's conflist."""
    document = json.loads(cluster.worker.primary.read_text())
    return dict(document["plugins"][-1])


def test_containerd_runs_our_status_on_the_kubelets_runtime_checks(cluster: Cluster, installed: None) -> None:
    """Nothing asks the runtime's status here but the kubelet (every 5 s): each ask runs our STATUS."""
    assert json.loads(cluster.worker.primary_text)["cniVersion"] == "1.1.0", "the primary's agent writes 1.1.0"
    document = json.loads(cluster.worker.primary.read_text())
    assert document["cniVersion"] == "1.1.0", "the installer keeps the primary's cniVersion"
    assert cluster.primary_entries() == CHAINED
    assert entry(cluster)["logLevel"] == "debug"
    before = len(plugin_statuses(cluster))
    began = time.monotonic()
    assert wait_for(lambda: len(plugin_statuses(cluster)) >= before + 4, timeout=60), plugin_statuses(cluster)[-3:]
    seen = plugin_statuses(cluster)[before:]
    last = seen[-1]
    assert last["msg"] == "STATUS: ready" and last["level"] == "debug", last
    assert last["pod"] == "/" and last["containerID"] == "", "STATUS concerns the node, no pod"
    stamps = [datetime.fromisoformat(line["ts"]) for line in seen]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(stamps)]
    note(f"STATUS: {len(seen)} lines in the plugin's log within {time.monotonic() - began:.0f} s, "
         f"{statistics.median(gaps):.1f} s apart (median; the kubelet asks the runtime every 5 s); the last: "
         f"{json.dumps(last)}")


@pytest.fixture(scope="module")
def installer_stopped(cluster: Cluster, installed: None) -> Iterator[dict[str, bool]]:
    """The installer's pod off the node while the conditions are made (it would write the kubeconfig again at
    once); back afterwards (the last test brings it back itself), also after a failure."""
    cluster.stop_installer()
    state = {"stopped": True}
    try:
        assert cluster.primary_entries() == CHAINED, "SIGTERM without a deletion keeps the plugin chained"
        yield state
    finally:
        if state["stopped"]:
            cluster.resume_installer()


def four_pods(tag: str) -> dict[str, dict[str, Any]]:
    return {"ordinary kube-system": workloads.ordinary(f"{tag}-system", namespace="kube-system"),
            "ordinary default": workloads.ordinary(f"{tag}-plain"),
            "protected (annotation)": workloads.annotated(f"{tag}-annotated", image()),
            "protected (label)": workloads.protected(f"{tag}-labelled", image())}


class Seen(NamedTuple):
    ready: tuple[str, str]  # kubectl get node: Ready's status and message, at the end of the condition
    watched: list[str]  # every Ready the watch saw meanwhile
    status_calls: int | None  # STATUS lines the plugin logged meanwhile (None: it cannot log)
    fates: dict[str, Fate]


def observe(cluster: Cluster, tag: str) -> Seen:
    """Under the condition made: the four pods' fates, the node's Ready condition watched all along and read
    at the end, which comes KEEP_SECONDS after the start at the earliest."""
    before = len(plugin_statuses(cluster))
    began = time.monotonic()
    with cluster.node_ready_seen() as watched:
        fates = pod_fates(cluster, tag, four_pods(tag), DECIDE_SECONDS)
        time.sleep(max(0.0, KEEP_SECONDS - (time.monotonic() - began)))
        ready = cluster.node_ready()
    return Seen(ready, watched, len(plugin_statuses(cluster)) - before, fates)


def cell(cluster: Cluster, fate: Fate) -> str:
    """The table's cell: the fate, how the plugin's ADD set the pod up, the seconds it took."""
    how = ""
    if pass_through_warnings(cluster, fate.pod):
        how = "; ADD passed it through with a warning"
    elif sources := configured_from(cluster, fate.pod):
        how = f"; configured from the {sources[-1]}"
    return f"{fate.text}{how} ({fate.seconds:.0f} s)"


def record(cluster: Cluster, condition: str, seen: Seen) -> None:
    status, message = seen.ready
    ROWS[condition] = [f"{status}" + (f": {message}" if status != "True" else ""),
                       *(cell(cluster, seen.fates[column]) for column in COLUMNS)]
    calls = ("our STATUS cannot log (the invalid entry names the log file)" if seen.status_calls is None
             else f"our STATUS ran {seen.status_calls} times meanwhile")
    note(f"STATUS, {condition}: node Ready {status} ({message}); the watch saw {sorted(set(seen.watched))}; "
         f"{calls}")


def kubeconfig(cluster: Cluster) -> Path:
    """The kubeconfig the plugin reads (its entry's path, /etc/cni/net.d on the node)."""
    return cluster.worker.node.conf_dir / Path(entry(cluster)["kubernetes"]["kubeconfig"]).name


def test_baseline_every_pod_starts(cluster: Cluster, installer_stopped: dict[str, bool]) -> None:
    """No condition (the installer stopped as for the others): the node Ready, all four pods start, the
    annotated pod configured from the runtime's annotations, the labelled one from the API."""
    seen = observe(cluster, "none")
    record(cluster, "none", seen)
    assert seen.ready[0] == "True" and {line.split()[0] for line in seen.watched} == {"True"}, seen
    assert seen.status_calls is not None and seen.status_calls >= 3
    assert all(fate.kind == "starts" for fate in seen.fates.values()), seen.fates
    assert seen.fates["protected (annotation)"].text == "starts, validator exit 0"
    assert seen.fates["protected (label)"].text == "starts, validator exit 0"
    assert configured_from(cluster, "default/none-annotated") == ["runtime"]
    assert configured_from(cluster, "default/none-labelled") == ["api"]


class Condition(NamedTuple):
    tag: str  # in the pods' names
    make: Callable[[Cluster], AbstractContextManager[Any]]  # the condition while the block runs
    reason: str  # in the reason of ADD's pass-through warning: the API could not tell, and why


def _api_unreachable(cluster: Cluster) -> AbstractContextManager[None]:
    server = json.loads(kubeconfig(cluster).read_text())["clusters"][0]["cluster"]["server"]
    service = cluster.kubectl("get", "service", "kubernetes", "-o", "jsonpath={.spec.clusterIP}")
    assert server == f"https://{service}:443", "the plugin reaches the API through the kubernetes Service"
    return cluster.service_refused(service, 443)


# In the table's order; the invalid entry comes last, in its own test.
CONDITIONS = {
    "kubeconfig missing": Condition("no-kubeconfig", lambda cluster: KubeconfigAltered(kubeconfig(cluster), None),
                                    "cannot read kubeconfig"),
    "kubeconfig does not parse": Condition(
        "bad-kubeconfig", lambda cluster: KubeconfigAltered(kubeconfig(cluster), "clusters: [\n"),
        "is neither JSON nor YAML"),
    "API unreachable (Service refused)": Condition("api-refused", _api_unreachable, "kube-apiserver unreachable"),
}


@pytest.mark.parametrize("name", list(CONDITIONS))
def test_the_api_cannot_tell_the_labels_the_node_stays_ready(cluster: Cluster, installer_stopped: dict[str, bool],
                                                             name: str) -> None:
    """The node stays Ready all along; the ordinary pods and the annotated pod start, the labelled pod is
    passed through by ADD and refused by its validator."""
    condition = CONDITIONS[name]
    with condition.make(cluster):
        seen = observe(cluster, condition.tag)
    record(cluster, name, seen)
    assert seen.ready == ("True", "kubelet is posting ready status"), seen.ready
    assert {line.split()[0] for line in seen.watched} == {"True"}, seen.watched
    assert seen.status_calls is not None and seen.status_calls >= 3
    fates = seen.fates
    assert fates["ordinary kube-system"].kind == "starts", fates
    annotated = f"default/{condition.tag}-annotated"
    assert fates["protected (annotation)"].text == "starts, validator exit 0", fates
    assert configured_from(cluster, annotated) == ["runtime"], add_lines(cluster, annotated)
    # Pods the runtime's annotations do not mark protected pass through, with a warning naming the condition.
    labelled = f"default/{condition.tag}-labelled"
    assert fates["protected (label)"].text == "refused by its validator (exit 3), app never ran", fates
    plain = f"default/{condition.tag}-plain"
    assert fates["ordinary default"].kind == "starts", fates
    for pod in (labelled, plain):
        reasons = pass_through_warnings(cluster, pod)
        assert reasons and all(condition.reason in reason for reason in reasons), add_lines(cluster, pod)


def test_an_invalid_entry_of_ours_makes_the_node_not_ready(cluster: Cluster,
                                                           installer_stopped: dict[str, bool]) -> None:
    """The converse: STATUS fails for a value every ADD refuses too, containerd reports NetworkReady=false
    with our error's text, the kubelet marks the node NotReady and the node lifecycle controller taints it:
    no pod is scheduled, not even into kube-system. Valid again, Ready again."""
    chained = json.loads(cluster.worker.primary.read_text())
    invalid = {**chained, "plugins": [*chained["plugins"][:-1], {**chained["plugins"][-1], "logLevel": "loud"}]}
    conf_agent.write_atomic(cluster.worker.primary, invalid)
    try:
        began = time.monotonic()
        cluster.wait("--for=condition=Ready=false", f"node/{NODE_NAME}", timeout=90)
        not_ready = time.monotonic() - began
        assert wait_for(lambda: "node.kubernetes.io/not-ready" in cluster.worker.taints(), timeout=60)
        with cluster.node_ready_seen() as watched:
            fates = pod_fates(cluster, "invalid-entry", four_pods("invalid-entry"), seconds=KEEP_SECONDS)
            ready = cluster.node_ready()
    finally:
        conf_agent.write_atomic(cluster.worker.primary, chained)
    seen = Seen(ready, watched, None, fates)
    record(cluster, "our entry invalid (`logLevel: loud`)", seen)
    note(f"STATUS, our entry invalid: node NotReady {not_ready:.0f} s after the conflist was written")
    status, message = ready
    assert status == "False" and "NetworkReady=false" in message, ready
    assert "Network plugin returns error" in message and "logLevel" in message, message
    assert {line.split()[0] for line in watched} == {"False"}, watched
    assert all(fate.kind == "not started" for fate in fates.values()), fates
    cluster.wait("--for=condition=Ready", f"node/{NODE_NAME}", timeout=90)
    assert wait_for(lambda: cluster.worker.taints() == [], timeout=60), cluster.worker.taints()


def test_the_installer_back_finds_the_node_as_it_was(cluster: Cluster,
                                                     installer_stopped: dict[str, bool]) -> None:
    """The installer back after the last condition is undone: the node Ready, our entry chained, the
    kubeconfig the plugin reads the installer's, and a labelled pod protected again (its validator passes)."""
    installer_stopped["stopped"] = False
    cluster.resume_installer()
    assert cluster.node_ready() == ("True", "kubelet is posting ready status")
    assert cluster.primary_entries() == CHAINED and entry(cluster)["logLevel"] == "debug"
    fates = pod_fates(cluster, "back", {"protected (label)": workloads.protected("back-labelled", image())},
                      DECIDE_SECONDS)
    assert fates["protected (label)"].text == "starts, validator exit 0", fates
    assert configured_from(cluster, "default/back-labelled") == ["api"]
