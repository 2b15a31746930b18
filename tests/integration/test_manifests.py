"""The DaemonSet manifests render with `kubectl kustomize` and validate against the Kubernetes schemas."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from daemonset import conflist
from daemonset.settings import STARTUP_TAINT
from tests.support.node import tolerates

MANIFESTS = Path(__file__).resolve().parents[2] / "daemonset" / "manifests"
KUBERNETES_VERSION = "1.30"


def render(overlay: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl missing; scripts/setup.sh installs it"
    out = subprocess.run([kubectl, "kustomize", str(MANIFESTS / "overlays" / overlay)], check=True,
                         capture_output=True, text=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


KINDS = ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet", "ServiceAccount"]
POLICY_KINDS = ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
OPENSHIFT_KINDS = ["Role", "RoleBinding", "NetworkAttachmentDefinition"]  # the SCC grant, Multus's network
CUSTOM_KINDS = {"NetworkAttachmentDefinition"}  # a CRD's: no schema in kubernetes_validate


@pytest.mark.parametrize("overlay", ["default", "gke", "openshift", "no-admission-policy"])
def test_overlay_renders_and_validates(overlay):
    docs = render(overlay)
    expected = {"no-admission-policy": KINDS, "openshift": KINDS + POLICY_KINDS + OPENSHIFT_KINDS}.get(
        overlay, KINDS + POLICY_KINDS)
    assert sorted(d["kind"] for d in docs) == sorted(expected)
    for doc in docs:
        if doc["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        if doc["kind"] in POLICY_KINDS:
            assert "namespace" not in doc["metadata"], "cluster-scoped"
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    assert ds["metadata"]["namespace"] == "kube-system" and spec["hostNetwork"] is True
    assert spec["priorityClassName"] == "system-node-critical" and spec["tolerations"] == [{"operator": "Exists"}]
    security = spec["containers"][0]["securityContext"]
    if overlay == "openshift":
        assert security == {"runAsUser": 0, "readOnlyRootFilesystem": True, "privileged": True}
    else:
        assert security["readOnlyRootFilesystem"] and security["capabilities"]["drop"] == ["ALL"]
    paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    expected = {"default": ("/etc/cni/net.d", "/opt/cni/bin", "chained"),
                "gke": ("/etc/cni/net.d", "/home/kubernetes/bin", "chained"),
                "openshift": ("/etc/cni/multus/net.d", "/var/lib/cni/bin", "standalone"),
                "no-admission-policy": ("/etc/cni/net.d", "/opt/cni/bin", "chained")}[overlay]
    assert (paths["cni-net-dir"], paths["cni-bin-dir"], config["MGW_MODE"]) == expected


def test_rbac_is_minimal():
    role = next(d for d in render("default") if d["kind"] == "ClusterRole")
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}
    assert granted == {("", "pods", "get"), ("", "pods", "list"), ("", "pods", "watch"), ("", "pods", "delete"),
                       ("", "events", "create"), ("apps", "daemonsets", "get"), ("", "nodes", "get"),
                       ("", "nodes", "patch")}


def test_installer_tolerates_the_taint_it_lifts_and_the_policy_names_the_configured_key():
    docs = render("default")
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    assert config["MGW_STARTUP_TAINT"] == STARTUP_TAINT
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    assert tolerates(ds["spec"]["template"]["spec"]["tolerations"], {"key": STARTUP_TAINT, "effect": "NoSchedule"})
    policy = next(d for d in docs if d["kind"] == "ValidatingAdmissionPolicy")
    binding = next(d for d in docs if d["kind"] == "ValidatingAdmissionPolicyBinding")
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
    key = next(v for v in policy["spec"]["variables"] if v["name"] == "taintKey")["expression"]
    assert key == f"'{STARTUP_TAINT}'"
    sa = next(d for d in docs if d["kind"] == "ServiceAccount")["metadata"]
    username = f"system:serviceaccount:{sa['namespace']}:{sa['name']}"
    assert f"'{username}'" in policy["spec"]["matchConditions"][0]["expression"]


def test_openshift_grants_the_privileged_scc_and_names_the_standalone_network():
    docs = render("openshift")
    sa = next(d for d in docs if d["kind"] == "ServiceAccount")["metadata"]
    role = next(d for d in docs if d["kind"] == "Role")
    binding = next(d for d in docs if d["kind"] == "RoleBinding")
    assert role["rules"] == [{"apiGroups": ["security.openshift.io"], "resources": ["securitycontextconstraints"],
                              "resourceNames": ["privileged"], "verbs": ["use"]}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["name"], "namespace": sa["namespace"]}]
    network = next(d for d in docs if d["kind"] == "NetworkAttachmentDefinition")
    assert network["metadata"]["name"] == conflist.standalone({})["name"] and "spec" not in network
