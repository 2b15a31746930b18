"""containerd 1.6 (Debian's), where it differs from containerd 2: it never calls CNI STATUS.

The node tier runs on containerd 2; this is the smallest set that keeps 1.6 covered. One node on 1.6,
its primary conflist in cniVersion 1.0.0 with Debian's plugins (1.1.1, which speak no 1.1.0): the
installer chains our plugin, a protected pod's traffic goes through the Engine, an ordinary pod starts
untouched, and however often the runtime's status is asked the plugin's log holds no STATUS. So on 1.6
even an invalid entry of ours leaves NetworkReady true, while every ADD fails. The installer runs as a
process in the node's network namespace and the pods are made through CRI directly (tests/support/crinode.py).
"""

from __future__ import annotations

import collections
import json
import os

import pytest

from tests.support import images, report, workloads
from tests.support.containerd import V1_6
from tests.support.cri import CriError
from tests.support.crinode import CriNode
from tests.support.demo import path_of
from tests.support.programs import conf_agent


def test_containerd_1_6_never_calls_status_and_runs_protected_and_ordinary_pods() -> None:
    if os.geteuid() != 0:
        pytest.skip("the node tier needs root (network and mount namespaces, cgroups, containerd)")
    with CriNode(release_name=V1_6) as kube:
        assert kube.runtime.version()["runtime_version"].startswith("1.6.")
        kube.install(MGW_LOG_LEVEL="debug")
        chained = json.loads(kube.primary.read_text())
        assert chained["cniVersion"] == "1.0.0" and kube.chain() == ["bridge", "microgateway-cni"]
        client = kube.create(workloads.client("client"))
        shop = kube.create(workloads.protected("shop", images.project_image()))
        assert kube.validator_exit(shop) == 0
        kube.wait_started(shop)
        plain = kube.create(workloads.ordinary("plain"))
        kube.wait_started(plain)
        replies = kube.request(client, [f"{shop.ip}:8080", f"{plain.ip}:8080"])
        assert [path_of(reply) for reply in replies.values()] == ["client -> engine -> app", "client -> app"]
        assert kube.our_rules(plain) == []
        assert all(kube.runtime.status()["NetworkReady"] for _ in range(5))
        commands = collections.Counter(entry["command"] for entry in kube.plugin_log())

        assert kube.stop_installer() == 0  # it would put its own entry back
        invalid = {**chained, "plugins": [*chained["plugins"][:-1], {**chained["plugins"][-1], "logLevel": "loud"}]}
        conf_agent.write_atomic(kube.primary, invalid)
        assert kube.containerd is not None
        kube.containerd.wait_loaded(invalid)
        ready = kube.runtime.status()["NetworkReady"]
        with pytest.raises(CriError) as refused:
            kube.create(workloads.ordinary("invalid-entry-system", namespace="kube-system"))
    report.add(f"containerd 1.6: protected pod :8080 client -> engine -> app, ordinary pod started untouched; "
               f"plugin commands {dict(commands)} (no STATUS); our entry invalid: NetworkReady={str(ready).lower()}, "
               f"an ordinary kube-system pod refused: {refused.value.details}")
    assert "STATUS" not in commands and commands["ADD"] >= 3
    assert ready, "1.6 never asks STATUS"
    assert "logLevel" in refused.value.details
