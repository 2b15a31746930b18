"""containerd reloading the configuration under a storm: a primary agent rewrites its conflist in a loop
(tests/support/programs/conf_agent.py: atomically, each write waiting for the installer to follow it), the
installer follows every write, and protected and ordinary pods are created meanwhile. Once per
installer mode: chained (our entry written into the agent's file) and ahead (our own copy of it, which
libcni loads first). The installer is a process in the node's network namespace, the pods are made through
CRI directly (tests/support/crinode.py): a protected pod is its validator (the project's image, the init
container whose verdict counts), an ordinary pod one container of the pause image. In neither mode may
containerd ever reload into no configuration: that would fail every pod of the node, ordinary ones too.

For every protected pod the test looks into its netns for our rules (a sandbox set up while containerd held
the agent's document alone has none), then runs its validator. The calm test re-chains 100 times, one
agent write at a time, and asks containerd's CRI Status after each. Mocked: the kube-apiserver (stand-in);
no kubelet: the harness makes the CRI calls. The installer's revert back-off (it stops fighting an agent that
keeps reverting it) is raised out of the way (MGW_REVERT_WARNING_THRESHOLD), so the installer re-chains every
write.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from cni.contract import EXCLUDE_INBOUND_PORTS, INJECT
from daemonset.conflist import AHEAD_NAME
from tests.support import images, report, workloads
from tests.support.cri import CriError
from tests.support.crinode import CriNode, CriPod, PodFailed
from tests.support.node import ROOT
from tests.support.programs import conf_agent

PODS = 20
UNPROTECTED = "UNPROTECTED: validator passed without our rules"
NOT_IN_CHAIN = "not in its chain"
CREATION_FAILED = "creation failed"
ORDINARY_STARTED = "ordinary pod started"
NO_CONFIG = "no network config found"
RECHAINS = 100
PAUSED = {"name": "app", "image": images.PAUSE, "command": ["/bin/sh", "-c", "exec sleep 3600"]}


class Storm(NamedTuple):
    outcomes: collections.Counter[str]
    figures: dict[str, Any]
    logged: list[str]  # containerd's CNI errors
    teardown: list[str]  # teardowns that failed during the storm


def storm(mode: str) -> Storm:
    """PODS protected pods created while the agent rewrites its conflist under an installer in `mode`: the
    report's lines added, the outcomes and the agent's figures returned for the test's assertions."""
    with CriNode() as kube:
        kube.install(MGW_MODE=mode, MGW_REVERT_WARNING_THRESHOLD="100000")
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
        leftover: list[CriPod] = []

        def delete(pod: CriPod) -> None:
            try:
                kube.delete(pod)
            except CriError as error:  # retried once the storm is over
                teardown.append(error.details.split(": ", 1)[-1])
                leftover.append(pod)

        started = time.monotonic()
        try:
            for i in range(PODS):
                outcomes[create_protected(kube, i, delete, failures)] += 1
                outcomes[create_ordinary(kube, i, delete, failures)] += 1
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
    report.add(f"{name}: {PODS} protected and {PODS} ordinary pods in {seconds:.1f} s while the agent rewrote its "
               f"conflist {figures.get('writes by the agent')} times ({figures.get('bursts re-chained')} followed by "
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
    report.add(f"{name}: containerd logged {len(logged)} CNI errors, {no_config(logged)} of them \"{NO_CONFIG}\""
               + "".join(f"\n  {line}" for line in logged[:5]))
    return Storm(outcomes, figures, logged, teardown)


def create_protected(kube: CriNode, i: int, delete: Callable[[CriPod], None], failures: list[str]) -> str:
    """Create protected pod `i`, look for our rules in it, delete it: its outcome."""
    try:
        pod = kube.create(workloads.pod(f"storm-{i}", [], init=[workloads.validator(images.project_image())],
                                        labels={INJECT: "true"}, annotations={EXCLUDE_INBOUND_PORTS: "8081"}))
    except PodFailed as refused:
        chained = bool(kube.our_rules(refused.pod))
        delete(refused.pod)
        return f"refused by its validator (exit {refused.code}), our plugin {'ran' if chained else NOT_IN_CHAIN}"
    except CriError as error:
        failures.append(error.details)
        return CREATION_FAILED
    outcome = "protected" if kube.our_rules(pod) else UNPROTECTED
    delete(pod)
    return outcome


def create_ordinary(kube: CriNode, i: int, delete: Callable[[CriPod], None], failures: list[str]) -> str:
    """Create ordinary pod `i` and delete it: whether it started."""
    try:
        pod = kube.create(workloads.pod(f"storm-ordinary-{i}", [PAUSED]))
    except CriError as error:
        failures.append(error.details)
        return f"ordinary {CREATION_FAILED}"
    except PodFailed as failed:
        failures.append(f"{failed.container} exited {failed.code}")
        delete(failed.pod)
        return f"ordinary {CREATION_FAILED}"
    delete(pod)
    return ORDINARY_STARTED


def no_config(logged: list[str]) -> int:
    return sum(NO_CONFIG in line for line in logged)


def assert_the_node_kept_its_configuration(result: Storm) -> None:
    """No reload into nothing, so no creation or teardown failed and every ordinary pod started."""
    assert no_config(result.logged) == 0, result.logged[:5]
    assert result.teardown == [], result.teardown
    assert not [o for o in result.outcomes if CREATION_FAILED in o], result.outcomes
    assert result.outcomes[ORDINARY_STARTED] == PODS, result.outcomes


def without_plugin(outcomes: collections.Counter[str]) -> int:
    return sum(count for outcome, count in outcomes.items() if outcome == UNPROTECTED or NOT_IN_CHAIN in outcome)


def test_chained_mode_pods_created_while_the_primary_rewrites_its_conflist_are_never_unprotected() -> None:
    """Chained: containerd may load the agent's document before the installer re-chains it; the validator
    must refuse such a pod."""
    result = storm("chained")
    assert UNPROTECTED not in result.outcomes, result.outcomes
    assert sum(result.outcomes.values()) == 2 * PODS
    assert result.figures.get("lost") == 0 and result.figures.get("absent") == 0, result.figures
    assert_the_node_kept_its_configuration(result)


def test_ahead_mode_pods_created_while_the_primary_rewrites_its_conflist_all_have_our_plugin() -> None:
    """Ahead: the file containerd loads first is only ever replaced by rename with our entry in it, so no
    pod is set up without our plugin, and no creation fails for want of a configuration."""
    result = storm("ahead")
    assert without_plugin(result.outcomes) == 0, result.outcomes
    assert sum(result.outcomes.values()) == 2 * PODS
    assert_the_node_kept_its_configuration(result)
    assert result.figures.get("lost") == 0, result.figures
    writes = result.figures.get("writes by the agent")
    assert result.figures.get("bursts re-chained") == writes and result.figures.get("bursts not re-chained") == 0, \
        result.figures


def test_chained_mode_calm_rechains_never_leave_containerd_without_a_configuration() -> None:
    """RECHAINS times: the agent rewrites its conflist (our entry out), the installer puts our entry back;
    then containerd's CRI Status must say NetworkReady, and its log must hold no failed reload."""
    with CriNode() as kube:
        kube.install(MGW_REVERT_WARNING_THRESHOLD="100000")
        base = json.loads(kube.primary_text)
        not_ready: list[int] = []
        started = time.monotonic()
        for gen in range(1, RECHAINS + 1):
            conf_agent.write_atomic(kube.primary, conf_agent.with_generation(base, gen))
            deadline = time.monotonic() + 10
            while not rechained(kube, gen):
                assert time.monotonic() < deadline, f"the installer did not re-chain generation {gen}"
                time.sleep(0.005)
            if not kube.runtime.status().get("NetworkReady"):
                not_ready.append(gen)
        seconds = time.monotonic() - started
        assert kube.containerd is not None
        reloads = [line for line in kube.containerd.errors() if "reload cni configuration" in line]
    report.add(f"calm (chained): {RECHAINS} re-chains, each after an agent write, in {seconds:.1f} s: containerd "
               f"logged {len(reloads)} failed reloads; CRI Status NetworkReady=false after {len(not_ready)}")
    assert reloads == [] and not_ready == [], (reloads[:5], not_ready)


def rechained(kube: CriNode, gen: int) -> bool:
    """The agent's document of generation `gen` with our entry back in it."""
    try:
        document = json.loads(kube.primary.read_text())
    except (FileNotFoundError, ValueError):
        return False
    return conf_agent.generation(document) == gen and conf_agent.chained(document)
