"""The installer's edge to the kube-apiserver: an authenticated client, whether our DaemonSet is being
deleted, and errors worth a clear word."""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from typing import Any

from daemonset.settings import Settings

# Every API retry of the installer (taint gate, pod repair) waits FIRST_BACKOFF_SECONDS, then doubles.
FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0


def next_backoff(seconds: float) -> float:
    return min(seconds * 2, MAX_BACKOFF_SECONDS)


def certificate_rejection(exc: BaseException) -> str | None:
    """Why TLS verification refused the API server, found anywhere in the exception's causes; else None.

    urllib3 wraps the ssl error several layers deep, and a refused certificate must be named as such
    rather than as an unreachable server."""
    cause: object = exc
    seen: set[int] = set()
    while isinstance(cause, BaseException) and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ssl.SSLCertVerificationError):
            return str(cause.verify_message)
        cause = cause.__cause__ or cause.__context__ or getattr(cause, "reason", None)
    return None


def api_client(settings: Settings) -> Any:
    """The official client, authenticated with the (rotating) projected service-account token."""
    from kubernetes import client

    sa = settings.service_account_dir
    config = client.Configuration()
    config.host = settings.api_server
    config.verify_ssl = True  # the API server's certificate must chain to the service account's CA
    config.ssl_ca_cert = os.path.join(sa, "ca.crt")

    def refresh(cfg: Any) -> None:
        with open(os.path.join(sa, "token")) as f:
            cfg.api_key["authorization"] = f.read().strip()

    config.api_key_prefix["authorization"] = "Bearer"
    config.refresh_api_key_hook = refresh
    refresh(config)
    return client.ApiClient(config)


def describe_api_error(exc: BaseException, ca_path: str) -> str:
    """The reason for a failed API call; a certificate that does not chain to our CA says so plainly."""
    rejection = certificate_rejection(exc)
    if rejection is not None:
        return f"API server certificate rejected: {rejection} (verified against {ca_path})"
    return f"{type(exc).__name__}: {exc}"


# Answers to reading our own DaemonSet on SIGTERM that mean the installation is being removed, and why: an
# uninstall deletes the DaemonSet, its ServiceAccount and its RBAC together (kubectl delete -k removes the
# ServiceAccount and RBAC first, helm uninstall the DaemonSet first), so by the time the kubelet stops this pod
# the API may answer for any of them (docs/design.md, "The cluster tier: the API server").
REMOVED = {
    404: "our DaemonSet is gone",
    401: "the API no longer accepts our service-account token: its ServiceAccount was deleted",
    403: "the API no longer lets our service account read its DaemonSet: its RBAC was deleted",
}


def daemonset_deleted(api: Any, settings: Settings, log: Callable[..., None]) -> bool:
    """True when the API says our DaemonSet is gone or going, or refuses our own service account (REMOVED).

    A plugin whose service account the API refuses cannot read a pod either, so it would fail nearly every pod's
    ADD on this node: keeping it would break the node, not protect it. Only an API that cannot answer
    (unreachable, 5xx, a certificate not of our CA) keeps the plugin installed."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        ds = client.AppsV1Api(api).read_namespaced_daemon_set(settings.daemonset_name, settings.namespace)
    except Exception as exc:
        if isinstance(exc, ApiException) and exc.status in REMOVED:
            log("info", "uninstalling: " + REMOVED[exc.status], status=exc.status)
            return True
        log("warn", "cannot tell whether the DaemonSet is being deleted; leaving the plugin installed",
            error=describe_api_error(exc, api.configuration.ssl_ca_cert))
        return False
    return ds.metadata.deletion_timestamp is not None
