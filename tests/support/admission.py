"""Evaluate the project's ValidatingAdmissionPolicy the way the kube-apiserver does, with a CEL from PyPI.

No kube-apiserver can run here (docs/design.md, testing): the CEL tests and the kube-API stand-in both
admit node updates through this, so the policy in the manifests is what the installer's requests meet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import cel
import yaml

POLICY = Path(__file__).resolve().parents[2] / "daemonset" / "manifests" / "admission-policy" / "admissionpolicy.yaml"


class Verdict(NamedTuple):
    allowed: bool
    message: str


def load_policy(path: Path = POLICY) -> dict[str, Any]:
    return next(d for d in yaml.safe_load_all(path.read_text()) if d["kind"] == "ValidatingAdmissionPolicy")


def _matches(spec: dict[str, Any], operation: str, resource: str) -> bool:
    for rule in spec["matchConstraints"]["resourceRules"]:
        if "" in rule["apiGroups"] and operation in rule["operations"] and resource in rule["resources"]:
            return True
    return False


def admit(policy: dict[str, Any], user: dict[str, Any], old: dict[str, Any], new: dict[str, Any],
          operation: str = "UPDATE", resource: str = "nodes") -> Verdict:
    """Allowed unless a matching policy's validation is false or fails to evaluate (failurePolicy Fail)."""
    spec = policy["spec"]
    request = {"operation": operation, "userInfo": user, "name": new["metadata"]["name"],
               "resource": {"group": "", "version": "v1", "resource": resource}}
    context: dict[str, Any] = {"request": request, "object": new, "oldObject": old}
    if not _matches(spec, operation, resource):
        return Verdict(True, "not matched")
    for condition in spec.get("matchConditions", []):
        if cel.evaluate(condition["expression"], context) is not True:
            return Verdict(True, "not matched")
    variables: dict[str, Any] = {}
    context["variables"] = variables
    name = policy["metadata"]["name"]
    try:
        for variable in spec.get("variables", []):
            variables[variable["name"]] = cel.evaluate(variable["expression"], context)
        for validation in spec["validations"]:
            if cel.evaluate(validation["expression"], context) is not True:
                return Verdict(False, f"ValidatingAdmissionPolicy '{name}' with binding '{name}' denied request: "
                                      f"{validation['message']}")
    except (ValueError, RuntimeError, KeyError, TypeError) as exc:
        return Verdict(False, f"ValidatingAdmissionPolicy '{name}' failed to evaluate: {exc}")
    return Verdict(True, "allowed")
