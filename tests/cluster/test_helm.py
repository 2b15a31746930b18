"""Issue 27 on the real cluster: the Helm chart (charts/microgateway-cni) installed, upgraded and uninstalled
through helm, and checked through kubectl as the kubectl path is (test_workloads.py): the DaemonSet Ready, the
plugin chained and the start-up taint lifted; protected pods protected, ordinary pods untouched; an upgrade
while protected pods start leaves none unprotected; `helm uninstall` gives the primary its conflist back.

helm runs as kubectl does here: inside the control plane's network namespace, with the admin's kubeconfig,
from the checkout, its caches and config in the run's directory.

The tests share one cluster and run in order: install, upgrade, uninstall.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from datetime import UTC, datetime
from typing import Any

from tests.support import components, report, workloads
from tests.support.chart import CHART, NAMESPACE, RELEASE
from tests.support.cluster.cluster import INSTALLER, INSTALLER_PODS, Cluster, deployment, for_api, validator_exit
from tests.support.cluster.worker import HUB, image
from tests.support.node import STARTUP_TAINT

NEWER = "0.1.1"
PLUGIN = "microgateway-cni"
KUBECONFIG = "microgateway-cni-kubeconfig"  # the installer's kubeconfig in the node's CNI config directory
TIER = "cluster"  # the report's section (tests/cluster/conftest.py)
CLUSTER = Cluster  # a worker node too (tests/cluster/conftest.py)
RUN: dict[str, Any] = {}  # what one test leaves to a later one on the shared cluster (tests run in order)


def note(line: str) -> None:
    report.add(line, TIER)


def _in_plane(cluster: Cluster, *argv: str) -> list[str]:
    """argv inside the control plane's network namespace, where the API server is https://127.0.0.1:6443."""
    return ["ip", "netns", "exec", cluster.plane.netns, *argv]


