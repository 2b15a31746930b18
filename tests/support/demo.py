"""The demo: a one-node Kubernetes cluster on this machine, told through kubectl.

Run by scripts/demo.sh; tests/cluster/test_demo.py runs the same code and asserts its checks. Everything is
real (tests/support/cluster): etcd, kube-apiserver, the controller manager and the scheduler, a node with
containerd 2, the kubelet and kube-proxy, the project's image built here from the Dockerfile. The story: the
node joins with the start-up taint and a protected Deployment waits; `kubectl apply -k` installs the plugin
and lifts the taint; the validator's verdict, the rules, real traffic; a pod started while the plugin is not
chained, refused, and repaired once the installer is back; `kubectl delete -k`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cni.contract import VALIDATOR_CONTAINER
from tests.support import workloads
from tests.support.cluster.cluster import (
    INSTALLER,
    INSTALLER_PODS,
    OVERLAY,
    Cluster,
    deployment,
    for_api,
    validator_exit,
)
from tests.support.cluster.controlplane import NODE_NAME
from tests.support.cluster.worker import image
from tests.support.node import STARTUP_TAINT

REPAIRED = "MicrogatewayNetworkValidationFailed"  # the repair controller's event


@dataclass
class Report:
    verbose: bool = False
    checks: list[tuple[str, bool, str]] = field(default_factory=list)

    def step(self, text: str) -> None:
        print(f"\n== {text}", flush=True)

    def info(self, text: str) -> None:
        print(f"   {text}", flush=True)

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append((name, ok, detail))
        print(f"   [{'PASS' if ok else 'FAIL'}] {name}: {detail}", flush=True)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(ok for _, ok, _ in self.checks)

    def summary(self) -> None:
        width = max(len(name) for name, _, _ in self.checks)
        print("\nSummary")
        for name, ok, _ in self.checks:
            print(f"  {name.ljust(width)}  {'PASS' if ok else 'FAIL'}")
        print(f"\nRESULT: {'PASS' if self.passed else 'FAIL'}")


def path_of(reply: str) -> str:
    """The hops a stand-in's reply names ("engine=... -> app=..."), from the client."""
    hops = ["client"]
    for part in reply.split(" -> "):
        hops.append(part.split("=")[0] if "=" in part else part)
    return " -> ".join(hops)


@dataclass
class Session:
    """kubectl as the user types it: each command and its output go to the report."""

    cluster: Cluster
    report: Report

    def __call__(self, *args: str, input: str | None = None, shown: str = "") -> str:
        """kubectl ARGS (shown as `shown` when the real arguments would not tell the reader more)."""
        self.report.info(f"$ kubectl {shown or shlex.join(args)}")
        out = self.cluster.kubectl(*args, input=input, timeout=200)
        for line in out.rstrip().splitlines():
            self.report.info(f"  {line}")
        return out


def run_demo(report: Report, keep: bool = False) -> bool:
    started = time.monotonic()
    report.step("0. the cluster: etcd, kube-apiserver, controller manager and scheduler; a node with containerd 2, "
                "the kubelet and kube-proxy; the images built here and imported on the node")
    cluster = Cluster()
    try:
        cluster.start()
        report.info(f"control plane namespace {cluster.plane.netns}; node {cluster.worker.dir}; up in "
                    f"{cluster.start_seconds:.0f} s ({time.monotonic() - started:.0f} s with the image builds)")
        _story(Session(cluster, report))
        if keep:
            report.step("cluster kept up (--keep): press Enter to tear it down")
            report.info(f"ip netns exec {cluster.plane.netns} kubectl "
                        f"--kubeconfig {cluster.plane.pki.kubeconfig('admin')} get pods -A")
            input()
    finally:
        report.step("8. teardown: pods, kubelet, kube-proxy, containerd, control plane, namespace, cgroups, files")
        cluster.close()
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
        dirs = [str(path) for path in (cluster.plane.dir, cluster.worker.dir)]
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
                  if any(d in line for d in dirs)]
        cgroups = list(Path("/sys/fs/cgroup").glob(f"*/{cluster.worker.containerd.cgroup_parent.lstrip('/')}"))
        left = [cluster.plane.netns] * (cluster.plane.netns in netns) + [d for d in dirs if Path(d).exists()]
        report.check("nothing left behind", not left and not mounts and not cgroups,
                     f"namespace and directories left: {left or 'none'}; mounts: {mounts or 'none'}; "
                     f"cgroups: {[str(c) for c in cgroups] or 'none'}")
    return report.passed


