"""On SIGTERM the installer uninstalls only when the API's answer about its own DaemonSet says the installation
is being removed (daemonset.api.daemonset_deleted); tests/cluster/ checks the same against a real API server."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from daemonset.api import daemonset_deleted
from daemonset.settings import from_env


class Answer:
    """AppsV1Api's stand-in: reading the DaemonSet gives `result`, or raises it."""

    def __init__(self, result: Any) -> None:
        self.result = result
        self.read: list[tuple[str, str]] = []

    def __call__(self, api: Any) -> Answer:
        return self

    def read_namespaced_daemon_set(self, name: str, namespace: str) -> Any:
        self.read.append((namespace, name))
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


def daemonset(deletion: datetime | None) -> Any:
    return SimpleNamespace(metadata=SimpleNamespace(deletion_timestamp=deletion))


KEEP = "cannot tell whether the DaemonSet is being deleted; leaving the plugin installed"
API = SimpleNamespace(configuration=SimpleNamespace(ssl_ca_cert="/sa/ca.crt"))


@pytest.mark.parametrize(("answer", "uninstall", "logged"), [
    (daemonset(None), False, None),  # a rollout, a node drain, a restart
    (daemonset(datetime(2026, 12, 7, tzinfo=UTC)), True, None),  # deleted with foreground cascading
    (ApiException(status=404), True, "uninstalling: our DaemonSet is gone"),
    (ApiException(status=401), True, "uninstalling: the API no longer accepts our service-account token: its "
                                     "ServiceAccount was deleted"),
    (ApiException(status=403), True, "uninstalling: the API no longer lets our service account read its "
                                     "DaemonSet: its RBAC was deleted"),
    (ApiException(status=503), False, KEEP),
    (ApiException(status=429), False, KEEP),
    (ConnectionRefusedError(111, "refused"), False, KEEP),
    (TimeoutError("timed out"), False, KEEP),
])
def test_only_an_answer_about_the_installation_uninstalls(monkeypatch, answer, uninstall, logged):
    apps = Answer(answer)
    monkeypatch.setattr(client, "AppsV1Api", apps)
    log: list[str] = []
    assert daemonset_deleted(API, from_env({"MGW_DAEMONSET_NAME": "mgw"}), lambda level, msg, **_: log.append(msg)) \
        is uninstall
    assert apps.read == [("kube-system", "mgw")]
    assert log == ([logged] if logged else [])
