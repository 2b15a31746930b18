"""What each value does to the objects: the installer's settings through the ConfigMap, the image, the RBAC,
the names the admission policy checks, the checksum that rolls the DaemonSet, and the values users pass
through to the pod; all of it valid Kubernetes."""

from __future__ import annotations

import tomllib

import kubernetes_validate
import pytest
import yaml

from daemonset import settings
from daemonset.settings import Settings, from_env
from tests.support import chart

KUBERNETES_VERSION = "1.30"
DIGEST = "sha256:" + "0123456789abcdef" * 4
CUSTOM_KINDS = {"NetworkAttachmentDefinition"}  # a CRD's: no schema in kubernetes_validate


def config_map(docs):
    return chart.find(docs, "ConfigMap")["data"]


def pod_spec(docs):
    return chart.find(docs, "DaemonSet")["spec"]["template"]["spec"]


def test_config_values_become_the_installers_settings():
    docs = chart.render(settings=[
        "config.installMode=ahead", "config.cniNetDir=/var/lib/cni/net.d", "config.cniBinDir=/var/lib/cni/bin",
        "config.excludeNamespaces={kube-system,istio-system}", "config.logLevel=debug",
        "config.repairMode=labelPods", "config.netfilterBackend=nftables", "config.nonTCPInbound=allow",
        "config.startupTaint=example.com/cni-not-ready"])
    got = from_env(config_map(docs))
    assert (got.mode, got.host_cni_net_dir, got.exclude_namespaces, got.log_level, got.repair_mode,
            got.netfilter_backend, got.non_tcp_inbound, got.startup_taint) == (
        "ahead", "/var/lib/cni/net.d", ("kube-system", "istio-system"), "debug", "labelPods", "nftables", "allow",
        "example.com/cni-not-ready")
    paths = {v["name"]: v["hostPath"]["path"] for v in pod_spec(docs)["volumes"] if "hostPath" in v}
    assert paths == {"cni-net-dir": "/var/lib/cni/net.d", "cni-bin-dir": "/var/lib/cni/bin"}
    policy = chart.find(docs, "ValidatingAdmissionPolicy")["spec"]
    assert {"name": "taintKey", "expression": "'example.com/cni-not-ready'"} in policy["variables"]


def test_default_values_are_the_installers_defaults():
    values = yaml.safe_load((chart.CHART / "values.yaml").read_text())["config"]
    defaults = Settings()
    assert (values["installMode"], values["excludeNamespaces"], values["logLevel"], values["repairMode"],
            values["netfilterBackend"], values["nonTCPInbound"], values["startupTaint"], values["cniNetDir"]) == (
        defaults.mode, list(defaults.exclude_namespaces), defaults.log_level, defaults.repair_mode,
        defaults.netfilter_backend, defaults.non_tcp_inbound, defaults.startup_taint, defaults.host_cni_net_dir)


def test_the_schema_offers_the_installers_choices():
    schema = yaml.safe_load((chart.CHART / "values.schema.json").read_text())["properties"]["config"]["properties"]
    assert tuple(schema["installMode"]["enum"]) == settings.MODES
    assert tuple(schema["repairMode"]["enum"]) == settings.REPAIR_MODES
    assert tuple(schema["logLevel"]["enum"]) == settings.LOG_LEVELS
    assert tuple(schema["netfilterBackend"]["enum"]) == settings.NETFILTER_BACKENDS
    assert tuple(schema["nonTCPInbound"]["enum"]) == settings.NON_TCP_INBOUND_MODES
    assert schema["startupTaint"]["pattern"] == "^$|" + settings.TAINT_KEY.pattern


