"""containerd reloading the configuration under a storm: a primary agent rewrites its conflist in a loop
(tests/support/programs/conf_agent.py: atomically, each write waiting for the installer to follow it), the
installer container follows every write, and protected pods are created meanwhile. Once per installer mode:
chained (our entry written into the agent's file) and ahead (our own copy of it, which libcni loads first).

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
from typing import Any, NamedTuple

from daemonset.conflist import AHEAD_NAME
from tests.support import images, report, workloads
from tests.support.cri import CriError
from tests.support.kubelet import PodFailed, RunningPod
from tests.support.kubenode import KubeNode
from tests.support.node import ROOT

PODS = 20
UNPROTECTED = "UNPROTECTED: validator passed without our rules"
NOT_IN_CHAIN = "not in its chain"
CREATION_FAILED = "creation failed"


class Storm(NamedTuple):
    outcomes: collections.Counter[str]
    figures: dict[str, Any]


def storm(mode: str) -> Storm:
    """PODS protected pods created while the agent rewrites its conflist under an installer in `mode`: the
    report's lines added, the outcomes and the agent's figures returned for the test's assertions."""
    with KubeNode() as kube:
        kube.install(settings={"MGW_MODE": mode, "MGW_REVERT_WARNING_THRESHOLD": "100000"})
        copy = kube.node.conf_dir / AHEAD_NAME
        if mode == "ahead":
            assert kube.primary.read_text() == kube.primary_text, "ahead mode wrote the primary's file"
            assert copy.exists(), f"ahead mode made no {AHEAD_NAME}"
        base = kube.node.dir / "primary-base.conflist"
        base.write_text(kube.primary_text)
        stop = kube.node.dir / "stop-agent"
        agent = subprocess.Popen([sys.executable, "-m", "tests.support.programs.conf_agent", "agent",
                                  "--path", str(kube.primary), "--base", str(base), "--until", str(stop),
                                  "--burst", "1", *(["--copy", str(copy)] if mode == "ahead" else [])],
                                 cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        kube.node.processes.append(agent)
        outcomes: collections.Counter[str] = collections.Counter()
        failures: list[str] = []
        teardown: list[str] = []
        leftover: list[RunningPod] = []

        def delete(pod: RunningPod) -> None:
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
                             f"{'ran' if chained else NOT_IN_CHAIN}"] += 1
                    delete(refused.pod)
                    continue
                except CriError as error:
                    outcomes[CREATION_FAILED] += 1
                    failures.append(error.details)
                    continue
                outcomes["protected" if kube.our_rules(pod) else UNPROTECTED] += 1
                delete(pod)
        finally:
            stop.touch()
            out, err = agent.communicate(timeout=60)
        for pod in leftover:
            kube.delete(pod)
        seconds = time.monotonic() - started
        figures = json.loads(out.splitlines()[-1]) if out.strip() else {"agent error": err}
        logged = [line for line in kube.containerd.errors() if "cni" in line.lower()]  # type: ignore[union-attr]
    follower = "the installer's copy" if mode == "ahead" else "the installer"
    name = f"storm ({mode})"
    report.add(f"{name}: {PODS} protected pods in {seconds:.1f} s while the agent rewrote its conflist "
               f"{figures.get('writes by the agent')} times ({figures.get('bursts re-chained')} followed by "
               f"{follower}, {figures.get('bursts not re-chained')} not; {figures.get('lost')} updates lost; "
               f"agent's file absent on {figures.get('absent')} reads"
               + (f", copy absent on {figures.get('copy absent')} reads" if mode == "ahead" else "") + ")")
    report.add(f"{name}: {without_plugin(outcomes):3} pods created without our plugin in their chain")
    for outcome, count in sorted(outcomes.items()):
        report.add(f"{name}: {count:3} {outcome}")
    for reason, count in collections.Counter(failures).most_common(5):
        report.add(f"{name}: creation failed x{count}: {reason}")
    for reason, count in collections.Counter(teardown).most_common(5):
        report.add(f"{name}: teardown failed x{count} (retried after the storm: removed): {reason}")
    report.add(f"{name}: containerd logged {len(logged)} CNI errors" + "".join(f"\n  {line}" for line in logged[:5]))
    return Storm(outcomes, figures)


def without_plugin(outcomes: collections.Counter[str]) -> int:
    return sum(count for outcome, count in outcomes.items() if outcome == UNPROTECTED or NOT_IN_CHAIN in outcome)


def test_chained_mode_pods_created_while_the_primary_rewrites_its_conflist_are_never_unprotected() -> None:
    """Chained: containerd may load the agent's document before the installer re-chains it; the validator
    must refuse such a pod."""
    result = storm("chained")
    assert UNPROTECTED not in result.outcomes, result.outcomes
    assert sum(result.outcomes.values()) == PODS
    assert result.figures.get("lost") == 0, result.figures


def test_ahead_mode_pods_created_while_the_primary_rewrites_its_conflist_all_have_our_plugin() -> None:
    """Ahead: the file containerd loads first is only ever replaced by rename with our entry in it, so no
    pod is set up without our plugin, and no creation fails for want of a configuration."""
    result = storm("ahead")
    assert without_plugin(result.outcomes) == 0, result.outcomes
    assert result.outcomes[CREATION_FAILED] == 0, result.outcomes
    assert sum(result.outcomes.values()) == PODS
    assert result.figures.get("lost") == 0, result.figures
    writes = result.figures.get("writes by the agent")
    assert result.figures.get("bursts re-chained") == writes and result.figures.get("bursts not re-chained") == 0, \
        result.figures
