"""The README's deploy steps on a real cluster: kube-apiserver, scheduler, controllers, a kubelet on
containerd 2 and kube-proxy (tests/support/cluster), driven through kubectl only, as a user does it.

The DaemonSet is applied from the default overlay, the scheduler waits for the installer to lift the
start-up taint, protected pods come from a Deployment, the validator's verdict is read with `kubectl logs`
and `diagnose` runs in a `kubectl debug` container. Where a user would log in to the node, the tests look
at the node: its conflist, the plugin's log, a pod's rules in its network namespace.

The tests share one cluster and run in order: install, pods, teardown, upgrade, installer down, uninstall.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cni.contract import INJECT
from tests.support import manifests, report, workloads
from tests.support.cluster.cluster import (
    INSTALLER,
    INSTALLER_PODS,
    OVERLAY,
    Cluster,
    deployment,
    for_api,
    validator_exit,
)
from tests.support.cluster.worker import image
from tests.support.demo import path_of
from tests.support.node import STARTUP_TAINT

NEWER = "0.1.1"
PRIMARY_ONLY = ["bridge", "portmap"]  # the primary agent's conflist (tests/support/cluster/worker.py)
CHAINED = [*PRIMARY_ONLY, "microgateway-cni"]
ROUNDS = 5  # pods per start-time figure
TIER = "cluster"  # the report's section (tests/cluster/conftest.py)
CLUSTER = Cluster  # a worker node too (tests/cluster/conftest.py)
RUN: dict[str, Any] = {}  # what one test leaves to a later one on the shared cluster (tests run in order)


def note(line: str) -> None:
    report.add(line, TIER)


def started_at(cluster: Cluster, installer: str) -> datetime:
    """When the installer pod logged its start (its clock is UTC: the image has no time zone)."""
    for line in cluster.kubectl(*INSTALLER, "logs", installer).splitlines():
        entry = json.loads(line)
        if entry["message"] == "installer running":
            return datetime.strptime(entry["asctime"], "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=UTC)
    raise LookupError(f"{installer} has not logged its start")


def start_times(cluster: Cluster, label: str, make: Callable[[str], dict[str, Any]]) -> list[float]:
    """Seconds from `kubectl create` to the pod's Ready condition, one pod after the other; the pods are
    removed afterwards."""
    seconds = []
    names = [f"{label}-{i}" for i in range(ROUNDS)]
    for name in names:
        cluster.create(for_api(make(name)))
        began = time.monotonic()
        cluster.wait("--for=condition=Ready", f"pod/{name}")
        seconds.append(time.monotonic() - began)
    cluster.kubectl("delete", "pod", *names)
    return seconds


def test_daemonset_becomes_ready_chains_the_plugin_and_lifts_the_taint(cluster: Cluster) -> None:
    assert cluster.worker.taints() == [STARTUP_TAINT["key"]], "the kubelet registers the node with the start-up taint"
    began = time.monotonic()
    cluster.kubectl("apply", "--server-side", "-k", OVERLAY)
    cluster.installer_ready()
    ready = time.monotonic() - began
    assert cluster.worker.taints() == []
    assert cluster.primary_entries() == CHAINED
    assert (cluster.worker.node.bin_dir / "microgateway-cni").exists(), "the installer copied the plugin bundle"
    note(f"kubectl apply -k {OVERLAY}: DaemonSet Ready, plugin chained and taint lifted after {ready:.1f} s")


def capabilities(mask: str) -> list[str]:
    """The names of the capabilities set in a /proc/<pid>/status mask (CapEff: 00000000000000cb)."""
    names = {0: "CAP_CHOWN", 1: "CAP_DAC_OVERRIDE", 2: "CAP_DAC_READ_SEARCH", 3: "CAP_FOWNER", 4: "CAP_FSETID",
             5: "CAP_KILL", 6: "CAP_SETGID", 7: "CAP_SETUID", 8: "CAP_SETPCAP", 10: "CAP_NET_BIND_SERVICE",
             12: "CAP_NET_ADMIN", 13: "CAP_NET_RAW", 21: "CAP_SYS_ADMIN"}
    value = int(mask, 16)
    return sorted(names.get(bit, f"bit {bit}") for bit in range(64) if value >> bit & 1)


def test_installer_runs_with_exactly_the_manifests_privileges(cluster: Cluster) -> None:
    """What the real kubelet and containerd gave the installer's container (its runc spec and its process's
    /proc status) against the rendered DaemonSet's securityContext: nothing more, nothing less."""
    spec = manifests.find(manifests.render("default", image()), "DaemonSet")["spec"]["template"]["spec"]
    container = spec["containers"][0]
    wanted = container["securityContext"]
    assert wanted["capabilities"]["drop"] == ["ALL"]
    caps = sorted(f"CAP_{name}" for name in wanted["capabilities"]["add"])
    runtime = cluster.worker.containerd.runtime
    found = runtime.list_containers(state={"state": "CONTAINER_RUNNING"}, label_selector={
        "io.kubernetes.pod.namespace": "kube-system", "io.kubernetes.container.name": container["name"]})
    assert len(found) == 1, found
    info = runtime.container_status(found[0]["id"], verbose=True)["info"]["info"]
    process = info["runtimeSpec"]["process"]
    assert process["user"]["uid"] == wanted["runAsUser"]
    for kind in ("bounding", "effective", "permitted"):
        assert sorted(process["capabilities"][kind]) == caps, kind
    assert not process["capabilities"].get("inheritable") and not process["capabilities"].get("ambient")
    assert process["noNewPrivileges"] is (wanted["allowPrivilegeEscalation"] is False)
    assert info["runtimeSpec"]["root"]["readonly"] is wanted["readOnlyRootFilesystem"]
    status = dict(line.split(":\t", 1) for line in Path(f"/proc/{info['pid']}/status").read_text().splitlines()
                  if ":\t" in line)
    assert status["Uid"].split()[:2] == [str(wanted["runAsUser"])] * 2
    assert capabilities(status["CapEff"]) == capabilities(status["CapBnd"]) == caps, status
    assert status["NoNewPrivs"].strip() == "1"
    note(f"installer container as the kubelet started it: uid {process['user']['uid']}, capabilities "
         f"{', '.join(caps)} (bounding = effective = permitted; /proc CapEff {status['CapEff'].strip()}), "
         f"no_new_privs, read-only root: the DaemonSet's securityContext exactly")