def _story(kubectl: Session) -> None:
    cluster, report = kubectl.cluster, kubectl.report
    report.step("1. the node joins with the start-up taint: a protected Deployment waits")
    kubectl("get", "nodes", "-o", "wide")
    kubectl("get", "node", NODE_NAME, "-o", "jsonpath={.spec.taints}")
    kubectl("apply", "-f", "-", input=json.dumps(deployment(workloads.protected("shop", image()), replicas=2)),
            shown="apply -f shop.yaml   # labelled sidecar.microgateway.airlock.com/inject: \"true\", validator first")
    cluster.wait("deployment/shop", "--for=jsonpath={.status.replicas}=2")  # its pods exist
    cluster.wait("--for=condition=PodScheduled=false", "pod", "-l", "app=shop")
    kubectl("get", "pods", "-o", "wide")
    why = [event["message"] for event in cluster.get("events", "--field-selector", "reason=FailedScheduling")["items"]]
    report.check("shop waits for the plugin", bool(why) and "untolerated taint" in why[-1]
                 and cluster.worker.taints() == [STARTUP_TAINT["key"]],
                 f"the scheduler: {why[-1] if why else 'no FailedScheduling event'}; the node's only taint is "
                 f"{', '.join(cluster.worker.taints())}")

    report.step("2. kubectl apply -k: the installer chains the plugin and lifts the taint; shop is scheduled")
    began = time.monotonic()
    kubectl("apply", "--server-side", "-k", OVERLAY)
    kubectl(*INSTALLER, "rollout", "status", "daemonset/microgateway-cni", "--timeout=120s")
    seconds = time.monotonic() - began
    chained = cluster.primary_entries()[-1] == "microgateway-cni"
    report.check("installer lifts the taint", cluster.worker.taints() == [] and chained,
                 f"{seconds:.1f} s after kubectl apply; node taints now: {cluster.worker.taints() or 'none'}; "
                 f"the node's {cluster.worker.primary.name}: {' -> '.join(cluster.primary_entries())}")
    kubectl("rollout", "status", "deployment/shop", "--timeout=180s")
    for manifest in (workloads.client("client"), workloads.istio("mesh", image()), workloads.ordinary("plain")):
        cluster.create(for_api(manifest))
    cluster.wait("--for=condition=Ready", "pod/client", "pod/mesh", "pod/plain")
    kubectl("get", "nodes,pods", "-A", "-o", "wide")

    report.step("3. the validator's verdict, the rules, diagnose")
    kubectl("logs", "deploy/shop", "-c", VALIDATOR_CONTAINER)
    for pod in cluster.get("pods", "-l", "app=shop")["items"] + [cluster.get("pod", "mesh")]:
        name = pod["metadata"]["name"]
        verdict = cluster.verdict(name)
        probes = ", ".join(f"IPv{p['family']} {p['outcome']} {p['ms']} ms" for p in verdict["probes"])
        report.check(f"validator {name}", validator_exit(pod) == 0 and verdict["verdict"] == "pass",
                     f"exit {validator_exit(pod)}, {verdict['verdict']}: {probes}")
    shop = cluster.get("pods", "-l", "app=shop")["items"][0]["metadata"]["name"]
    report.check("plain pod untouched", cluster.our_rules("plain") == [],
                 f"no rule of ours in plain's network namespace; shop's: {len(cluster.our_rules(shop))}")
    custom = cluster.worker.dir / "debug-root.json"
    custom.write_text(json.dumps({"securityContext": {"runAsUser": 0}}))
    kubectl("debug", f"pod/{shop}", f"--image={image()}", "--profile=netadmin", f"--custom={custom}", "-c", "diagnose",
            "--", "/usr/local/bin/microgateway-network-validator", "diagnose")
    cluster.wait(f"pod/{shop}", "--for=jsonpath={.status.ephemeralContainerStatuses[0].state.terminated.exitCode}=0")
    findings = [line for line in kubectl("logs", shop, "-c", "diagnose").splitlines() if re.match(r"I\d+: ", line)]
    report.check(f"diagnose {shop}", bool(findings) and all(line.endswith(": ok") for line in findings),
                 f"kubectl debug --profile=netadmin: exit 0, {', '.join(findings)}")

    report.step("4. requests from the client pod: the path each one takes")
    ips = {name: cluster.pod_ip(name) for name in (shop, "mesh", "plain")}
    expectations = [(shop, 8080, "client -> engine -> app"), (shop, 8081, "client -> app"),
                    (shop, 5555, "client -> engine"), ("mesh", 8080, "client -> istio -> engine -> app"),
                    ("plain", 8080, "client -> app")]
    targets = [f"{ips[name]}:{port}" for name, port, _ in expectations]
    replies = json.loads(kubectl("exec", "client", "--", "python3", "/opt/mgw/client.py", *targets))
    for (name, port, expected), target in zip(expectations, targets, strict=True):
        report.check(f"{name}:{port}", path_of(replies[target]) == expected, f"{path_of(replies[target])}")

    report.step("5. a protected pod started while the plugin is not chained")
    report.info("the installer leaves the node (its DaemonSet's nodeSelector matches no node), then the primary "
                "CNI's agent rewrites its conflist, as on its upgrade: nobody chains the plugin again")
    cluster.stop_installer()
    cluster.worker.write_primary()
    report.info(f"the node's {cluster.worker.primary.name}: {' -> '.join(cluster.primary_entries())}")
    kubectl("apply", "-f", "-", input=json.dumps(deployment(workloads.protected("late", image()), replicas=1)),
            shown="apply -f late.yaml")
    kubectl("create", "-f", "-", input=json.dumps(for_api(workloads.ordinary("plain-meanwhile"))),
            shown="create -f plain-meanwhile.yaml   # an ordinary pod")
    cluster.wait("deployment/late", "--for=jsonpath={.status.replicas}=1")
    cluster.wait("--for=jsonpath={.status.initContainerStatuses[0].restartCount}=1", "pod", "-l", "app=late")
    cluster.wait("--for=condition=Ready", "pod/plain-meanwhile")
    kubectl("get", "pods", "-l", "app=late", "-o", "wide")
    late = cluster.get("pods", "-l", "app=late")["items"][0]
    refused = late["metadata"]["name"]
    kubectl("logs", refused, "-c", VALIDATOR_CONTAINER, "--previous")
    report.check("validator refuses the unprotected pod", validator_exit(late) == 3,
                 f"{refused}: validator exit {validator_exit(late)}, the app never started; "
                 "plain-meanwhile (ordinary) is Ready")

    report.step("6. the installer is back: it chains the plugin again and repairs the refused pod")
    cluster.resume_installer()
    cluster.wait("--for=delete", f"pod/{refused}")
    kubectl("rollout", "status", "deployment/late", "--timeout=120s")
    events = [e["message"] for e in cluster.get("events", "--field-selector", f"reason={REPAIRED}")["items"]]
    report.check("installer repairs it", cluster.primary_entries()[-1] == "microgateway-cni" and bool(events),
                 f"chained again; {refused} deleted, event {REPAIRED}: {events[-1] if events else 'none'}")
    again = cluster.get("pods", "-l", "app=late")["items"][0]
    reply = cluster.request("client", [f"{again['status']['podIP']}:8080"])
    report.check("recreated pod protected", validator_exit(again) == 0
                 and path_of(next(iter(reply.values()))) == "client -> engine -> app",
                 f"{again['metadata']['name']}: validator exit {validator_exit(again)}, "
                 f"{path_of(next(iter(reply.values())))}")

    report.step("7. kubectl delete -k: the primary's conflist again, the binary stays; the pods go")
    kubectl("delete", "-k", OVERLAY)
    cluster.wait(*INSTALLER, "--for=delete", "pod", "-l", INSTALLER_PODS)
    report.check("uninstalled", cluster.primary_is_the_agents()
                 and (cluster.worker.node.bin_dir / "microgateway-cni").exists(),
                 f"the node's {cluster.worker.primary.name}: {' -> '.join(cluster.primary_entries())}; "
                 "/opt/cni/bin/microgateway-cni kept")
    kubectl("delete", "deployment", "shop", "late")
    kubectl("delete", "pod", "client", "mesh", "plain", "plain-meanwhile")
    cluster.wait("--for=delete", "pod", "-l", "app in (shop, late)")
    log = cluster.plugin_log()
    removed = [e for e in log if e.get("msg") == "redirection removed"]
    errors = [e for e in log if e.get("level") == "error"]
    report.check("pods torn down", not errors,
                 f"{len(removed)} DELs reached our plugin (containerd runs the conflist it has now, which no longer "
                 f"names it: our rules go with each pod's netns), {len(errors)} plugin errors")
    if report.verbose:
        report.step("the plugin's log (--verbose)")
        for entry in log:
            report.info(json.dumps(entry))


def main() -> None:
    parser = argparse.ArgumentParser(description="microgateway-cni demo on a one-node Kubernetes cluster (needs root)")
    parser.add_argument("--verbose", action="store_true", help="print the plugin's log")
    parser.add_argument("--keep", action="store_true", help="leave the cluster up for exploring until Enter")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("the demo runs a cluster in network and mount namespaces and needs root: run bash scripts/demo.sh "
                 "as root")
    started = time.monotonic()
    report = Report(verbose=args.verbose)
    try:
        run_demo(report, keep=args.keep)
    except KeyboardInterrupt:
        report.check("interrupted", False, "Ctrl-C; everything created was removed")
    except Exception as exc:
        report.check("demo ran", False, f"{type(exc).__name__}: {exc}")
    report.summary()
    print(f"wall time {time.monotonic() - started:.1f} s")
    sys.exit(0 if report.passed else 1)


if __name__ == "__main__":
    main()