def test_the_image_tag_is_the_apps_version_and_a_digest_wins_over_it():
    chart_yaml = yaml.safe_load((chart.CHART / "Chart.yaml").read_text())
    project = tomllib.loads((chart.ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert chart_yaml["appVersion"] == chart_yaml["version"] == project

    def image(*values: str) -> tuple[str, str]:
        container = pod_spec(chart.render(settings=values))["containers"][0]
        return container["image"], container["imagePullPolicy"]

    assert image() == (f"microgateway-cni:{project}", "IfNotPresent")
    assert image("image.repository=registry.example.com/airlock/microgateway-cni", "image.tag=0.2.0") == (
        "registry.example.com/airlock/microgateway-cni:0.2.0", "IfNotPresent")
    assert image("image.tag=0.2.0", f"image.digest={DIGEST}", "image.pullPolicy=Always") == (
        f"microgateway-cni@{DIGEST}", "Always")


def test_a_configuration_change_rolls_the_daemonset_and_nothing_else_does():
    def checksum(*values: str) -> str:
        docs = chart.render(settings=values)
        return chart.find(docs, "DaemonSet")["spec"]["template"]["metadata"]["annotations"][chart.CHECKSUM_ANNOTATION]

    assert checksum() == checksum("podLabels.team=shop", "resources.limits.memory=300Mi")
    assert len({checksum(), checksum("config.logLevel=debug"), checksum("config.nonTCPInbound=allow")}) == 3


@pytest.mark.parametrize(("mode", "verbs"), [
    ("deletePods", {"get", "list", "watch", "delete"}),
    ("labelPods", {"get", "list", "watch", "patch"}),
    ("none", {"get", "list", "watch"}),
])
def test_the_cluster_role_grants_what_the_repair_mode_does(mode, verbs):
    role = chart.find(chart.render(settings=[f"config.repairMode={mode}"]), "ClusterRole")
    assert {v for rule in role["rules"] if rule["resources"] == ["pods"] for v in rule["verbs"]} == verbs


def test_without_rbac_the_chart_makes_no_cluster_role():
    kinds = {doc["kind"] for doc in chart.render(settings=["rbac.create=false"])}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"} and "DaemonSet" in kinds


def test_the_service_account_name_and_namespace_reach_every_object_that_names_them():
    docs = chart.render([chart.PRESETS["openshift"]], ["serviceAccount.name=mgw-installer"], "--namespace=airlock")
    subject = {"kind": "ServiceAccount", "name": "mgw-installer", "namespace": "airlock"}
    account = chart.find(docs, "ServiceAccount")["metadata"]
    assert (account["name"], account["namespace"]) == ("mgw-installer", "airlock")
    assert chart.find(docs, "ClusterRoleBinding")["subjects"] == [subject]
    assert chart.find(docs, "RoleBinding")["subjects"] == [subject]
    assert pod_spec(docs)["serviceAccountName"] == "mgw-installer"
    condition = chart.find(docs, "ValidatingAdmissionPolicy")["spec"]["matchConditions"][0]["expression"]
    assert condition == "request.userInfo.username == 'system:serviceaccount:airlock:mgw-installer'"
    kinds = {d["kind"] for d in chart.render(settings=["serviceAccount.create=false", "serviceAccount.name=x"])}
    assert "ServiceAccount" not in kinds


def test_pod_values_reach_the_pod_and_common_labels_every_object(tmp_path):
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({
        "podAnnotations": {"example.com/owner": "netops"}, "podLabels": {"team": "netops"},
        "commonLabels": {"cost-center": "42"}, "imagePullSecrets": [{"name": "registry"}],
        "nodeSelector": {"kubernetes.io/os": "linux", "pool": "web"},
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        "priorityClassName": "", "updateStrategy": {"type": "OnDelete"},
        "resources": {"requests": {"cpu": "20m", "memory": "128Mi"}},
        "serviceAccount": {"annotations": {"example.com/role": "cni"}},
    }))
    docs = chart.render([values])
    template = chart.find(docs, "DaemonSet")["spec"]["template"]
    spec = template["spec"]
    assert template["metadata"]["labels"] == {"app.kubernetes.io/name": "microgateway-cni", "team": "netops"}
    assert template["metadata"]["annotations"]["example.com/owner"] == "netops"
    assert spec["imagePullSecrets"] == [{"name": "registry"}] and spec["nodeSelector"]["pool"] == "web"
    assert spec["affinity"]["nodeAffinity"] and "priorityClassName" not in spec
    assert spec["tolerations"] == [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]
    assert chart.find(docs, "DaemonSet")["spec"]["updateStrategy"] == {"type": "OnDelete"}
    # Helm merges maps: the default limit stays unless set to null.
    assert spec["containers"][0]["resources"] == {"requests": {"cpu": "20m", "memory": "128Mi"},
                                                  "limits": {"memory": "256Mi"}}
    assert chart.find(docs, "ServiceAccount")["metadata"]["annotations"] == {"example.com/role": "cni"}
    assert all(doc["metadata"]["labels"]["cost-center"] == "42" for doc in docs)
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("preset", [None, *chart.PRESETS])
def test_every_object_is_valid_kubernetes(preset):
    for doc in chart.render([chart.PRESETS[preset]] if preset else []):
        if doc["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_admission_policy_asks_for_kubernetes_1_32():
    with pytest.raises(chart.ChartError, match=r"admissionPolicy.enabled needs Kubernetes >= 1.32 .* this cluster "
                                               r"is v1.31.4: set admissionPolicy.enabled=false"):
        chart.render((), (), "--kube-version=1.31.4")
    kinds = {d["kind"] for d in chart.render((), ["admissionPolicy.enabled=false"], "--kube-version=1.31.4")}
    assert "ValidatingAdmissionPolicy" not in kinds and "DaemonSet" in kinds


def test_the_network_attachment_definition_needs_the_standalone_conflist():
    with pytest.raises(chart.ChartError, match=r"multusNetworkAttachmentDefinition.create needs config.installMode "
                                               r"standalone .*, not chained"):
        chart.render(settings=["multusNetworkAttachmentDefinition.create=true"])
    docs = chart.render([chart.PRESETS["openshift"]], ["multusNetworkAttachmentDefinition.namespace=mgw"])
    network = chart.find(docs, "NetworkAttachmentDefinition")
    assert (network["metadata"]["namespace"], network["metadata"]["name"]) == ("mgw", "microgateway-cni")
