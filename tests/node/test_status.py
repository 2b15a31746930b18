"""CNI STATUS on containerd 2: the node stays Ready for every condition that concerns protected pods only.

containerd 2.0.1 and newer run the STATUS of every plugin in the loaded conflist on each CRI Status
request when the conflist's cniVersion is 1.1.0 or newer; an error turns the runtime's NetworkReady false,
and the kubelet, which derives the node's Ready condition from it, marks the whole node NotReady
(docs/design.md, "STATUS"). The node's primary conflist here is such a one (1.1.0, the Go-built reference
plugins, which answer STATUS), and the installer chains our plugin into it, at debug level so that the
plugin's log shows each STATUS.

For each condition - the kubeconfig missing, a kubeconfig that does not parse (the plugin runs as root,
so a mode-000 file would still be read: unparsable is what "unreadable" can mean to it), the API down (the
stand-in stopped) - the test asks the runtime's status and creates an ordinary pod in `default`, one in
`kube-system` (excluded) and a protected pod. The installer is stopped first (SIGTERM without a deletion
keeps the plugin chained), as it would write the kubeconfig again at once. The converse shows the test can
fail: an invalid entry of ours fails STATUS with error 7 and NetworkReady goes false. Mocked: the
kube-apiserver (stand-in) and the kubelet's part (the harness's CRI calls).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import pytest

from tests.support import images, report, workloads
from tests.support.cri import CriError
from tests.support.kubelet import RunningPod
from tests.support.kubenode import KubeNode
from tests.support.node import wait_for
from tests.support.programs import conf_agent
from tests.support.runtime import cni_error, exec_plugin

PLUGIN = "microgateway-cni"


@pytest.fixture(scope="module")
def kube() -> Iterator[KubeNode]:
    with KubeNode() as node:
        yield node


@pytest.fixture(scope="module")
def installer(kube: KubeNode) -> RunningPod:
    return kube.install(settings={"MGW_LOG_LEVEL": "debug"})


def statuses(kube: KubeNode) -> list[dict[str, Any]]:
    """The STATUS lines of the plugin's own log (the logFilePath of its conflist entry, /var/log on the node)."""
    return [entry for entry in kube.plugin_log() if entry.get("command") == "STATUS"]


class Outcome(NamedTuple):
    """What happened to one pod: started, or refused with the runtime's error, our plugin's CNI error code
    (from its log) and how long RunPodSandbox took to fail."""

    started: bool
    error: str = ""
    code: int | None = None
    seconds: float = 0.0

    def __str__(self) -> str:
        if self.started:
            return "started"
        code = f", CNI error {self.code}" if self.code is not None else ""
        return f"refused after {self.seconds:.2f} s{code}: {self.error.splitlines()[0]}"


def attempt(kube: KubeNode, manifest: dict[str, Any]) -> Outcome:
    """Create the pod as the kubelet would, then delete it if it started."""
    started = time.monotonic()
    try:
        pod = kube.create(manifest)
    except CriError as error:
        seconds = time.monotonic() - started
        name = f"{manifest['metadata']['namespace']}/{manifest['metadata']['name']}"
        codes = [entry.get("code") for entry in kube.plugin_log()
                 if entry.get("pod") == name and entry.get("command") == "ADD" and entry["level"] == "error"]
        return Outcome(False, error.details, codes[-1] if codes else None, seconds)
    kube.delete(pod)
    return Outcome(True)


class Observation(NamedTuple):
    network_ready: bool
    message: str  # why NetworkReady is false, from the runtime
    status_calls: int  # STATUS lines our plugin logged meanwhile
    pods: dict[str, Outcome]


def observe(kube: KubeNode, tag: str) -> Observation:
    """The runtime's NetworkReady (three Status requests, as the kubelet asks every few seconds) and the
    three pods' fates under the current condition."""
    before = len(statuses(kube))
    conditions = [kube.runtime.conditions()["NetworkReady"] for _ in range(3)]
    wait_for(lambda: len(statuses(kube)) >= before + 3, timeout=5)
    pods = {"ordinary default": attempt(kube, workloads.ordinary(f"{tag}-ordinary")),
            "ordinary kube-system": attempt(kube, workloads.ordinary(f"{tag}-system", namespace="kube-system")),
            "protected default": attempt(kube, workloads.protected(f"{tag}-protected", images.project_image()))}
    ready = all(condition["status"] for condition in conditions)
    message = next((c["message"] for c in conditions if not c["status"]), "")
    return Observation(ready, message, len(statuses(kube)) - before, pods)


def add_to_report(condition: str, seen: Observation) -> None:
    report.add(f"STATUS, containerd 2, {condition}: NetworkReady={str(seen.network_ready).lower()}"
               + (f" ({seen.message})" if seen.message else "") + f"; our STATUS ran {seen.status_calls} times")
    for kind, outcome in seen.pods.items():
        report.add(f"  {kind}: {outcome}")