def test_installer_passes_its_probes_and_chains_before_it_lifts_the_taint(cluster: Cluster) -> None:
    """The kubelet runs the manifests' liveness and readiness probes: Ready, never restarted, no liveness
    failure. Readiness fails until the installer has chained the plugin (/readyz 503): that is its purpose."""
    container = manifests.find(manifests.render("default", image()), "DaemonSet")["spec"]["template"]["spec"][
        "containers"][0]
    assert {"livenessProbe", "readinessProbe"} <= set(container)
    pod = cluster.get(*INSTALLER, "pods", "-l", INSTALLER_PODS)["items"][0]
    name = pod["metadata"]["name"]
    cluster.wait(*INSTALLER, "--for=condition=Ready", f"pod/{name}")
    liveness = container["livenessProbe"]
    time.sleep(liveness.get("initialDelaySeconds", 0) + liveness.get("periodSeconds", 10) + 1)  # a liveness run
    pod = cluster.get(*INSTALLER, "pod", name)
    [status] = pod["status"]["containerStatuses"]
    assert status["ready"] is True and status["restartCount"] == 0, status
    events = cluster.get(*INSTALLER, "events", "--field-selector", f"involvedObject.name={name},reason=Unhealthy")
    unhealthy = [event["message"].strip() for event in events["items"]]
    assert not [message for message in unhealthy if not message.startswith("Readiness probe failed")], unhealthy
    messages = [json.loads(line).get("message") for line in cluster.kubectl(*INSTALLER, "logs", name).splitlines()
                if line.startswith("{")]
    assert messages.index("plugin chained") < messages.index(
        "start-up taint removed: pods may be scheduled to this node")
    note(f"installer {name}: Ready, 0 restarts, no liveness failure after a liveness period ({len(unhealthy)} "
         "readiness failures before it had chained); logged \"plugin chained\" before lifting the taint")


