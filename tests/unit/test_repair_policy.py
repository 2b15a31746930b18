import pytest

from daemonset.repair import VALIDATOR_CONTAINER, needs_repair


def pod(labels=None, init=None, deleting=False):
    meta = {"name": "p", "namespace": "n", "uid": "u", "labels": labels or {}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "status": {"initContainerStatuses": init or []}}


PROTECTED = {"sidecar.microgateway.airlock.com/inject": "true"}


def validator(state=None, last=None, name=VALIDATOR_CONTAINER):
    return [{"name": name, "state": state or {}, "lastState": last or {}}]


@pytest.mark.parametrize(("p", "expected"), [
    (pod(PROTECTED, validator(last={"terminated": {"exitCode": 3}})), True),
    (pod(PROTECTED, validator(state={"terminated": {"exitCode": 3}})), True),
    (pod(PROTECTED, validator(state={"terminated": {"exitCode": 0}})), False),
    (pod(PROTECTED, validator(state={"terminated": {"exitCode": 1}})), False),
    (pod({}, validator(state={"terminated": {"exitCode": 3}})), False),
    (pod(PROTECTED, validator(state={"terminated": {"exitCode": 3}}, name="other")), False),
    (pod(PROTECTED, validator(state={"terminated": {"exitCode": 3}}), deleting=True), False),
    (pod(PROTECTED), False),
])
def test_needs_repair(p, expected):
    assert needs_repair(p) is expected
