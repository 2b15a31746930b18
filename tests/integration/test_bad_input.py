"""Bad input is a CNI error JSON on stdout, exit 1, no traceback, and no rule left behind."""

from __future__ import annotations

import json

import pytest

from tests.support.node import Pod, pod_fixture
from tests.support.runtime import cni_error, exec_plugin, plugin_conf

pytestmark = pytest.mark.backends


@pytest.fixture
def sandbox(node):
    """A protected pod's fixture and an empty netns, as the runtime has before ADD."""
    node.add_pod_fixture(pod_fixture("web"))
    netns = f"mgwt-{node.id}-bad"
    node.add_netns(netns)
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c0ffee", "CNI_NETNS": f"/run/netns/{netns}",
           "CNI_IFNAME": "eth0", "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web"}
    return node, netns, env


def no_rules(node, netns):
    sandbox = Pod(name="bad", namespace="default", netns=netns, container_id="c0ffee")
    assert node.mgw_rules(sandbox) == [] and node.mgw_rules(sandbox, 6) == []


CASES = [
    ("malformed", {}, b'{"cniVersion": "1.0.0", "name": ', 6),
    ("truncated", {}, None, 6),
    ("empty", {}, b"", 6),
    ("no command", {"CNI_COMMAND": None}, None, 4),
    ("unknown command", {"CNI_COMMAND": "FROB"}, None, 4),
    ("no netns", {"CNI_NETNS": None}, None, 4),
    ("no container id", {"CNI_CONTAINERID": None}, None, 4),
    ("unsupported version", {}, "0.1.0", 1),
    ("bad config value", {}, {"enginePort": "x"}, 7),
    ("unknown backend", {}, {"netfilterBackend": "iptables-nft"}, 7),
    ("netns not a netns", {"CNI_NETNS": "/etc/hostname"}, None, 4),
    ("netns vanished", {"CNI_NETNS": "/run/netns/does-not-exist-mgw"}, None, 4),
    ("runtime's own netns", {"CNI_NETNS": "/proc/self/ns/net"}, None, 4),
]


@pytest.mark.parametrize(("case", "env_change", "stdin", "code"), CASES, ids=[c[0] for c in CASES])
def test_bad_input(sandbox, case, env_change, stdin, code):
    node, netns, env = sandbox
    conf = plugin_conf(node, "1.0.0")
    if isinstance(stdin, str):
        conf["cniVersion"] = stdin
        stdin = None
    elif isinstance(stdin, dict):
        conf.update(stdin)
        stdin = None
    if stdin is None:
        stdin = json.dumps(conf).encode()
        if case == "truncated":
            stdin = stdin[: len(stdin) // 2]
    for key, value in env_change.items():
        if value is None:
            env.pop(key)
        else:
            env[key] = value
    error = cni_error(exec_plugin(node, env, stdin))
    assert error["code"] == code, error
    assert error["msg"]
    if case == "unknown backend":
        assert "'netfilterBackend'" in error["msg"] and "'iptables-nft'" in error["msg"], error
    no_rules(node, netns)
