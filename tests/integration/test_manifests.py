"""The DaemonSet manifests render with `kubectl kustomize` and validate against the Kubernetes schemas."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

MANIFESTS = Path(__file__).resolve().parents[2] / "daemonset" / "manifests"
KUBERNETES_VERSION = "1.30"


def render(overlay: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl missing; scripts/setup.sh installs it"
    out = subprocess.run([kubectl, "kustomize", str(MANIFESTS / "overlays" / overlay)], check=True,
                         capture_output=True, text=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.mark.parametrize("overlay", ["default", "gke", "openshift"])
def test_overlay_renders_and_validates(overlay):
    docs = render(overlay)
    assert sorted(d["kind"] for d in docs) == ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet",
                                               "ServiceAccount"]
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    assert ds["metadata"]["namespace"] == "kube-system" and spec["hostNetwork"] is True
    assert spec["priorityClassName"] == "system-node-critical" and spec["tolerations"] == [{"operator": "Exists"}]
    security = spec["containers"][0]["securityContext"]
    assert security["readOnlyRootFilesystem"] and security["capabilities"]["drop"] == ["ALL"]
    paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    expected = {"default": ("/etc/cni/net.d", "/opt/cni/bin", "chained"),
                "gke": ("/etc/cni/net.d", "/home/kubernetes/bin", "chained"),
                "openshift": ("/etc/cni/multus/net.d", "/var/lib/cni/bin", "standalone")}[overlay]
    assert (paths["cni-net-dir"], paths["cni-bin-dir"], config["MGW_MODE"]) == expected


def test_rbac_is_minimal():
    role = next(d for d in render("default") if d["kind"] == "ClusterRole")
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}
    assert granted == {("", "pods", "get"), ("", "pods", "list"), ("", "pods", "watch"), ("", "pods", "delete"),
                       ("", "events", "create"), ("apps", "daemonsets", "get")}
