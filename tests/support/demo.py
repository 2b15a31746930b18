"""The local node demo: one node on this machine, containerd running the DaemonSet's image and the pods.

Run by scripts/demo.sh; tests/node/test_demo.py runs the same code and asserts its checks. The node, the
runtime and the images are real (tests/support/kubenode.py); the kube-apiserver is a stand-in and the
kubelet's part is done by the harness, translating the rendered manifests into CRI calls.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import images, workloads
from tests.support.kubelet import PodFailed, RunningPod, UnsupportedSpec, check_schedulable
from tests.support.kubenode import NODE_NAME, KubeNode
from tests.support.node import wait_for

UNTAINTED = "start-up taint removed: pods may be scheduled to this node"


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


def blocked_by(kube: KubeNode, manifest: dict[str, Any]) -> str:
    """Why the scheduler keeps the pod off the node, or "" when it may land there."""
    try:
        check_schedulable(manifest["spec"], kube.node.api_node(NODE_NAME))
    except UnsupportedSpec as exc:
        return str(exc)
    return ""


def verdict(kube: KubeNode, pod: RunningPod) -> str:
    """The validator's JSON line (its container log), as `kubectl logs -c <validator>` shows it."""
    cid = pod.container_ids[workloads.VALIDATOR_CONTAINER]
    line = kube.runtime.container_logs(cid).strip().splitlines()[-1:]
    try:
        probes = json.loads(line[0]).get("probes", []) if line else []
    except ValueError:
        return line[0] if line else ""
    return ", ".join(f"IPv{p['family']} {p['outcome']} {p['ms']} ms" for p in probes)


def run_demo(report: Report, keep: bool = False) -> bool:
    started = time.monotonic()
    report.step("0. the node: containerd + runc in a network namespace, images built here and imported")
    kube = KubeNode()
    try:
        kube.start()
        report.info(f"node netns {kube.node.netns}; containerd socket {kube.containerd.socket}"  # type: ignore[union-attr]
                    f"; images {images.PAUSE}, {images.STANDINS}, {images.project_image()} "
                    f"({time.monotonic() - started:.0f} s with the builds)")
        _story(kube, report)
        if keep:
            report.step("node kept up (--keep): press Enter to tear it down")
            report.info(f"containerd: ctr -n k8s.io --address {kube.containerd.socket} containers list")  # type: ignore[union-attr]
            input()
    finally:
        report.step("7. teardown: pods, containerd, namespaces, mounts, files")
        prefix = f"mgwt-{kube.node.id}"
        kube.close()
        left = [ns for ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
                if ns.startswith(prefix)]
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
                  if str(kube.node.dir) in line]
        report.check("nothing left behind", not left and not mounts and not kube.node.dir.exists(),
                     f"namespaces left: {left or 'none'}; mounts left: {mounts or 'none'}; "
                     f"{kube.node.dir} removed: {not kube.node.dir.exists()}")
    return report.passed


