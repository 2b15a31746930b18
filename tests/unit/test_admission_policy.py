"""The manifests' ValidatingAdmissionPolicy, evaluated with CEL (common-expression-language) on node updates.

The same evaluator admits the installer's real patches in the kube-API stand-in (tests/support/kubeapi.py).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from daemonset.settings import STARTUP_TAINT
from tests.support.admission import admit, load_policy
from tests.support.node import INSTALLER_USER, node_fixture, token_user

OURS = {"key": STARTUP_TAINT, "effect": "NoSchedule"}
OTHER = {"key": "example.com/gpu", "value": "a100", "effect": "NoSchedule"}
KUBELET = {"username": "system:node:node-1", "groups": ["system:nodes"]}
BOUND = token_user("node-1", "node-1-uid")


def change(edit: Callable[[dict[str, Any]], None], taints: list[dict[str, Any]] | None = None,
           ) -> tuple[dict[str, Any], dict[str, Any]]:
    old = node_fixture(taints=[OTHER, OURS] if taints is None else taints)
    new = copy.deepcopy(old)
    edit(new)
    return old, new


def set_taints(*taints: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def edit(node: dict[str, Any]) -> None:
        node["spec"]["taints"] = list(taints)
    return edit


def without_taints(node: dict[str, Any]) -> None:
    del node["spec"]["taints"]


CASES: list[tuple[str, dict[str, Any], tuple[dict[str, Any], dict[str, Any]], bool, str]] = [
    ("remove our taint, keep others", BOUND, change(set_taints(OTHER)), True, ""),
    ("remove our only taint (field gone)", BOUND, change(without_taints, [OURS]), True, ""),
    ("no change at all", BOUND, change(lambda n: None), True, ""),
    ("token without node-uid (name only)",
     {**BOUND, "extra": {"authentication.kubernetes.io/node-name": ["node-1"]}}, change(set_taints(OTHER)), True, ""),
    ("kubelet relabels: policy does not apply", KUBELET,
     change(lambda n: n["metadata"]["labels"].update(zone="b")), True, ""),
    ("another node than the token's", token_user("node-2", "node-2-uid"), change(set_taints(OTHER)), False,
     "only the node its service-account token is bound to"),
    ("token without node name (< 1.32)", token_user(None), change(set_taints(OTHER)), False,
     "only the node its service-account token is bound to"),
    ("node recreated under the same name", token_user("node-1", "old-uid"), change(set_taints(OTHER)), False,
     "only the node its service-account token is bound to"),
    ("remove someone else's taint", BOUND, change(set_taints(OURS)), False, "no taint but"),
    ("add another taint", BOUND, change(set_taints(OTHER, OURS, {"key": "x.io/y", "effect": "NoExecute"})), False,
     "no taint but"),
    ("change another taint's value", BOUND, change(set_taints({**OTHER, "value": "h100"}, OURS)), False,
     "no taint but"),
    ("add our taint back", BOUND, change(set_taints(OTHER, OURS), [OTHER]), False, "only remove"),
    ("turn ours into NoExecute", BOUND, change(set_taints(OTHER, {**OURS, "effect": "NoExecute"})), False,
     "only remove"),
    ("remove ours and relabel", BOUND,
     change(lambda n: (set_taints(OTHER)(n), n["metadata"]["labels"].update(role="db"))), False, "labels"),
    ("add an annotation", BOUND, change(lambda n: n["metadata"].__setitem__("annotations", {"a": "b"})), False,
     "labels, annotations"),
    ("add a finalizer", BOUND, change(lambda n: n["metadata"].__setitem__("finalizers", ["x.io/keep"])), False,
     "finalizers"),
    ("cordon (unschedulable)", BOUND, change(lambda n: n["spec"].__setitem__("unschedulable", True)), False,
     "nothing in a node's spec"),
    ("change podCIDR", BOUND, change(lambda n: n["spec"].__setitem__("podCIDR", "10.99.0.0/24")), False,
     "nothing in a node's spec"),
    ("set providerID", BOUND, change(lambda n: n["spec"].__setitem__("providerID", "aws:///i-1")), False,
     "nothing in a node's spec"),
]


@pytest.mark.parametrize(("user", "old", "new", "allowed", "message"),
                         [(u, o, n, a, m) for _, u, (o, n), a, m in CASES], ids=[c[0] for c in CASES])
def test_policy_verdicts(user, old, new, allowed, message):
    verdict = admit(load_policy(), user, old, new)
    assert verdict.allowed is allowed, verdict.message
    assert message in verdict.message


def test_policy_applies_to_the_installer_only_and_its_key_is_the_default():
    spec = load_policy()["spec"]
    assert spec["failurePolicy"] == "Fail"
    assert INSTALLER_USER in spec["matchConditions"][0]["expression"]
    assert next(v for v in spec["variables"] if v["name"] == "taintKey")["expression"] == f"'{STARTUP_TAINT}'"


def test_status_subresource_and_other_operations_are_not_matched_because_rbac_never_grants_them():
    old, new = change(lambda n: n["status"].update(conditions=[]))
    assert admit(load_policy(), BOUND, old, new, resource="nodes/status").message == "not matched"
    assert admit(load_policy(), BOUND, old, new, operation="DELETE").message == "not matched"


def table() -> str:
    """The verdicts as a table for people: `python -m tests.unit.test_admission_policy`."""
    rows = [f"{'request':42} {'identity':18} verdict"]
    for name, user, (old, new), _, _ in CASES:
        verdict = admit(load_policy(), user, old, new)
        bound = (user.get("extra") or {}).get("authentication.kubernetes.io/node-name", ["no node"])[0]
        who = "kubelet" if user is KUBELET else f"installer@{bound}"
        outcome = "allowed" if verdict.allowed else "FORBIDDEN: " + verdict.message.split(": ", 1)[-1]
        rows.append(f"{name:42} {who:18} {outcome}")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