def test_protected_deployment_validator_passes_and_traffic_goes_through_the_engine(cluster: Cluster) -> None:
    cluster.create(deployment(workloads.protected("shop", image()), replicas=2))
    cluster.create(for_api(workloads.client("client")))
    cluster.kubectl("rollout", "status", "deployment/shop", "--timeout=180s")
    cluster.wait("--for=condition=Ready", "pod/client")
    pods = cluster.get("pods", "-l", "app=shop")["items"]
    assert [validator_exit(pod) for pod in pods] == [0, 0]
    shop = pods[0]["metadata"]["name"]
    result = cluster.verdict(shop)
    assert result["verdict"] == "pass", result
    ip = pods[0]["status"]["podIP"]
    replies = cluster.request("client", [f"{ip}:8080", f"{ip}:8081", f"{ip}:5555"])
    paths = {target.rsplit(":", 1)[1]: path_of(reply) for target, reply in replies.items()}
    note(f"Deployment shop, pod {shop} {ip}: validator {result['verdict']} (exit 0); "
         + "; ".join(f":{port} {hops}" for port, hops in paths.items()))
    assert paths == {"8080": "client -> engine -> app", "8081": "client -> app", "5555": "client -> engine"}
    RUN["shop"] = shop


def test_ordinary_pod_is_untouched(cluster: Cluster) -> None:
    cluster.create(for_api(workloads.ordinary("plain")))
    cluster.wait("--for=condition=Ready", "pod/plain")
    assert cluster.our_rules("plain") == []
    assert cluster.our_rules(RUN["shop"]) != [], "the same look finds the protected pod's rules"
    ip = cluster.pod_ip("plain")
    reply = cluster.request("client", [f"{ip}:8080"])[f"{ip}:8080"]
    assert path_of(reply) == "client -> app"
    note(f"ordinary pod plain {ip}: no rule of ours in its netns; :8080 {path_of(reply)}")


def test_pod_protected_by_the_runtimes_annotations_alone(cluster: Cluster) -> None:
    """The inject annotation, no label: containerd hands the annotations to the plugin, which decides from
    them ("source": "runtime") without asking the API server."""
    cluster.create(for_api(workloads.annotated("annotated", image())))
    cluster.wait("--for=condition=Ready", "pod/annotated")
    pod = cluster.get("pod", "annotated")
    assert INJECT not in pod["metadata"]["labels"] and pod["metadata"]["annotations"][INJECT] == "true"
    assert validator_exit(pod) == 0
    assert cluster.verdict("annotated")["verdict"] == "pass"
    ip = pod["status"]["podIP"]
    reply = cluster.request("client", [f"{ip}:8080"])[f"{ip}:8080"]
    assert path_of(reply) == "client -> engine -> app"
    configured = [entry for entry in cluster.plugin_log() if entry.get("pod") == "default/annotated"
                  and entry["msg"] == "redirection configured"]
    assert [entry["source"] for entry in configured] == ["runtime"], configured
    note(f"pod annotated {ip} (inject annotation, no label): validator pass (exit 0), plugin's source "
         f"\"runtime\" (no API lookup); :8080 {path_of(reply)}")


def test_a_pod_reaches_the_api_server_through_the_kubernetes_service(cluster: Cluster) -> None:
    """kube-proxy's DNAT of the ClusterIP, seen from a pod: TLS verified with the pod's service-account CA."""
    service = cluster.kubectl("get", "service", "kubernetes", "-o", "jsonpath={.spec.clusterIP}")
    fetch = ("import json, ssl, urllib.request\n"
             "context = ssl.create_default_context(cafile='/var/run/secrets/kubernetes.io/serviceaccount/ca.crt')\n"
             f"print(json.load(urllib.request.urlopen('https://{service}/version', context=context))['gitVersion'])")
    version = cluster.kubectl("exec", "client", "--", "python3", "-c", fetch).strip()
    assert version.startswith("v1.")
    note(f"client pod -> https://{service}/version (the kubernetes Service, kube-proxy nftables): {version}")