def _story(kube: KubeNode, report: Report) -> None:
    image = images.project_image()
    report.step("1. the node registers with the start-up taint; the DaemonSet's pod chains the plugin and lifts it")
    report.info(f"{NODE_NAME} taints: {', '.join(kube.taints())}; {kube.primary.name}: {' -> '.join(kube.chain())}")
    shop_manifest = workloads.protected("shop", image)
    report.info(f"default/shop stays Pending: {blocked_by(kube, shop_manifest)}")
    started = time.monotonic()
    installer = kube.start_installer()
    lifted = wait_for(lambda: not kube.taints(), timeout=30)
    seconds = time.monotonic() - started
    ready = wait_for(lambda: kube.probes_pass(installer), timeout=20)
    report.check("installer container ready", ready and kube.chain() == ["bridge", "microgateway-cni"],
                 f"from {image} as the default overlay says (uid 0, capabilities CHOWN DAC_OVERRIDE FOWNER, "
                 f"read-only root); {kube.primary.name}: {' -> '.join(kube.chain())}; probes pass")
    report.check("installer lifts the taint", lifted and not blocked_by(kube, shop_manifest),
                 f"{seconds:.1f} s after RunPodSandbox of the installer pod; {NODE_NAME} taints now: "
                 f"{', '.join(kube.taints()) or 'none'}")

    report.step("2. pods: RunPodSandbox (CNI ADD through containerd), the validator first, then the containers")
    client = kube.create(workloads.client("client"))
    shop = kube.create(shop_manifest)
    mesh = kube.create(workloads.istio("mesh-shop", image))
    annotated = kube.create(workloads.annotated("annotated", image), in_api=False)
    plain = kube.create(workloads.ordinary("plain"))
    for pod in (shop, mesh, annotated, plain, client):
        kube.wait_started(pod)
        report.info(f"{pod.plan.name:10} {pod.ip:12} our rules: {len(kube.our_rules(pod)):2}  "
                    f"init: {', '.join(f'{n} exit {c}' for n, (c, _) in pod.init_results.items()) or '-'}")
    for pod in (shop, mesh, annotated):
        code = pod.init_results[workloads.VALIDATOR_CONTAINER][0]
        report.check(f"validator {pod.plan.name}", code == 0, f"exit {code}: {verdict(kube, pod)}")
    report.check("plain pod untouched", kube.our_rules(plain) == [], "no rule of ours in the ordinary pod")
    code, output = kube.debug(shop, ["/usr/local/bin/microgateway-network-validator", "diagnose", "--json"])
    report.check("diagnose shop", code == 0, "kubectl debug --profile=netadmin: microgateway-network-validator "
                 f"diagnose exit {code}, chains {json.loads(output)['chains']['4']['chains'] if code == 0 else output}")
    sources = {e["pod"]: e.get("source") for e in kube.plugin_log() if e.get("msg") == "redirection configured"}
    report.check("annotations alone decide", sources.get("default/annotated") == "runtime",
                 "default/annotated is not in the API: containerd handed the plugin its annotations")

    report.step("3. requests from the client pod: the path each one took")
    expectations = [(shop, 8080, "client -> engine -> app"), (shop, 8081, "client -> app"),
                    (shop, 5555, "client -> engine"), (mesh, 8080, "client -> istio -> engine -> app"),
                    (annotated, 8080, "client -> engine -> app"), (plain, 8080, "client -> app")]
    replies = kube.request(client, [f"{pod.ip}:{port}" for pod, port, _ in expectations])
    for pod, port, expected in expectations:
        reply = replies[f"{pod.ip}:{port}"]
        report.check(f"{pod.plan.name}:{port}", path_of(reply) == expected, f"{path_of(reply)}   ({reply})")

    report.step("4. a protected pod started while the plugin is not chained")
    kube.delete_daemonset()
    kube.stop_installer(installer)
    report.info(f"DaemonSet deleted, installer stopped (SIGTERM): {kube.primary.name} is the primary's again: "
                f"{json.loads(kube.primary.read_text()) == json.loads(kube.primary_text)}")
    late_manifest = workloads.protected("late", image)
    try:
        kube.create(late_manifest)
        report.check("validator refuses the unprotected pod", False, "the validator passed without the plugin")
        return
    except PodFailed as failed:
        report.check("validator refuses the unprotected pod", failed.code == 3,
                     f"{failed.container} exit {failed.code}; the app never started")
        report.info(f"termination message: {failed.message.strip()}")
        kube.report_init_failure(late_manifest, failed)
        late = failed.pod

    report.step("5. the DaemonSet is back: the installer re-chains and repairs the pod")
    installer = kube.start_installer()
    repaired = wait_for(lambda: any(e["verb"] == "delete" and e["pod"] == "default/late"
                                    for e in kube.node.journal_entries()), timeout=30)
    events = [e["body"]["reason"] for e in kube.node.journal_entries() if e["verb"] == "event"]
    report.check("installer repairs it", repaired and wait_for(lambda: kube.probes_pass(installer), timeout=20),
                 f"re-chained, default/late deleted through the API (UID precondition), events: {events}")
    kube.delete(late)  # the kubelet's part: the API deleted the pod, so its sandbox goes
    again = kube.create(workloads.protected("late", image))  # its ReplicaSet makes it again
    kube.wait_started(again)
    reply = kube.request(client, [f"{again.ip}:8080"])[f"{again.ip}:8080"]
    report.check("recreated pod protected", again.init_results[workloads.VALIDATOR_CONTAINER][0] == 0
                 and path_of(reply) == "client -> engine -> app", f"validator exit 0, {path_of(reply)}")

    report.step("6. pods deleted: StopPodSandbox and RemovePodSandbox (CNI DEL), the installer stopped")
    for pod in list(kube.pods):
        if pod is not installer:
            kube.delete(pod)
    removed = [e for e in kube.plugin_log() if e.get("msg") == "redirection removed"]
    errors = [e for e in kube.plugin_log() if e.get("level") == "error"]
    report.check("pods torn down", not errors and len(removed) >= 4,
                 f"{len(removed)} DELs removed our rules, {len(errors)} plugin errors")
    kube.stop_installer(installer)
    if report.verbose:
        report.step("logs (--verbose)")
        for entry in kube.plugin_log():
            report.info(json.dumps(entry))


def main() -> None:
    parser = argparse.ArgumentParser(description="microgateway-cni local node demo on containerd (needs root)")
    parser.add_argument("--verbose", action="store_true", help="print the plugin's log")
    parser.add_argument("--keep", action="store_true", help="leave the node up for exploring until Enter")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("the demo runs containerd in network namespaces and needs root: run bash scripts/demo.sh as root")
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
