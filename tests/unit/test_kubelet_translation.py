"""The node tier's kubelet stand-in translates the rendered manifests faithfully, and refuses what it cannot.

The node tests run the DaemonSet through this translation; these cases pin what it carries over from the
default overlay, and that a spec it does not understand (or a hostPath the node lacks) stops the test
rather than being dropped.
"""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path

import pytest

from tests.support.kubelet import (
    SERVICE_ACCOUNT_MOUNT,
    Kubelet,
    NodeView,
    UnsupportedSpec,
    check_schedulable,
    pull_policy,
)
from tests.support.manifests import find, render
from tests.support.node import node_fixture

IMAGE = "localhost/microgateway-cni:0.1.0"


@pytest.fixture(scope="module")
def docs():
    return render("default", IMAGE)


def kubelet(tmp_path: Path, docs) -> Kubelet:
    view = NodeView(name="node-1", host_paths={"/etc/cni/net.d": tmp_path / "net.d", "/opt/cni/bin": tmp_path / "bin"},
                    pods_dir=tmp_path / "pods", api_host="127.0.0.1", api_port=6443, token="t0k", ca_pem=b"ca")
    return Kubelet(view, {"microgateway-cni": find(docs, "ConfigMap")["data"]})


def template(docs):
    return copy.deepcopy(find(docs, "DaemonSet")["spec"]["template"])


def test_default_overlay_translates_to_the_cri_configs_the_kubelet_sends(tmp_path, docs):
    plan = kubelet(tmp_path, docs).plan(template(docs), "microgateway-cni-x1", "kube-system")
    assert plan.sandbox["linux"]["security_context"]["namespace_options"] == {"network": "NODE", "pid": "CONTAINER"}
    installer = plan.containers[0].config
    assert installer["image"] == {"image": IMAGE} and installer["args"] == ["run"]
    env = {e["key"]: e["value"] for e in installer["envs"]}
    assert env["NODE_NAME"] == "node-1" and env["POD_NAMESPACE"] == "kube-system"
    assert env["MGW_CNI_NET_DIR"] == "/host/etc/cni/net.d" and env["KUBERNETES_SERVICE_PORT"] == "6443"
    sc = installer["linux"]["security_context"]
    assert sc["run_as_user"] == {"value": 0} and sc["readonly_rootfs"] and sc["no_new_privs"]
    assert sorted(sc["capabilities"]["add_capabilities"]) == ["CHOWN", "DAC_OVERRIDE", "FOWNER"]
    mounts = {m["container_path"]: m["host_path"] for m in installer["mounts"]}
    assert mounts["/host/etc/cni/net.d"] == str(tmp_path / "net.d")
    assert (Path(mounts[SERVICE_ACCOUNT_MOUNT]) / "token").read_text() == "t0k"
    assert [(p.kind, p.http_port or p.exec_command) for p in plan.containers[0].probes] == [
        ("liveness", 19100), ("readiness", ["/usr/local/bin/microgateway-cni-installer", "probe", "--port", "19100"])]


def _host_path(t):
    t["spec"]["volumes"][0]["hostPath"]["path"] = "/etc/cni/netd"


def _env_source(t):
    t["spec"]["containers"][0]["env"].append({"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}})


def _security_field(t):
    t["spec"]["containers"][0]["securityContext"]["seLinuxOptions"] = {"type": "spc_t"}


def _config_map(t):
    t["spec"]["containers"][0]["envFrom"][0]["configMapRef"]["name"] = "microgateway"


def _volume_kind(t):
    t["spec"]["volumes"].append({"name": "v", "secret": {"secretName": "s"}})


def _pod_field(t):
    t["spec"]["hostPID"] = True


def _latest_tag(t):
    t["spec"]["containers"][0]["image"] = "microgateway-cni:latest"
    del t["spec"]["containers"][0]["imagePullPolicy"]


def _always_pulled(t):
    t["spec"]["containers"][0]["imagePullPolicy"] = "Always"


@pytest.mark.parametrize("change", [_host_path, _env_source, _security_field, _config_map, _volume_kind, _pod_field,
                                    _latest_tag, _always_pulled])
def test_what_cannot_be_translated_faithfully_is_refused(tmp_path, docs, change):
    t = template(docs)
    change(t)
    with pytest.raises(UnsupportedSpec):
        kubelet(tmp_path, docs).plan(t, "microgateway-cni-x1", "kube-system")


@pytest.mark.parametrize(("container", "policy"), [
    ({"image": "microgateway-cni:0.1.0"}, "IfNotPresent"),
    ({"image": "localhost:5000/microgateway-cni"}, "Always"),
    ({"image": "microgateway-cni:latest"}, "Always"),
    ({"image": "microgateway-cni@sha256:" + "0" * 64}, "IfNotPresent"),
    ({"image": "microgateway-cni:latest", "imagePullPolicy": "Never"}, "Never"),
])
def test_pull_policy_defaults_as_the_api_server_does(container, policy):
    assert pull_policy(container) == policy


def test_the_base_pins_the_image_to_the_project_version_and_pulls_it_only_if_missing():
    installer = find(render("default"), "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
    version = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]["version"]
    assert installer["image"] == f"microgateway-cni:{version}" and installer["imagePullPolicy"] == "IfNotPresent"


@pytest.mark.parametrize(("tolerations", "schedulable"), [
    ([{"operator": "Exists"}], True),
    ([{"key": "microgateway-cni.airlock.com/not-ready", "operator": "Exists"}], True),
    ([{"key": "node.kubernetes.io/not-ready", "operator": "Exists"}], False),
    ([], False),
])
def test_the_daemonset_lands_on_a_node_with_the_startup_taint_only_if_it_tolerates_it(tolerations, schedulable):
    node = node_fixture(taints=[{"key": "microgateway-cni.airlock.com/not-ready", "effect": "NoSchedule"}])
    spec = {"nodeSelector": {"kubernetes.io/os": "linux"}, "tolerations": tolerations}
    if schedulable:
        check_schedulable(spec, node)
    else:
        with pytest.raises(UnsupportedSpec):
            check_schedulable(spec, node)