def test_istio_pod_engine_behind_the_proxy(cluster: Cluster) -> None:
    cluster.create(for_api(workloads.istio("mesh", image())))
    cluster.wait("--for=condition=Ready", "pod/mesh")
    statuses = cluster.get("pod", "mesh")["status"]["initContainerStatuses"]
    assert [s["state"]["terminated"]["exitCode"] for s in statuses] == [0, 0], "istio-init, then the validator"
    ip = cluster.pod_ip("mesh")
    reply = cluster.request("client", [f"{ip}:8080"])[f"{ip}:8080"]
    assert path_of(reply) == "client -> istio -> engine -> app"
    note(f"Istio-mode pod mesh {ip}: istio-init and validator exit 0; :8080 {path_of(reply)}")


def test_kubectl_debug_runs_diagnose(cluster: Cluster, tmp_path: Path) -> None:
    """README step 5: diagnose in an ephemeral container with the project's image, as root with NET_ADMIN."""
    custom = tmp_path / "debug-root.json"
    custom.write_text(json.dumps({"securityContext": {"runAsUser": 0}}))
    shop = RUN["shop"]
    cluster.kubectl("debug", f"pod/{shop}", f"--image={image()}", "--profile=netadmin", f"--custom={custom}",
                    "-c", "diagnose", "--", "/usr/local/bin/microgateway-network-validator", "diagnose")
    cluster.wait(f"pod/{shop}", "--for=jsonpath={.status.ephemeralContainerStatuses[0].state.terminated.reason}"
                                "=Completed")
    output = cluster.kubectl("logs", shop, "-c", "diagnose")
    assert "I1: ok" in output and "I2: ok" in output, output
    note(f"kubectl debug {shop} -- microgateway-network-validator diagnose: exit 0, "
         + ", ".join(line for line in output.splitlines() if re.match(r"I\d+: ", line)))


def test_delete_pod_runs_del_and_the_netns_goes(cluster: Cluster) -> None:
    shop = RUN["shop"]
    namespaces = cluster.sandbox("default", shop)["runtimeSpec"]["linux"]["namespaces"]
    netns = Path(next(ns["path"] for ns in namespaces if ns["type"] == "network"))
    assert netns.exists()
    cluster.kubectl("delete", "pod", shop)
    entries = [entry for entry in cluster.plugin_log() if entry.get("pod") == f"default/{shop}"]
    assert "redirection removed" in [entry["msg"] for entry in entries if entry["command"] == "DEL"], entries
    assert [entry for entry in entries if entry["level"] == "error"] == []
    assert not netns.exists(), "containerd removed the pod's network namespace"
    note(f"kubectl delete pod {shop}: DEL removed our rules, netns {netns.name} gone")


def test_new_image_rolled_out_while_protected_pods_start_none_unprotected(cluster: Cluster) -> None:
    """The DaemonSet's installer is replaced while the Deployment scales up: SIGTERM without a deletion
    keeps the plugin chained, so every pod is protected; one set up without it would be refused by its
    validator (and deleted by the repair controller, with an event), never run unprotected."""
    cluster.worker.import_project(NEWER)
    began = datetime.now(UTC)
    cluster.kubectl(*INSTALLER, "set", "image", "daemonset/microgateway-cni", f"installer={image(NEWER)}")
    cluster.kubectl("scale", "deployment/shop", "--replicas=5")
    cluster.installer_ready()
    cluster.kubectl("rollout", "status", "deployment/shop", "--timeout=180s")
    installers = cluster.get(*INSTALLER, "pods", "-l", INSTALLER_PODS)["items"]
    assert [pod["spec"]["containers"][0]["image"] for pod in installers] == [image(NEWER)]
    pods = cluster.get("pods", "-l", "app=shop")["items"]
    names = [pod["metadata"]["name"] for pod in pods]
    assert [validator_exit(pod) for pod in pods] == [0] * 5
    unprotected = [name for name in names if not cluster.our_rules(name)]
    assert unprotected == []
    refused = cluster.get("events", "--field-selector", "reason=MicrogatewayNetworkValidationFailed")["items"]
    new_installer = started_at(cluster, installers[0]["metadata"]["name"])
    between = {entry["pod"] for entry in cluster.plugin_log() if entry["command"] == "ADD"
               and entry["pod"].removeprefix("default/") in names
               and began < datetime.fromisoformat(entry["ts"]) < new_installer}
    note(f"rollout to {image(NEWER)} while shop scaled 2 -> 5: all 5 running pods have our rules and "
         f"validator exit 0, {len(between)} set up between `set image` and the new installer's start; "
         f"{len(refused)} refused by the validator")


