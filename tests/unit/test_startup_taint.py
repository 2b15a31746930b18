"""MGW_STARTUP_TAINT parsing and how a failed taint removal is named in logs and metrics."""

from __future__ import annotations

import pytest
from kubernetes.client.exceptions import ApiException

from daemonset.settings import STARTUP_TAINT, SettingsError, from_env
from daemonset.taint import NotRunnable, StillConflicting, TaintGate, failure_reason


@pytest.mark.parametrize(("env", "key"), [
    ({}, STARTUP_TAINT),
    ({"MGW_STARTUP_TAINT": ""}, ""),
    ({"MGW_STARTUP_TAINT": " "}, ""),
    ({"MGW_STARTUP_TAINT": "example.com/cni-not-ready"}, "example.com/cni-not-ready"),
    ({"MGW_STARTUP_TAINT": "not-ready"}, "not-ready"),
])
def test_startup_taint_setting(env, key):
    assert from_env(env).startup_taint == key


@pytest.mark.parametrize("value", ["a/b/c", "Example.com/x", "example.com/", "/x", "x" * 64, "bad key", "ünï/x"])
def test_invalid_taint_key_names_the_variable(value):
    with pytest.raises(SettingsError, match="MGW_STARTUP_TAINT"):
        from_env({"MGW_STARTUP_TAINT": value})


def api_error(status: int, message: str = "") -> ApiException:
    exc = ApiException(status=status, reason="reason")
    exc.body = f'{{"kind": "Status", "message": "{message}"}}' if message else None
    return exc


@pytest.mark.parametrize(("exc", "reason", "detail"), [
    (api_error(403, "nodes is forbidden"), "forbidden", "403: nodes is forbidden"),
    (api_error(401), "unauthorized", "401: reason"),
    (api_error(404), "node_not_found", "404: reason"),
    (api_error(503, "etcd"), "api_error", "503: etcd"),
    (api_error(429), "http_429", "429: reason"),
    (StillConflicting("node changed"), "conflict", "node changed"),
    (NotRunnable("exited 127"), "plugin_not_runnable", "exited 127"),
    (ConnectionRefusedError(111, "refused"), "unreachable", "ConnectionRefusedError: [Errno 111] refused"),
])
def test_failure_reasons_are_bounded_labels_with_the_apis_message(exc, reason, detail):
    assert failure_reason(exc, "/sa/ca.crt") == (reason, detail)


def test_an_empty_key_is_a_gate_that_is_open_from_the_start():
    assert TaintGate(None, "node-1", "", print).open
    assert not TaintGate(None, "node-1", STARTUP_TAINT, print).open
