"""The DaemonSet as the manifests say, and pods as an operator's cluster makes them, on containerd.

containerd's CRI plugin runs the installer from the project's image (built from the Dockerfile) with the
container spec of the rendered default overlay, loads the conflist the installer writes, and calls our
plugin for every pod. Mocked, because they cannot run here: the kube-apiserver (the node's stand-in) and
the kubelet's part (tests/support/kubelet.py translates the manifests and pod specs into CRI calls).
Requests between pods are real TCP through the node's bridge; each reply names the hops it took.

The tests share one node and run in order: install, pods, teardown, upgrade, uninstall.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import images, report, workloads
from tests.support.demo import path_of
from tests.support.kubelet import PodFailed, RunningPod
from tests.support.kubenode import KubeNode
from tests.support.node import wait_for

NEWER = "0.1.1"
RUN: dict[str, Any] = {}  # what one test leaves to a later one on the shared node (tests run in order)


@pytest.fixture(scope="module")
def kube() -> Iterator[KubeNode]:
    with KubeNode() as node:
        archive = images.project_archive()
        report.add(f"image {images.project_image()}: archive {archive.stat().st_size / 2**20:.1f} MiB")
        yield node


@pytest.fixture(scope="module")
def installer(kube: KubeNode) -> Iterator[RunningPod]:
    assert kube.taints() == ["microgateway-cni.airlock.com/not-ready"], "the node registers with the taint"
    started = time.monotonic()
    pod = kube.start_installer()
    assert wait_for(lambda: kube.taints() == [], timeout=30), kube.runtime.container_logs(
        pod.container_ids["installer"])
    report.add(f"installer container ({images.project_image()}): plugin chained and taint lifted "
                  f"{time.monotonic() - started:.2f} s after its RunPodSandbox")
    yield pod


@pytest.fixture(scope="module")
def client(kube: KubeNode, installer: RunningPod) -> RunningPod:
    pod = kube.create(workloads.client("client"))
    return pod


def test_installer_chains_the_plugin_lifts_the_taint_and_passes_its_probes(kube, installer):
    assert kube.chain() == ["bridge", "microgateway-cni"]
    assert (kube.node.bin_dir / "microgateway-cni").exists(), "the installer copied the plugin bundle"
    assert wait_for(lambda: kube.probes_pass(installer), timeout=10), "liveness (httpGet) and readiness (exec)"
    logs = kube.runtime.container_logs(installer.container_ids["installer"])
    messages = [json.loads(line).get("message") for line in logs.splitlines() if line.startswith("{")]
    assert messages.index("plugin chained") < messages.index(
        "start-up taint removed: pods may be scheduled to this node")


def test_installer_runs_with_exactly_the_manifests_privileges(kube, installer):
    info = kube.runtime.container_status(installer.container_ids["installer"], verbose=True)["info"]["info"]
    process = info["runtimeSpec"]["process"]
    assert process["user"]["uid"] == 0
    assert sorted(process["capabilities"]["bounding"]) == ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER"]
    assert sorted(process["capabilities"]["effective"]) == ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER"]
    assert process["noNewPrivileges"] is True
    assert info["runtimeSpec"]["root"]["readonly"] is True
    code, _, err = kube.runtime.exec_sync(installer.container_ids["installer"],
                                          ["/usr/local/bin/microgateway-cni-installer", "probe", "--port", "19100"])
    assert code == 0, err


def test_protected_pod_validator_passes_and_traffic_goes_through_the_engine(kube, client):
    shop = kube.create(workloads.protected("shop", images.project_image()))
    assert shop.init_results[workloads.VALIDATOR_CONTAINER][0] == 0
    kube.wait_started(shop)
    replies = kube.request(client, [f"{shop.ip}:8080", f"{shop.ip}:8081", f"{shop.ip}:5555"])
    paths = {target.rsplit(":", 1)[1]: path_of(reply) for target, reply in replies.items()}
    report.add(f"protected pod shop {shop.ip}: validator exit 0; " + "; ".join(f":{p} {h}" for p, h in paths.items()))
    assert paths == {"8080": "client -> engine -> app", "8081": "client -> app", "5555": "client -> engine"}


def test_pod_protected_by_the_runtimes_annotations_alone(kube, client):
    pod = kube.create(workloads.annotated("annotated", images.project_image()), in_api=False)
    assert pod.init_results[workloads.VALIDATOR_CONTAINER][0] == 0
    kube.wait_started(pod)
    reply = kube.request(client, [f"{pod.ip}:8080"])[f"{pod.ip}:8080"]
    assert path_of(reply) == "client -> engine -> app"
    report.add(f"annotated pod (not in the API) {pod.ip}: validator exit 0; :8080 {path_of(reply)}")
    configured = [e for e in kube.plugin_log() if e.get("pod") == "default/annotated"
                  and e["msg"] == "redirection configured"]
    assert [e["source"] for e in configured] == ["runtime"], "decided from the annotations containerd passed"


def test_istio_pod_engine_behind_the_proxy(kube, client):
    mesh = kube.create(workloads.istio("mesh", images.project_image()))
    assert [code for code, _ in mesh.init_results.values()] == [0, 0]
    kube.wait_started(mesh)
    reply = kube.request(client, [f"{mesh.ip}:8080"])[f"{mesh.ip}:8080"]
    assert path_of(reply) == "client -> istio -> engine -> app"
    report.add(f"Istio-mode pod mesh {mesh.ip}: istio-init and validator exit 0; :8080 {path_of(reply)}")


def test_ordinary_pod_is_untouched(kube, client):
    plain = kube.create(workloads.ordinary("plain"))
    kube.wait_started(plain)
    assert kube.our_rules(plain) == []
    reply = kube.request(client, [f"{plain.ip}:8080"])[f"{plain.ip}:8080"]
    assert path_of(reply) == "client -> app"
    report.add(f"ordinary pod plain {plain.ip}: no rule of ours; :8080 {path_of(reply)}")


def test_stop_and_remove_tear_down_through_the_plugin_and_leave_nothing_of_ours(kube, client):
    pod = kube.create(workloads.protected("short-lived", images.project_image()))
    sandbox = pod.sandbox_id
    kube.delete(pod)
    entries = [e for e in kube.plugin_log() if e.get("pod") == "default/short-lived"]
    assert [e["msg"] for e in entries if e["command"] == "DEL"] == ["redirection removed"]
    assert [e for e in entries if e["level"] == "error"] == []
    assert kube.runtime.list_pod_sandbox(id=sandbox) == []
    report.add("StopPodSandbox + RemovePodSandbox: DEL removed our rules, no plugin error, sandbox gone")


def test_upgrade_pods_started_between_installers_are_protected(kube, installer, client):
    """The rollout of a newer image: SIGTERM while the DaemonSet exists keeps the plugin chained, so a pod
    started before the new installer is ready is still protected (or, were the plugin gone, refused by its
    validator: never unprotected)."""
    kube.import_image(NEWER)
    assert kube.stop_installer(installer) == 0
    assert kube.chain() == ["bridge", "microgateway-cni"], "SIGTERM without a deletion keeps the plugin"
    between = [kube.create(workloads.protected(f"between-{i}", images.project_image())) for i in range(3)]
    assert [p.init_results[workloads.VALIDATOR_CONTAINER][0] for p in between] == [0, 0, 0]
    newer = kube.start_installer(NEWER)
    assert wait_for(lambda: kube.probes_pass(newer), timeout=30)
    after = kube.create(workloads.protected("after-upgrade", images.project_image(NEWER)))
    assert after.init_results[workloads.VALIDATOR_CONTAINER][0] == 0
    kube.wait_started(after)
    reply = kube.request(client, [f"{after.ip}:8080"])[f"{after.ip}:8080"]
    assert path_of(reply) == "client -> engine -> app"
    report.add(f"upgrade to {NEWER}: installer SIGTERM kept the plugin chained; 3 pods created in between: validator "
               f"exit 0; after the new installer: :8080 {path_of(reply)}")
    RUN["installer"] = newer


def sandbox_medians(kube: KubeNode, label: str, rounds: int = 5) -> dict[str, float]:
    """RunPodSandbox alone (CNI ADD included, no containers) per pod kind, median of rounds."""
    kinds = {"protected": lambda n: workloads.protected(n, images.project_image()),
             "annotated": lambda n: workloads.annotated(n, images.project_image()),
             "ordinary": workloads.ordinary}
    medians = {}
    for kind, make in kinds.items():
        seconds = []
        for i in range(rounds):
            manifest = make(f"{label}-{kind}-{i}")
            if kind != "annotated":
                kube.node.add_pod_fixture(manifest)
            plan = kube.plan(manifest)
            plan.sandbox.setdefault("linux", {})["cgroup_parent"] = kube.cgroup_parent
            started = time.monotonic()
            sandbox = kube.runtime.run_pod_sandbox(plan.sandbox)
            seconds.append(time.monotonic() - started)
            kube.runtime.stop_pod_sandbox(sandbox)
            kube.runtime.remove_pod_sandbox(sandbox)
        medians[kind] = statistics.median(seconds)
    return medians


def test_runpodsandbox_with_the_plugin_chained(kube, client):
    RUN["with"] = sandbox_medians(kube, "with")
    assert kube.chain() == ["bridge", "microgateway-cni"]


def test_uninstall_restores_the_primarys_conflist(kube, client):
    kube.delete_daemonset()
    assert kube.stop_installer(RUN["installer"]) == 0
    assert json.loads(kube.primary.read_text()) == json.loads(kube.primary_text), "the primary's document again"
    assert (kube.node.bin_dir / "microgateway-cni").exists(), "the binary stays for DELs of pods still running"
    with pytest.raises(PodFailed) as failed:
        kube.create(workloads.protected("unprotected", images.project_image()))
    assert failed.value.container == workloads.VALIDATOR_CONTAINER and failed.value.code == 3
    report.add("uninstall: conflist is the primary's again, binary kept; a protected pod now: validator exit 3")


def test_runpodsandbox_without_the_plugin(kube, client):
    """After the uninstall: the same pods on the primary's chain alone; prints the plugin's added latency."""
    without = sandbox_medians(kube, "without")
    for kind, seconds in without.items():
        report.add(f"RunPodSandbox median, {kind:9}: {RUN['with'][kind] * 1000:5.0f} ms with the plugin, "
              f"{seconds * 1000:5.0f} ms without (+{(RUN['with'][kind] - seconds) * 1000:.0f} ms)")
    assert all(RUN["with"][kind] - without[kind] < 1.0 for kind in without)
