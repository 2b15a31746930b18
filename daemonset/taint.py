"""The start-up taint gate: lift this node's not-ready taint once the plugin can protect pods.

A node registers with the taint (docs/design.md, "Start-up taint"), so the scheduler places no pod on
it before the installer has put the plugin in place: otherwise a protected pod would start without
rules, fail its validator and be repaired. The installer only ever removes the taint, and only on its
own node; the node's registration adds it again on the next boot.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from daemonset.api import FIRST_BACKOFF_SECONDS, certificate_rejection, describe_api_error, next_backoff
from daemonset.binaries import verify_plugin
from daemonset.clock import Clock, SystemClock

PATCH_ATTEMPTS = 5
# 409 never gets here: lift() re-reads on it and, past PATCH_ATTEMPTS, raises StillConflicting.
FAILURE_REASONS = {401: "unauthorized", 403: "forbidden", 404: "node_not_found", 422: "invalid"}


class NotRunnable(RuntimeError):
    """The installed plugin does not answer CNI VERSION: a pod sandbox would fail, so keep the taint."""


class StillConflicting(RuntimeError):
    """Others kept changing the node between our read and our write."""


def failure_reason(exc: BaseException, ca_path: str) -> tuple[str, str]:
    """A bounded metric label and the detail to log (the API's own message where it sent one)."""
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException):
        try:
            detail = json.loads(exc.body or "{}").get("message") or exc.reason
        except (ValueError, AttributeError):
            detail = exc.reason
        status = exc.status or 0
        return FAILURE_REASONS.get(status, "api_error" if status >= 500 else f"http_{status}"), f"{status}: {detail}"
    if isinstance(exc, NotRunnable):
        return "plugin_not_runnable", str(exc)
    if isinstance(exc, StillConflicting):
        return "conflict", str(exc)
    reason = "unreachable" if certificate_rejection(exc) is None else "certificate_rejected"
    return reason, describe_api_error(exc, ca_path)


class TaintGate:
    """Remove exactly one taint key from one node, once, with a resourceVersion precondition."""

    def __init__(self, api: Any, node_name: str, key: str, log: Callable[..., None],
                 on_failure: Callable[[str], None] = lambda reason: None,
                 on_open: Callable[[float], None] = lambda seconds: None, clock: Clock | None = None) -> None:
        self.api = api
        self.node_name = node_name
        self.key = key
        self.log = log
        self.on_failure = on_failure
        self.on_open = on_open
        self.clock = clock or SystemClock()
        self.started = self.clock.monotonic()
        self.open = not key  # an empty key turns the gate off
        self._recheck = threading.Event()
        self._closed = False
        self._core_api: Any = None

    def recheck(self) -> None:
        """A reconcile has finished: wake run() to look at readiness again."""
        self._recheck.set()

    def close(self) -> None:
        """The installer is stopping: a run() waiting for readiness returns."""
        self._closed = True
        self._recheck.set()

    def _core(self) -> Any:
        """The API client's core calls; they load slowly, so run() loads them before it waits for readiness."""
        if self._core_api is None:
            from kubernetes import client

            self._core_api = client.CoreV1Api(self.api)
        return self._core_api

    def lift(self) -> str:
        """One attempt: read the node, drop our key, write with the read resourceVersion; re-read on 409.

        A merge patch replaces the whole taint list, so the precondition is what keeps a taint someone
        added or changed between our read and our write: the API refuses the stale write and we re-read.
        """
        from kubernetes.client.exceptions import ApiException

        for _ in range(PATCH_ATTEMPTS):
            # Raw JSON, not the client's model: others' taints go back exactly as read, fields unknown to
            # this client version included.
            node = json.loads(self._core().read_node(self.node_name, _preload_content=False).data)
            version = node["metadata"]["resourceVersion"]
            taints = (node.get("spec") or {}).get("taints") or []
            keep = [t for t in taints if t.get("key") != self.key]
            if len(keep) == len(taints):
                return "absent"
            body = {"metadata": {"resourceVersion": version}, "spec": {"taints": keep}}
            try:
                self._core().patch_node(self.node_name, body, _content_type="application/merge-patch+json")
            except ApiException as exc:
                if exc.status != 409:
                    raise
                self.log("info", "node changed since it was read; reading it again", node=self.node_name,
                         resource_version=version)
                continue
            return "removed"
        raise StillConflicting(f"node {self.node_name} changed on each of {PATCH_ATTEMPTS} attempts")

    def run(self, ready: Callable[[], bool], plugin: str) -> None:
        """Wait until `ready()`, check once that the installed plugin runs, then lift the taint; back off on
        failure (an API failure does not run the plugin again).

        Readiness is looked at again after each reconcile (recheck()), never by polling. Returns once the
        gate is open, on close(), or when a back-off pause ends because the installer is stopping.
        """
        if self.open:
            return
        self._core()
        self.log("debug", "waiting until the plugin is in place to lift the start-up taint", node=self.node_name,
                 taint=self.key)
        backoff = FIRST_BACKOFF_SECONDS
        verified = False
        while not self.open:
            if not ready():
                self._recheck.wait()
                self._recheck.clear()
                if self._closed:
                    return
                continue
            try:
                if not verified and (problem := verify_plugin(plugin)):
                    raise NotRunnable(problem)
                verified = True
                outcome = self.lift()
            except Exception as exc:
                reason, detail = failure_reason(exc, self.api.configuration.ssl_ca_cert)
                self.on_failure(reason)
                self.log("warn", "cannot remove the start-up taint; retrying", node=self.node_name, taint=self.key,
                         reason=reason, error=detail, backoff=backoff)
                if self.clock.sleep(backoff):
                    return
                backoff = next_backoff(backoff)
                continue
            seconds = self.clock.monotonic() - self.started
            self.open = True
            self.on_open(seconds)
            if outcome == "removed":
                self.log("info", "start-up taint removed: pods may be scheduled to this node", node=self.node_name,
                         taint=self.key, seconds=round(seconds, 3))
            else:
                self.log("info", "node carries no start-up taint (lifted before, or not registered with it)",
                         node=self.node_name, taint=self.key)
