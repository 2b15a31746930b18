"""containerd reloading the configuration under a storm: a primary agent rewrites its conflist in a loop
(tests/support/programs/conf_agent.py: atomically, each write waiting for the installer's re-chain), the
installer container re-chains every write, and protected pods are created meanwhile.

For every pod the test looks into its netns for our rules (a sandbox set up while containerd held the
agent's document alone has none), then runs its validator. Mocked: the kube-apiserver (stand-in) and the
kubelet's part (the harness's CRI calls). The installer's revert back-off (it stops fighting an agent that
keeps reverting it) is raised out of the way through the ConfigMap, so the installer re-chains every write.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import time

from tests.support import images, report, workloads
from tests.support.cri import CriError
from tests.support.kubelet import PodFailed
from tests.support.kubenode import KubeNode
from tests.support.node import ROOT

PODS = 20


def test_pods_created_while_the_primary_rewrites_its_conflist_are_never_unprotected():
    with KubeNode() as kube:
        kube.install(settings={"MGW_REVERT_WARNING_THRESHOLD": "100000"})
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
        teardown: list[str] = []
        leftover = []

        def delete(pod):
            try:
                kube.delete(pod)
            except CriError as error:  # retried once the storm is over
                teardown.append(error.details.split(": ", 1)[-1])
                leftover.append(pod)

        started = time.monotonic()
        try:
            for i in range(PODS):
                try:
                    pod = kube.create(workloads.protected(f"storm-{i}", images.project_image()))
                except PodFailed as refused:
                    chained = bool(kube.our_rules(refused.pod))
                    outcomes[f"refused by its validator (exit {refused.code}), our plugin "
                             f"{'ran' if chained else 'not in its chain'}"] += 1
                    delete(refused.pod)
                    continue
                except CriError as error:
                    outcomes["creation failed"] += 1
                    failures.append(error.details)
                    continue
                chained = bool(kube.our_rules(pod))
                outcomes["protected" if chained else "UNPROTECTED: validator passed without our rules"] += 1
                delete(pod)
        finally:
            stop.touch()
            out, err = agent.communicate(timeout=60)
        for pod in leftover:
            kube.delete(pod)
        seconds = time.monotonic() - started
        figures = json.loads(out.splitlines()[-1]) if out.strip() else {"agent error": err}
        logged = [line for line in kube.containerd.errors() if "cni" in line.lower()]  # type: ignore[union-attr]
        report.add(f"storm: {PODS} protected pods in {seconds:.1f} s while the agent rewrote its conflist "
              f"{figures.get('writes by the agent')} times ({figures.get('bursts re-chained')} re-chained by the "
              f"installer, {figures.get('lost')} updates lost, file absent on {figures.get('absent')} reads)")
        for outcome, count in sorted(outcomes.items()):
            report.add(f"storm: {count:3} {outcome}")
        for reason, count in collections.Counter(failures).most_common(5):
            report.add(f"storm: creation failed x{count}: {reason}")
        for reason, count in collections.Counter(teardown).most_common(5):
            report.add(f"storm: teardown failed x{count} (retried after the storm: removed): {reason}")
        report.add(f"storm: containerd logged {len(logged)} CNI errors" + "".join(f"\n  {line}" for line in logged[:5]))
        assert not [o for o in outcomes if o.startswith("UNPROTECTED")], outcomes
        assert sum(outcomes.values()) == PODS
        assert figures.get("lost") == 0, figures