def test_containerd_2_runs_our_status_on_every_cri_status(kube: KubeNode, installer: RunningPod) -> None:
    document = json.loads(kube.primary.read_text())
    assert [p["type"] for p in document["plugins"]] == ["bridge", PLUGIN]
    assert document["cniVersion"] == "1.1.0", "the installer keeps the primary's cniVersion"
    before = len(statuses(kube))
    for _ in range(5):
        assert kube.runtime.status()["NetworkReady"]
    assert wait_for(lambda: len(statuses(kube)) >= before + 5, timeout=5), statuses(kube)[-3:]
    last = statuses(kube)[-1]
    assert last["msg"] == "STATUS: ready" and last["level"] == "debug"
    report.add(f"STATUS, containerd 2: 5 CRI Status requests, {len(statuses(kube)) - before} STATUS lines in the "
               f"plugin's log, the last: {json.dumps(last)}")


def test_a_node_that_works_starts_every_pod(kube: KubeNode, installer: RunningPod) -> None:
    """The baseline of the conditions below: all three pods start (the protected one's validator passes)."""
    seen = observe(kube, "healthy")
    add_to_report("kubeconfig and API as the installer left them", seen)
    assert seen.network_ready and seen.status_calls >= 3
    assert all(outcome.started for outcome in seen.pods.values()), seen.pods


class Condition(NamedTuple):
    tag: str  # in the pods' names
    make: Callable[[KubeNode], None]
    error: str  # in what ADD says for the pods it must look up
    code: int  # its CNI error code: 7 invalid configuration, 11 try again later


# In this order: the stand-in, once stopped, stays down.
CONDITIONS = {
    "kubeconfig missing": Condition("no-kubeconfig", lambda kube: kube.node.kubeconfig.unlink(),
                                    "cannot read kubeconfig", 7),
    "kubeconfig that does not parse": Condition("bad-kubeconfig",
                                                lambda kube: kube.node.kubeconfig.write_text("clusters: [\n"),
                                                "is neither JSON nor YAML", 7),
    "API down (stand-in stopped)": Condition("api-down", lambda kube: kube.node.stop_api(),
                                             "kube-apiserver unreachable", 11),
}


@pytest.fixture(scope="module")
def installer_stopped(kube: KubeNode, installer: RunningPod) -> bytes:
    """The installer stopped, as it would write the kubeconfig again at once: the kubeconfig it wrote."""
    assert kube.stop_installer(installer) == 0
    assert kube.chain() == ["bridge", PLUGIN], "SIGTERM without a deletion keeps the plugin chained"
    return kube.node.kubeconfig.read_bytes()


@pytest.mark.parametrize("name", list(CONDITIONS))
def test_a_condition_of_the_pods_we_look_up_keeps_the_node_ready(kube: KubeNode, installer_stopped: bytes,
                                                                 name: str) -> None:
    """NetworkReady stays true and a pod in an excluded namespace starts; a protected pod is refused by ADD,
    and so is an ordinary pod in `default`: whether it is protected is in the API."""
    condition = CONDITIONS[name]
    condition.make(kube)
    try:
        seen = observe(kube, condition.tag)
    finally:
        kube.node.kubeconfig.write_bytes(installer_stopped)
    add_to_report(name, seen)
    assert seen.network_ready, seen.message
    assert seen.status_calls >= 3
    assert seen.pods["ordinary kube-system"].started, seen.pods
    for kind in ("protected default", "ordinary default"):
        outcome = seen.pods[kind]
        assert not outcome.started and f'plugin type="{PLUGIN}" failed (add)' in outcome.error, (kind, outcome)
        assert condition.error in outcome.error and outcome.code == condition.code, (kind, outcome)


def test_an_invalid_entry_of_ours_turns_network_ready_false(kube: KubeNode, installer_stopped: bytes) -> None:
    """The converse: STATUS fails with error 7 for a value ADD refuses too, and containerd reports the network
    not ready (the design accepts it: every ADD of the node fails). containerd's message carries our error's
    text but not its code (nor does our log: the entry names the log file), so the same STATUS also runs
    directly. Valid again, ready again."""
    chained = json.loads(kube.primary.read_text())
    entry = {**chained["plugins"][-1], "logLevel": "loud"}
    invalid = {**chained, "plugins": [*chained["plugins"][:-1], entry]}
    conf_agent.write_atomic(kube.primary, invalid)
    assert kube.containerd is not None
    try:
        kube.containerd.wait_loaded(invalid)
        network = kube.runtime.conditions()["NetworkReady"]
        system = attempt(kube, workloads.ordinary("invalid-entry-system", namespace="kube-system"))
    finally:
        conf_agent.write_atomic(kube.primary, chained)
    stdin = {"cniVersion": invalid["cniVersion"], "name": invalid["name"], **entry}
    error = cni_error(exec_plugin(kube.node, {"CNI_COMMAND": "STATUS"}, json.dumps(stdin).encode()))
    report.add(f"STATUS, containerd 2, our entry invalid (logLevel loud): NetworkReady="
               f"{str(network['status']).lower()} ({network['message']}); STATUS run directly: CNI error "
               f"{error['code']}; ordinary kube-system: {system}")
    assert not network["status"] and network["message"] == f"Network plugin returns error: {error['msg']}"
    assert error["code"] == 7 and "logLevel" in error["msg"], error
    assert not system.started and error["msg"] in system.error, system
    kube.containerd.wait_loaded(chained)
    assert kube.runtime.status()["NetworkReady"], "valid again, ready again"
