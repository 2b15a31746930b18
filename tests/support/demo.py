"""The local node demo: a node in network namespaces, pods wired through libcni, real traffic.

Run by scripts/demo.sh; tests/integration/test_demo.py runs the same code and asserts its checks.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

from tests.support.installer import INSTALLER, Daemon, Host
from tests.support.istio import istio_rules
from tests.support.node import STARTUP_TAINT, Node, Pod, node_fixture, pod_fixture, tolerates, wait_for

MESH = {"sidecar.microgateway.airlock.com/serviceMesh": "istio"}
EXCLUDE = {"sidecar.microgateway.airlock.com/excludeInboundPorts": "8081"}
PORTS = [8080, 8081]


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


def validate(node: Node, pod: Pod) -> tuple[int, dict, str]:
    code, stdout, message = node.validate(pod, "--deadline", "1")
    return code, json.loads(stdout), message


def path_of(reply: str) -> str:
    hops = ["client"]
    for part in reply.split(" -> "):
        hops.append(part.split("=")[0] if "=" in part else part)
    return " -> ".join(hops)


DEFAULT_LOG = "/var/log/microgateway-cni.log"  # the plugin's production default: the demo must not write it


def run_demo(report: Report, keep: bool = False) -> bool:
    log_existed = os.path.exists(DEFAULT_LOG)
    node = Node(families=(4,))
    node.start()
    try:
        report.step("1. node boots with the start-up taint; the installer chains microgateway-cni, then lifts it")
        node.write_pods({})
        node.write_nodes({"node-1": node_fixture(taints=[STARTUP_TAINT])})  # kubelet --register-with-taints
        shop_fixture = pod_fixture("shop", annotations=EXCLUDE)
        for pod in (shop_fixture, pod_fixture("mesh-shop", annotations=MESH), pod_fixture("plain", protected=False)):
            node.add_pod_fixture(pod)
        report.info(f"node netns {node.netns}, host root {node.dir}")
        report.info(f"node-1 registered with taints: {_taints(node)}")
        report.info("pods in the API: default/shop (protected, 8081 excluded), default/mesh-shop (protected, "
                    "istio), default/plain (not protected)")
        conflist = node.write_conflist(chained=False, name="10-bridge.conflist")
        host = Host.for_node(node)
        blocking = untolerated(node.api_node(), shop_fixture)
        report.info("protected pod waits: default/shop stays Pending, no sandbox: 0/1 nodes are available: 1 "
                    f"node(s) had untolerated taint {{{blocking[0]['key']}: }}")
        installer = Daemon(node, host)
        started = time.monotonic()
        lifted = wait_for(lambda: not untolerated(node.api_node(), shop_fixture), timeout=20)
        seconds = time.monotonic() - started
        ready = wait_for(installer.ready, timeout=20)
        chained = [p["type"] for p in json.loads(conflist.read_text())["plugins"]]
        report.check("installer ready", ready, f"binary copied to {node.bin_dir.name}/, kubeconfig written, "
                     f"{conflist.name} plugins: {' -> '.join(chained)}")
        messages = [e.get("message", "") for e in installer.log()]
        order = [m for m in messages if m in ("plugin chained", UNTAINTED)]
        report.check("installer lifts the taint", lifted and order == ["plugin chained", UNTAINTED],
                     f"~{seconds:.1f} s after start, after chaining; node-1 taints now: {_taints(node)}; "
                     "the scheduler places the pods")
        for line in installer.metrics().splitlines():
            if line.startswith(("microgateway_cni_node_untainted", "microgateway_cni_untaint_seconds",
                                "microgateway_cni_ready")):
                report.info(f"/metrics {line}")

        report.step("2. pods created through libcni (ADD with K8S_POD_* CNI_ARGS)")
        shop = node.new_pod("shop", conflist)
        mesh = node.new_pod("mesh-shop", conflist)
        _istio_init(node, mesh)
        plain = node.new_pod("plain", conflist)
        client = node.new_pod("client", node.write_conflist(chained=False, name="client.conflist"))
        for pod in (shop, mesh, plain, client):
            report.info(f"{pod.name:10} {pod.ip():12} netns {pod.netns}  MGW_ rules: {len(node.mgw_rules(pod))}")
        report.check("plain pod untouched", node.mgw_rules(plain) == [], "no MGW_ rule in the ordinary pod")
        if report.verbose:
            for pod in (shop, mesh):
                report.info(f"our rules in {pod.name} (backend chosen by the plugin's netfilterBackend):\n"
                            + "\n".join(node.mgw_rules(pod)))

        report.step("3. network validator in each protected pod (uid 1002, unprivileged)")
        for pod in (shop, mesh):
            code, verdict, _ = validate(node, pod)
            timing = ", ".join(f"IPv{p['family']} {p['outcome']} {p['ms']} ms" for p in verdict.get("probes", []))
            report.check(f"validator {pod.name}", code == 0, f"exit {code}: {timing}")
        report.info("then the containers start: app (uid 1000), Engine stand-in on :13378 (uid 1001), "
                    "Istio-proxy stand-in (uid 1337) in mesh-shop")
        node.start_workloads(shop, PORTS)
        node.start_workloads(mesh, PORTS, istio=True)
        node.start_workloads(plain, PORTS)

        report.step("4. requests from the client pod: the path each one took")
        expectations = [(shop, 8080, "client -> engine -> app"), (shop, 8081, "client -> app"),
                        (shop, 5555, "client -> engine"), (mesh, 8080, "client -> istio -> engine -> app"),
                        (plain, 8080, "client -> app")]
        replies = node.connect(client.netns, [f"{pod.ip()}:{port}" for pod, port, _ in expectations])
        for pod, port, expected in expectations:
            reply = replies[f"{pod.ip()}:{port}"]
            report.check(f"{pod.name}:{port}", path_of(reply) == expected, f"{path_of(reply)}   ({reply})")

        repairs = [e["verb"] for e in node.journal_entries() if e["verb"] in ("delete", "event")]
        report.check("no validator failure, no repair", not repairs and "microgateway_cni_repairs_total{"
                     not in installer.metrics(), "the gate kept every pod off the node until the plugin was in place")

        report.step("5. failure story: a protected pod started while the plugin is not chained")
        subprocess.run(["ip", "netns", "exec", node.netns, INSTALLER, "uninstall"], env=host.env(),
                       check=True, capture_output=True)
        installer.stop()
        report.info("installer stopped and `microgateway-cni-installer uninstall` run: conflist is bridge only")
        late_fixture = pod_fixture("late", uid="late-uid-1")
        node.add_pod_fixture(late_fixture)
        late = node.new_pod("late", conflist)
        code, verdict, message = validate(node, late)
        report.check("validator refuses unprotected pod", code == 3, f"exit {code}")
        report.info(f"termination message: {message}")
        late_fixture["status"] = _validator_failed_status()  # what the kubelet reports for the init container
        node.add_pod_fixture(late_fixture)
        installer = Daemon(node, host)
        repaired = wait_for(lambda: any(e["verb"] == "delete" and e["pod"] == "default/late"
                                        for e in node.journal_entries()), timeout=20)
        wait_for(lambda: any(e["verb"] == "event" for e in node.journal_entries()), timeout=5)
        events = [e["body"]["reason"] for e in node.journal_entries() if e["verb"] == "event"]
        report.check("installer repairs it", repaired and wait_for(installer.ready, timeout=10),
                     f"re-chained, pod deleted with UID precondition, events: {events}")
        node.cni("del", late, conflist)
        node.remove_netns(late)
        node.add_pod_fixture(pod_fixture("late", uid="late-uid-2"))  # the ReplicaSet recreates it
        late = node.new_pod("late", conflist)
        code, verdict, _ = validate(node, late)
        report.check("recreated pod protected", code == 0, f"exit {code}, {len(node.mgw_rules(late))} MGW_ rules")
        installer.stop()

        if report.verbose:
            report.step("logs (--verbose)")
            report.info("microgateway-cni (JSON lines, logFilePath):")
            for line in node.log_file.read_text().splitlines():
                report.info(f"  {line}")
            report.info("microgateway-cni-installer (JSON lines on stdout):")
            for line in (node.dir / "installer.log").read_text().splitlines()[-15:]:
                report.info(f"  {line}")

        if keep:
            report.step("node kept up (--keep); enter a pod with:")
            for pod in node.pods.values():
                report.info(f"ip netns exec {pod.netns} bash")
            report.info(f"remove everything with: ip netns list | grep mgwt-{node.id} | xargs -n1 ip netns del; "
                        f"rm -rf {node.dir}")
            report.info("(processes started by the demo stop when you press Enter)")
            input()
    finally:
        report.step("6. teardown: pods, namespaces, processes, files")
        node.close()
        left = [ns for ns in os.popen("ip netns list").read().split() if ns.startswith(f"mgwt-{node.id}")]
        stray = os.path.exists(DEFAULT_LOG) and not log_existed
        report.check("nothing left behind", not left and not node.dir.exists() and not stray,
                     f"namespaces left: {left or 'none'}; stray files: {DEFAULT_LOG if stray else 'none'}")
    return report.passed


UNTAINTED = "start-up taint removed: pods may be scheduled to this node"


def untolerated(node: dict, pod: dict) -> list[dict]:
    """The scheduler's taint filter: NoSchedule/NoExecute taints the pod does not tolerate."""
    tolerations = pod["spec"].get("tolerations", [])
    return [t for t in node["spec"].get("taints", [])
            if t["effect"] != "PreferNoSchedule" and not tolerates(tolerations, t)]


def _taints(node: Node) -> str:
    taints = node.api_node()["spec"].get("taints", [])
    return ", ".join(f"{t['key']}:{t['effect']}" for t in taints) or "none"


def _validator_failed_status() -> dict:
    return {"phase": "Pending", "initContainerStatuses": [{
        "name": "airlock-microgateway-network-validator", "image": "microgateway-network-validator", "imageID": "",
        "ready": False, "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 3, "reason": "Error"}}}]}


def _istio_init(node: Node, pod: Pod) -> None:
    """What istio-init does, after every CNI plugin: Istio's REDIRECT-mode rules."""
    subprocess.run(["ip", "netns", "exec", pod.netns, "iptables-legacy-restore", "--noflush"],
                   input=istio_rules(4), text=True, check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="microgateway-cni local node demo (needs root)")
    parser.add_argument("--verbose", action="store_true", help="print each pod's nat rules and the plugin log")
    parser.add_argument("--keep", action="store_true", help="leave the node up for exploring until Enter")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("the demo builds network namespaces and needs root: run bash scripts/demo.sh as root")
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