def helm(cluster: Cluster, *args: str, timeout: float = 180) -> str:
    """helm ARGS as the admin; its output, or AssertionError with helm's own message."""
    home = cluster.plane.dir / "helm"
    env = {**os.environ, "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
           "HELM_DATA_HOME": str(home / "data")}
    done = subprocess.run(_in_plane(cluster, components.binary("helm"),
                                    f"--kubeconfig={cluster.plane.pki.kubeconfig('admin')}", *args),
                          cwd=CHART.parents[1], env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode:
        raise AssertionError(f"helm {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def release_status(cluster: Cluster) -> str:
    info = json.loads(helm(cluster, "status", RELEASE, "-n", NAMESPACE, "-o", "json"))
    return f"revision {info['version']} {info['info']['status']}"


def tag_newer(cluster: Cluster) -> None:
    """The project's image also under the NEWER tag in the node's containerd: the 0.1.0 build re-tagged (its
    binaries are the same; project_archive would build 0.1.1 with buildah, differing only in its version label)."""
    worker = cluster.worker
    done = subprocess.run([worker.release.ctr, "-n", "k8s.io", "--address", str(worker.containerd.socket), "images",
                           "tag", "--force", HUB + image(), HUB + image(NEWER)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + 30
    while not any(HUB + image(NEWER) in found["repo_tags"] for found in worker.containerd.runtime.list_images()):
        assert time.monotonic() < deadline, f"containerd's CRI does not list {HUB + image(NEWER)}"
        time.sleep(0.05)


def installer_pods(cluster: Cluster) -> list[dict[str, Any]]:
    return list(cluster.get(*INSTALLER, "pods", "-l", INSTALLER_PODS)["items"])


def test_helm_install_readies_the_daemonset_chains_the_plugin_and_lifts_the_taint(cluster: Cluster) -> None:
    assert cluster.worker.taints() == [STARTUP_TAINT["key"]], "the kubelet registers the node with the start-up taint"
    began = time.monotonic()
    helm(cluster, "install", RELEASE, "charts/microgateway-cni", "--namespace", NAMESPACE)
    cluster.installer_ready()
    ready = time.monotonic() - began
    assert cluster.worker.taints() == []
    assert PLUGIN in cluster.primary_entries() and cluster.primary_entries()[-1] == PLUGIN
    assert (cluster.worker.node.bin_dir / PLUGIN).exists(), "the installer copied the plugin bundle"
    assert (cluster.worker.node.conf_dir / KUBECONFIG).exists()
    pods = installer_pods(cluster)
    assert [pod["spec"]["containers"][0]["image"] for pod in pods] == [image()]
    note(f"helm install {RELEASE} charts/microgateway-cni -n {NAMESPACE}: {release_status(cluster)}; DaemonSet "
         f"Ready ({image()}), conflist {cluster.primary_entries()}, taint lifted after {ready:.1f} s")


def test_protected_pod_passes_its_validator_ordinary_pod_untouched(cluster: Cluster) -> None:
    cluster.create(deployment(workloads.protected("shop", image()), replicas=2))
    cluster.create(for_api(workloads.ordinary("plain")))
    cluster.kubectl("rollout", "status", "deployment/shop", "--timeout=180s")
    cluster.wait("--for=condition=Ready", "pod/plain")
    pods = cluster.get("pods", "-l", "app=shop")["items"]
    assert [validator_exit(pod) for pod in pods] == [0, 0]
    shop = pods[0]["metadata"]["name"]
    result = cluster.verdict(shop)
    assert result["verdict"] == "pass", result
    rules = cluster.our_rules(shop)
    assert rules != []
    assert cluster.our_rules("plain") == []
    note(f"after helm install: protected pod {shop} validator {result['verdict']} (exit 0), {len(rules)} rules of "
         "ours; ordinary pod plain: none")


def test_helm_upgrade_while_protected_pods_start_none_unprotected(cluster: Cluster) -> None:
    """The installer is replaced by `helm upgrade` while the Deployment scales up: every pod that runs has our
    rules and its validator passed; one set up without the plugin would have been refused by its validator."""
    tag_newer(cluster)
    before = {pod["metadata"]["name"] for pod in cluster.get("pods", "-l", "app=shop")["items"]}
    began = datetime.now(UTC)
    helm(cluster, "upgrade", RELEASE, "charts/microgateway-cni", "-n", NAMESPACE, f"--set=image.tag={NEWER}",
         "--reuse-values")
    cluster.kubectl("scale", "deployment/shop", "--replicas=5")
    cluster.installer_ready()
    rolled = datetime.now(UTC)
    cluster.kubectl("rollout", "status", "deployment/shop", "--timeout=180s")
    installers = installer_pods(cluster)
    assert [pod["spec"]["containers"][0]["image"] for pod in installers] == [image(NEWER)]
    pods = cluster.get("pods", "-l", "app=shop")["items"]
    names = [pod["metadata"]["name"] for pod in pods]
    new = [name for name in names if name not in before]
    exits = [validator_exit(pod) for pod in pods]
    unprotected = [name for name in names if not cluster.our_rules(name)]
    during = {entry["pod"] for entry in cluster.plugin_log() if entry["command"] == "ADD"
              and entry["pod"].removeprefix("default/") in new and began < datetime.fromisoformat(entry["ts"]) < rolled}
    refused = cluster.get("events", "--field-selector", "reason=MicrogatewayNetworkValidationFailed")["items"]
    note(f"helm upgrade --set image.tag={NEWER} --reuse-values: {release_status(cluster)}, installer "
         f"{installers[0]['spec']['containers'][0]['image']} (the {image()} build re-tagged)")
    note(f"during the upgrade shop scaled 2 -> 5: {len(new)} pods set up ({len(during)} of them between "
         f"`helm upgrade` and the new installer's Ready), {len(pods)} running, validator exits {exits}, "
         f"{len(pods) - len(unprotected)}/{len(pods)} with our rules, {len(refused)} refused by the validator")
    assert exits == [0] * 5
    assert unprotected == []


def test_helm_uninstall_gives_the_primary_its_conflist_back(cluster: Cluster) -> None:
    """helm deletes the DaemonSet first, then the RBAC and the ServiceAccount: the installer, on SIGTERM, finds its
    DaemonSet gone or going (or is refused with 401/403) and uninstalls (docs/design.md)."""
    installer = installer_pods(cluster)[0]["metadata"]["name"]
    config = cluster.plane.pki.kubeconfig("admin")
    follow = subprocess.Popen(_in_plane(cluster, components.binary("kubectl"), f"--kubeconfig={config}",
                                        *INSTALLER, "logs", "-f", installer),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        helm(cluster, "uninstall", RELEASE, "-n", NAMESPACE)
        cluster.wait(*INSTALLER, "--for=delete", "pod", "-l", INSTALLER_PODS)
        logged, _ = follow.communicate(timeout=30)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    messages = [json.loads(line)["message"] for line in logged.splitlines() if line.startswith("{")]
    reasons = [message for message in messages if message.startswith("uninstalling")]
    entries = cluster.primary_entries()
    note(f"helm uninstall {RELEASE}: installer logged {reasons or ['(DaemonSet being deleted)']} then "
         f"{[m for m in messages if m.startswith('uninstalled') or m.startswith('stopping')]}")
    note(f"after helm uninstall: conflist {entries} (the primary's: {cluster.primary_is_the_agents()}), binary kept: "
         f"{(cluster.worker.node.bin_dir / PLUGIN).exists()}, kubeconfig gone: "
         f"{not (cluster.worker.node.conf_dir / KUBECONFIG).exists()}")
    assert "uninstalled; binary kept for DEL of remaining pods" in messages, messages
    assert PLUGIN not in entries
    assert cluster.primary_is_the_agents()
    assert (cluster.worker.node.bin_dir / PLUGIN).exists(), "the binary stays for later DELs"
    assert not (cluster.worker.node.conf_dir / KUBECONFIG).exists()
