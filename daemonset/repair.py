"""Repair pods that started before the plugin was in place: their validator exited 3 (docs/design.md,
"Lessons")."""

from __future__ import annotations

import datetime
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from cni.contract import ANNOTATION_PREFIX, EXIT_NOT_REDIRECTED, PLUGIN_TYPE, VALIDATOR_CONTAINER
from cni.policy import is_protected
from daemonset.api import FIRST_BACKOFF_SECONDS, next_backoff

REPAIR_LABEL = ANNOTATION_PREFIX + "network-validation"
QUEUE_LIMIT = 1000


def needs_repair(pod: dict[str, Any]) -> bool:
    """A protected pod whose validator init container last terminated with exit 3. Pure."""
    metadata = pod.get("metadata") or {}
    protected = is_protected(metadata.get("labels") or {}, metadata.get("annotations") or {})
    if not protected or metadata.get("deletionTimestamp"):
        return False
    for status in (pod.get("status") or {}).get("initContainerStatuses") or []:
        if status.get("name") != VALIDATOR_CONTAINER:
            continue
        for state in (status.get("state") or {}, status.get("lastState") or {}):
            terminated = state.get("terminated") or {}
            if terminated.get("exitCode") == EXIT_NOT_REDIRECTED:
                return True
    return False


class Repairer:
    """Watch this node's pods; act once per pod UID through a bounded queue with retries."""

    def __init__(self, api: Any, node_name: str, mode: str, log: Callable[..., None],
                 count: Callable[[str], None]) -> None:
        self.api = api
        self.node_name = node_name
        self.mode = mode
        self.log = log
        self.count = count
        self.seen: set[str] = set()
        self.queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=QUEUE_LIMIT)

    def offer(self, pod: dict[str, Any]) -> None:
        uid = (pod.get("metadata") or {}).get("uid", "")
        if self.mode == "none" or not uid or uid in self.seen or not needs_repair(pod):
            return
        try:
            self.queue.put_nowait(pod)
        except queue.Full:
            self.log("warn", "repair queue full; pod will be seen again on the next watch", uid=uid)
            return
        self.seen.add(uid)

    def mutate(self, pod: dict[str, Any]) -> None:
        """Delete (with the UID as precondition, so a recreated pod of the same name is safe) or label."""
        from kubernetes import client

        meta = pod["metadata"]
        core = client.CoreV1Api(self.api)
        if self.mode == "deletePods":
            core.delete_namespaced_pod(meta["name"], meta["namespace"], body=client.V1DeleteOptions(
                preconditions=client.V1Preconditions(uid=meta["uid"])))
        else:
            patch = {"metadata": {"labels": {REPAIR_LABEL: "failed"}}}
            core.patch_namespaced_pod(meta["name"], meta["namespace"], patch)
        self.log("info", "pod repaired", pod=f"{meta['namespace']}/{meta['name']}", uid=meta["uid"], mode=self.mode)

    def record_event(self, pod: dict[str, Any]) -> None:
        from kubernetes import client

        meta = pod["metadata"]
        name, namespace = meta["name"], meta["namespace"]
        if self.mode == "deletePods":
            message = ("Deleted by microgateway-cni: the network validator found no redirection to the Engine "
                       "(the pod started before microgateway-cni was ready on this node); it will be recreated "
                       "protected.")
        else:
            message = "Marked by microgateway-cni: the network validator found no redirection to the Engine."
        now = datetime.datetime.now(datetime.UTC)
        client.CoreV1Api(self.api).create_namespaced_event(namespace, client.CoreV1Event(
            metadata=client.V1ObjectMeta(name=f"{name}.{uuid.uuid4().hex[:10]}", namespace=namespace),
            involved_object=client.V1ObjectReference(kind="Pod", name=name, namespace=namespace, uid=meta["uid"],
                                                     api_version="v1"),
            reason="MicrogatewayNetworkValidationFailed", message=message, type="Warning",
            source=client.V1EventSource(component=PLUGIN_TYPE, host=self.node_name),
            first_timestamp=now, last_timestamp=now, count=1))

    def work(self, stop: threading.Event) -> None:
        """Each step is retried with backoff on its own; a step that succeeded is never repeated."""
        from kubernetes.client.exceptions import ApiException

        while not stop.is_set():
            try:
                pod = self.queue.get(timeout=0.5)
            except queue.Empty:
                continue
            steps = [self.mutate, self.record_event]
            backoff = FIRST_BACKOFF_SECONDS
            for _ in range(8):
                try:
                    while steps:
                        steps[0](pod)
                        steps.pop(0)
                    self.count("success")
                    break
                except ApiException as exc:
                    if exc.status in (404, 409) and steps[0] == self.mutate:
                        self.count("skipped")  # gone already, or a new pod under that name
                        break
                    self.log("warn", "repair step failed; retrying", step=steps[0].__name__, status=exc.status)
                except Exception as exc:
                    self.log("warn", "repair step failed; retrying", step=steps[0].__name__, error=str(exc))
                if stop.wait(backoff):
                    return
                backoff = next_backoff(backoff)
            else:
                self.count("failure")

    def watch(self, stop: threading.Event) -> None:
        from kubernetes import client, watch

        core = client.CoreV1Api(self.api)
        selector = f"spec.nodeName={self.node_name}"
        backoff = FIRST_BACKOFF_SECONDS
        while not stop.is_set():
            try:
                for event in watch.Watch().stream(core.list_pod_for_all_namespaces, field_selector=selector,
                                                  timeout_seconds=30):
                    self.offer(self.api.sanitize_for_serialization(event["object"]))
                    if stop.is_set():
                        return
                backoff = FIRST_BACKOFF_SECONDS
            except Exception as exc:
                self.log("warn", "pod watch failed; retrying", error=str(exc), backoff=backoff)
                if stop.wait(backoff):
                    return
                backoff = next_backoff(backoff)
            else:
                time.sleep(0.05)
