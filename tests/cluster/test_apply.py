"""The manifests as an operator applies them to a real API server: the default overlay for real, the other
overlays and the chart's renderings as server-side dry runs. The API server validates every field, resolves
every kind and type-checks the admission policy's CEL against the Node schema, which no client-side tool does.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from subprocess import CompletedProcess

import pytest
import yaml

from tests.support import chart, components, report
from tests.support.cluster.controlplane import ControlPlane

OVERLAYS = "daemonset/manifests/overlays"
POLICY = "validatingadmissionpolicy/microgateway-cni-node-taint"
# Multus's kind, which the OpenShift overlay and preset create (their SecurityContextConstraints are only named
# in a Role's rule, which needs no kind behind it). Multus's own CRD has this schema too.
MULTUS_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "network-attachment-definitions.k8s.cni.cncf.io"},
    "spec": {"group": "k8s.cni.cncf.io", "scope": "Namespaced",
             "names": {"plural": "network-attachment-definitions", "singular": "network-attachment-definition",
                       "kind": "NetworkAttachmentDefinition", "shortNames": ["net-attach-def"]},
             "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                 "type": "object", "properties": {"spec": {"type": "object", "properties": {
                     "config": {"type": "string"}}}}}}}]}}


@pytest.fixture(scope="module")
def applied(cluster: ControlPlane) -> CompletedProcess[str]:
    """`kubectl apply --server-side -k overlays/default`, as the README deploys it."""
    return cluster.apply("-k", f"{OVERLAYS}/default")


@pytest.fixture(scope="module")
def multus(cluster: ControlPlane) -> None:
    """The NetworkAttachmentDefinition kind, served."""
    cluster.apply("-f", "-", input=json.dumps(MULTUS_CRD))
    done = cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                           f"crd/{MULTUS_CRD['metadata']['name']}")
    assert done.returncode == 0, done.stderr


def test_the_default_overlay_applies_without_an_error_or_a_warning(applied):
    assert applied.stderr == ""
    assert sorted(applied.stdout.splitlines()) == [
        "clusterrole.rbac.authorization.k8s.io/microgateway-cni serverside-applied",
        "clusterrolebinding.rbac.authorization.k8s.io/microgateway-cni serverside-applied",
        "configmap/microgateway-cni serverside-applied",
        "daemonset.apps/microgateway-cni serverside-applied",
        "serviceaccount/microgateway-cni serverside-applied",
        "validatingadmissionpolicy.admissionregistration.k8s.io/microgateway-cni-node-taint serverside-applied",
        "validatingadmissionpolicybinding.admissionregistration.k8s.io/microgateway-cni-node-taint serverside-applied",
    ]


def test_the_admission_policy_type_checks_against_the_node_schema(cluster, applied):
    """The API server checks each CEL expression against the Node's OpenAPI schema after admitting the policy
    and writes what it finds (a misspelled field, a wrong type) into status.typeChecking."""
    deadline = time.monotonic() + 60  # the controller manager starts after the API server is ready
    while (policy := cluster.json(POLICY))["status"].get("observedGeneration") != policy["metadata"]["generation"]:
        assert time.monotonic() < deadline, f"the policy was not type-checked: {policy['status']}"
        time.sleep(0.2)
    assert policy["status"].get("typeChecking", {}).get("expressionWarnings", []) == []
    assert policy["status"].get("conditions", []) == []


def dry_run(cluster: ControlPlane, *args: str, input: str | None = None) -> CompletedProcess[str]:
    return cluster.apply("--dry-run=server", *args, input=input)


@pytest.mark.parametrize("overlay", ["gke", "openshift", "no-admission-policy"])
def test_the_other_overlays_pass_a_server_side_dry_run(cluster, applied, multus, overlay):
    done = dry_run(cluster, "-k", f"{OVERLAYS}/{overlay}")
    assert done.stderr == ""
    assert done.stdout and all(line.endswith("serverside-applied (server dry run)")
                               for line in done.stdout.splitlines()), done.stdout


PRESETS = sorted(chart.CHART.glob("*-values.yaml"))


@pytest.mark.parametrize("values", [None, *PRESETS], ids=["default", *(path.stem for path in PRESETS)])
def test_the_chart_passes_a_server_side_dry_run(cluster, applied, multus, values: Path | None):
    docs = chart.render([values] if values else [])
    done = dry_run(cluster, "-f", "-", input=yaml.safe_dump_all(docs))
    assert done.stderr == ""
    assert len(done.stdout.splitlines()) == len(docs), done.stdout


def test_the_components_are_the_pinned_versions(cluster: ControlPlane) -> None:
    """What ran is what scripts/components/versions.txt pins: the binaries and the API server say so."""
    pinned = components.versions()
    lines = components.reported_versions()
    said = dict(line.split(": ", 1) for line in lines)
    for name in ("kube-apiserver", "kubelet", "kube-proxy", "kubectl"):
        assert said[name].endswith(pinned["kubernetes"]), (name, said[name])
    assert said["containerd"].split()[2] == pinned["containerd"]
    assert said["etcd"] == f"etcd Version: {pinned['etcd'].lstrip('v')}"
    assert said["crictl"].endswith(pinned["cri-tools"]) and said["helm"] == pinned["helm"]
    assert said["bridge"] == f"CNI bridge plugin {pinned['cni-plugins']}"
    served = json.loads(cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]["gitVersion"]
    assert served == pinned["kubernetes"]
    for line in lines:
        report.add(f"component {line}", "cluster")
