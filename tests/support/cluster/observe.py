"""What the one-node cluster did with the pods a test created: each pod's fate (started, refused by its
validator, or neither, and why) and the plugin's own log lines about it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, NamedTuple

from cni.contract import VALIDATOR_CONTAINER
from tests.support.cluster.cluster import Cluster, for_api, validator_exit


def plugin_statuses(cluster: Cluster) -> list[dict[str, Any]]:
    """The STATUS lines of the plugin's own log (/var/log/microgateway-cni.log on the node)."""
    return [line for line in cluster.plugin_log() if line.get("command") == "STATUS"]


class Fate(NamedTuple):
    """What became of one pod: started (Ready), refused by its validator, or neither within the time given."""

    kind: str  # "starts", "validator", "not started"
    text: str  # the table's cell
    seconds: float  # from `kubectl create` to the fate
    pod: str  # namespace/name


def _validator(pod: dict[str, Any]) -> int | None:
    if not any(c["name"] == VALIDATOR_CONTAINER for c in pod["spec"].get("initContainers", [])):
        return None
    if not any(s["name"] == VALIDATOR_CONTAINER for s in pod["status"].get("initContainerStatuses", [])):
        return None
    return validator_exit(pod)


def _app_ran(pod: dict[str, Any]) -> bool:
    """Whether any of the pod's (non-init) containers ever ran."""
    return any("running" in s["state"] or "terminated" in s["state"] or s.get("lastState")
               for s in pod["status"].get("containerStatuses", []))


def _ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))


def why_not_started(cluster: Cluster, pod: dict[str, Any]) -> str:
    """The scheduler's reason if unscheduled, else the kubelet's last sandbox failure and our ADD's code."""
    meta = pod["metadata"]
    conditions = pod["status"].get("conditions", [])
    scheduled: dict[str, Any] = next((c for c in conditions if c["type"] == "PodScheduled"), {})
    if scheduled.get("status") == "False":
        return f"Pending, unscheduled: {scheduled.get('message', '').split('. preemption:')[0]}"
    events = cluster.get("events", "-n", meta["namespace"], "--field-selector",
                         f"involvedObject.name={meta['name']},reason=FailedCreatePodSandBox")["items"]
    codes = [line.get("code") for line in cluster.plugin_log()
             if line.get("pod") == f"{meta['namespace']}/{meta['name']}" and line.get("command") == "ADD"
             and line["level"] == "error"]
    if codes:
        return f"ADD fails, code {codes[-1]} ({len(codes)} tries)"
    if events:
        return f"sandbox fails: {events[-1]['message'][:90]}"
    return f"{pod['status'].get('phase')}, no sandbox failure"


def pod_fates(cluster: Cluster, tag: str, manifests: dict[str, dict[str, Any]],
              seconds: float) -> dict[str, Fate]:
    """Create the pods at once and watch them until each starts or is refused by its validator, or seconds
    pass; the pods are deleted afterwards."""
    for manifest in manifests.values():
        manifest["metadata"]["labels"]["mgw-test/status"] = tag
        cluster.create(for_api(manifest))
    began = time.monotonic()
    fates: dict[str, Fate] = {}
    try:
        while True:
            pods = {f"{p['metadata']['namespace']}/{p['metadata']['name']}": p
                    for p in cluster.get("pods", "-A", "-l", f"mgw-test/status={tag}")["items"]}
            elapsed = time.monotonic() - began
            for column, manifest in manifests.items():
                name = f"{manifest['metadata']['namespace']}/{manifest['metadata']['name']}"
                pod = pods[name]
                if column in fates:
                    continue
                verdict = _validator(pod)
                if _ready(pod):
                    text = "starts" if verdict is None else f"starts, validator exit {verdict}"
                    fates[column] = Fate("starts", text, elapsed, name)
                elif verdict is not None and verdict != 0:
                    ran = "its app ran" if _app_ran(pod) else "app never ran"
                    fates[column] = Fate("validator", f"refused by its validator (exit {verdict}), {ran}", elapsed,
                                         name)
            if len(fates) == len(manifests):
                return fates
            if elapsed > seconds:
                for column, manifest in manifests.items():
                    if column not in fates:
                        name = f"{manifest['metadata']['namespace']}/{manifest['metadata']['name']}"
                        fates[column] = Fate("not started", why_not_started(cluster, pods[name]), elapsed, name)
                return fates
            time.sleep(1)
    finally:
        for namespace in ("default", "kube-system"):
            cluster.kubectl("delete", "pods", "-n", namespace, "-l", f"mgw-test/status={tag}", "--wait=true",
                            "--timeout=90s", timeout=120)


def add_lines(cluster: Cluster, pod: str) -> list[dict[str, Any]]:
    """The plugin's ADD lines for the pod (namespace/name)."""
    return [line for line in cluster.plugin_log() if line.get("pod") == pod and line.get("command") == "ADD"]


def pass_through_warnings(cluster: Cluster, pod: str) -> list[str]:
    """The reasons of the warnings with which ADD passed the pod through."""
    return [str(line.get("reason", "")) for line in add_lines(cluster, pod)
            if line["level"] in ("warn", "warning") and "passed through" in line["msg"]]


def configured_from(cluster: Cluster, pod: str) -> list[str]:
    """The sources ("runtime", "api") of the pod's "redirection configured" lines."""
    return [line.get("source", "") for line in add_lines(cluster, pod) if line["msg"] == "redirection configured"]


class KubeconfigAltered:
    """The plugin's kubeconfig removed, or replaced by text that does not parse, while the block runs."""

    def __init__(self, path: Path, text: str | None) -> None:
        self.path, self.text = path, text
        self.saved, self.mode = self.path.read_bytes(), self.path.stat().st_mode

    def __enter__(self) -> None:
        if self.text is None:
            self.path.unlink()
        else:
            self.path.write_text(self.text)

    def __exit__(self, *exc: object) -> None:
        self.path.write_bytes(self.saved)
        self.path.chmod(self.mode)