def test_pod_start_with_the_plugin_chained(cluster: Cluster) -> None:
    RUN["with"] = {"ordinary": start_times(cluster, "with-ordinary", workloads.ordinary),
                   "protected": start_times(cluster, "with-protected",
                                            lambda name: workloads.protected(name, image()))}


def test_installer_stopped_protected_pods_refused_ordinary_pods_start(cluster: Cluster) -> None:
    """No installer on the node (its DaemonSet's nodeSelector matches nothing) when the primary CNI's agent
    rewrites its conflist: nobody chains the plugin again, protected pods are refused by their validator,
    ordinary pods keep starting. The installer's return repairs it (the refused pod is deleted)."""
    cluster.stop_installer()
    assert cluster.primary_entries() == CHAINED, "SIGTERM without a deletion keeps it"
    cluster.worker.write_primary()
    cluster.create(for_api(workloads.protected("refused", image(NEWER))))
    cluster.create(for_api(workloads.ordinary("plain-meanwhile")))
    cluster.wait("--for=condition=Ready", "pod/plain-meanwhile")
    cluster.wait("pod/refused", "--for=jsonpath={.status.initContainerStatuses[0].restartCount}=1")
    pod = cluster.get("pod", "refused")
    assert validator_exit(pod) == 3 and pod["status"]["phase"] == "Pending"
    result = cluster.verdict("refused", "--previous")
    assert result["verdict"] != "pass", result
    cluster.resume_installer()
    assert cluster.primary_entries() == CHAINED
    cluster.wait("--for=delete", "pod/refused")
    note(f"installer stopped, primary rewrote its conflist: protected pod refused (validator exit 3, "
         f"verdict {result['verdict']}), ordinary pod Ready; installer back: chained again, refused pod "
         "deleted by the repair controller")


def test_delete_k_gives_the_primary_its_conflist_back_and_pods_start_without_the_plugin(cluster: Cluster) -> None:
    """The uninstall as a user does it: every object of the overlay deleted at once, the installer's
    ServiceAccount and RBAC before its pod's SIGTERM (docs/design.md, "Recognising an uninstall")."""
    cluster.kubectl("delete", "-k", OVERLAY)
    cluster.wait(*INSTALLER, "--for=delete", "pod", "-l", INSTALLER_PODS)
    assert cluster.primary_is_the_agents()
    assert (cluster.worker.node.bin_dir / "microgateway-cni").exists(), "the binary stays for later DELs"
    without = start_times(cluster, "without-ordinary", workloads.ordinary)
    cluster.create(for_api(workloads.protected("after-uninstall", image(NEWER))))
    cluster.wait("pod/after-uninstall", "--for=jsonpath={.status.initContainerStatuses[0].restartCount}=1")
    assert validator_exit(cluster.get("pod", "after-uninstall")) == 3, "no plugin: the validator refuses the pod"
    note(f"kubectl delete -k {OVERLAY}: conflist is the primary's again, binary kept; a protected pod now: "
         "validator exit 3")
    for kind, seconds in RUN["with"].items():
        note(f"pod creation to Ready, median of {ROUNDS}: {kind:9} {statistics.median(seconds):5.2f} s with "
             "the plugin chained")
    note(f"pod creation to Ready, median of {ROUNDS}: ordinary  {statistics.median(without):5.2f} s without")
