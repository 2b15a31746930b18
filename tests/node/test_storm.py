"""containerd reloading the configuration under a storm: a primary agent rewrites its conflist in a loop
(tests/support/programs/conf_agent.py, atomically, each write waiting for the installer's re-chain), the
installer container re-chains every write, and pods are created meanwhile.

For every pod the test looks into its netns for our rules: a pod whose sandbox started while containerd
held the agent's document alone would have none. Mocked: the kube-apiserver (stand-in) and the kubelet's
part (the harness's CRI calls). The report prints what happened; the assertion is the one that matters
for safety: no pod without our plugin in its chain.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import time

from tests.support import images, workloads
from tests.support.cri import CriError
from tests.support.kubenode import KubeNode
from tests.support.node import ROOT

PODS = 40


def test_pods_created_while_the_primary_rewrites_its_conflist_all_get_our_plugin():
    with KubeNode() as kube:
        kube.install()
        base = kube.node.dir / "primary-base.conflist"
        base.write_text(kube.primary_text)
        stop = kube.node.dir / "stop-agent"
        agent = subprocess.Popen([sys.executable, "-m", "tests.support.programs.conf_agent", "agent",
                                  "--path", str(kube.primary), "--base", str(base), "--until", str(stop),
                                  "--burst", "1"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
        kube.node.processes.append(agent)
        outcomes: collections.Counter[str] = collections.Counter()
        failures: list[str] = []
        started = time.monotonic()
        try:
            for i in range(PODS):
                plan = kube.plan(workloads.annotated(f"storm-{i}", images.project_image()))
                plan.sandbox.setdefault("linux", {})["cgroup_parent"] = kube.cgroup_parent
                try:
                    sandbox = kube.runtime.run_pod_sandbox(plan.sandbox)
                except CriError as error:
                    outcomes["creation failed"] += 1
                    failures.append(error.details)
                    continue
                pid = kube.runtime.pod_sandbox_status(sandbox, verbose=True)["info"]["info"]["pid"]
                rules = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "--", "iptables-legacy-save"],
                                       capture_output=True, text=True).stdout + subprocess.run(
                    ["nsenter", f"--net=/proc/{pid}/ns/net", "--", "nft", "list", "table", "ip", "microgateway"],
                    capture_output=True, text=True).stdout
                outcomes["protected" if "MGW_" in rules else "without our plugin"] += 1
                kube.runtime.stop_pod_sandbox(sandbox)
                kube.runtime.remove_pod_sandbox(sandbox)
        finally:
            stop.touch()
            out, err = agent.communicate(timeout=60)
        seconds = time.monotonic() - started
        figures = json.loads(out.splitlines()[-1]) if out.strip() else {"agent error": err}
        logged = [line for line in kube.containerd.errors() if "cni" in line.lower()]  # type: ignore[union-attr]
        print(f"storm: {PODS} pods in {seconds:.1f} s while the agent wrote {figures.get('writes by the agent')} "
              f"times ({figures.get('bursts re-chained')} re-chained by the installer, "
              f"{figures.get('lost')} lost updates)")
        print(f"storm: pods protected {outcomes['protected']}, without our plugin {outcomes['without our plugin']}, "
              f"creation failed {outcomes['creation failed']}")
        for reason, count in collections.Counter(failures).most_common(5):
            print(f"storm: failed x{count}: {reason}")
        print(f"storm: containerd logged {len(logged)} CNI errors" + "".join(f"\n  {line}" for line in logged[:5]))
        assert outcomes["without our plugin"] == 0
        assert outcomes["protected"] + outcomes["creation failed"] == PODS
        assert figures.get("lost") == 0, figures
