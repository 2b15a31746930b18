"""I5/I6 and the API paths, through libcni, plus the 1.1.0 commands by direct exec."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.support.node import API_PORT, Node, pod_fixture
from tests.support.pods import client_pod, protected_pod, target
from tests.support.runtime import cni_env, cni_error, exec_plugin, plugin_conf
from tests.support.tampering import tamper

pytestmark = pytest.mark.backends


def test_add_twice_is_idempotent(node):
    pod = protected_pod(node, "web")
    before = node.mgw_rules(pod)
    again = exec_plugin(node, cni_env(pod), json.dumps(
        {**plugin_conf(node, "1.0.0"), "prevResult": pod.result}).encode())
    assert again.returncode == 0, again.stdout
    assert json.loads(again.stdout)["ips"] == pod.result["ips"]
    assert node.mgw_rules(pod) == before
    assert sum(line.endswith(("-j MGW_PREROUTING", "jump MGW_PREROUTING")) for line in before) == 1


def test_del_twice_removes_everything_and_succeeds(node):
    pod = protected_pod(node, "web")
    conflist = node.conf_dir / "10-mgw.conflist"
    node.cni("del", pod, conflist)
    assert node.mgw_rules(pod) == [] and node.mgw_rules(pod, 6) == []
    node.cni("del", pod, conflist)


def _without_ours(save: str) -> list[str]:
    """The saved rules but ours, without the chains' packet counters (a packet may reach the pod meanwhile)."""
    return [re.sub(r" \[\d+:\d+\]$", "", line) for line in save.splitlines()
            if "MGW_" not in line and not line.startswith(("#", "["))]


def _foreign_nft(node, pod) -> str:
    """The pod's nftables ruleset without our tables."""
    blocks = re.split(r"(?m)^(?=table )", node.exec(pod.netns, ["nft", "list", "ruleset"]).stdout)
    return "".join(block for block in blocks if not re.match(r"table ip6? microgateway \{", block))


FOREIGN_NFT = """table inet foreign {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		udp dport 53 return
	}
	chain MGW_LOOKALIKE {
		tcp dport 9 return
	}
}
"""


def test_del_removes_only_ours_and_keeps_foreign_rules(node):
    pod = protected_pod(node, "web")
    if node.backend == "iptables-legacy":
        for tool in ("iptables-legacy", "ip6tables-legacy"):
            for rule in (["-N", "FOREIGN"], ["-A", "FOREIGN", "-p", "tcp", "-j", "RETURN"],
                         ["-I", "PREROUTING", "1", "-p", "udp", "-j", "FOREIGN"],
                         ["-A", "PREROUTING", "-p", "tcp", "--dport", "9", "-j", "RETURN"],
                         ["-A", "OUTPUT", "-p", "tcp", "-j", "FOREIGN"]):
                node.exec(pod.netns, [tool, "-t", "nat", *rule])
        before = {family: _without_ours(node.nat_rules(pod, family)) for family in (4, 6)}
    else:  # another agent's nft table (a chain named like ours included) and iptables-nft rules
        node.exec(pod.netns, ["nft", "-f", "-"], input=FOREIGN_NFT)
        node.exec(pod.netns, ["iptables-nft", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "9",
                              "-j", "RETURN"])
        before = _foreign_nft(node, pod)
    assert all(node.mgw_rules(pod, family) for family in (4, 6))
    node.cni("del", pod, node.conf_dir / "10-mgw.conflist")
    assert node.mgw_rules(pod) == [] and node.mgw_rules(pod, 6) == []
    if node.backend == "iptables-legacy":
        assert {family: _without_ours(node.nat_rules(pod, family)) for family in (4, 6)} == before
    else:
        assert _foreign_nft(node, pod) == before and "MGW_LOOKALIKE" in before


def test_add_failing_in_one_family_leaves_no_rule_in_any(node):
    """I6 across families: IPv6 cannot be configured, so ADD fails and IPv4 has nothing either.
    Legacy: a foreign rule jumps to MGW_INBOUND, so the chain cannot be replaced; IPv4 succeeded first
    and is rolled back. nftables: another process owns an `ip6 microgateway` table; both families are
    one transaction, which the kernel aborts whole."""
    node.add_pod_fixture(pod_fixture("web"))
    pod = node.new_pod("web", node.write_conflist(chained=False, name="primary.conflist"))
    if node.backend == "iptables-legacy":
        for rule in (["-N", "MGW_INBOUND"], ["-N", "FOREIGN"], ["-A", "FOREIGN", "-j", "MGW_INBOUND"]):
            node.exec(pod.netns, ["ip6tables-legacy", "-t", "nat", *rule])
        ipv6_before = node.nat_rules(pod, 6)
    else:
        node.spawn(pod.netns, [sys.executable, "-m", "tests.support.programs.nft_owner", "--family", "6",
                               "--table", "microgateway"])
        ipv6_before = node.nft_table(pod, 6)
    add = exec_plugin(node, cni_env(pod), json.dumps(
        {**plugin_conf(node, "1.0.0"), "prevResult": pod.result}).encode())
    error = cni_error(add)
    assert error["code"] == 100 and "IPv6" in error["msg"], error
    assert node.mgw_rules(pod) == []
    if node.backend == "iptables-legacy":
        assert _without_counters(node.nat_rules(pod, 6)) == _without_counters(ipv6_before)
    else:
        assert node.nft_table(pod, 6) == ipv6_before and node.nft_table(pod, 4) == ""


def _without_counters(save: str) -> list[str]:
    return [line for line in save.splitlines() if not line.startswith(("#", ":"))]


def test_del_with_netns_gone_and_never_configured(node):
    pod = protected_pod(node, "web")
    node.remove_netns(pod)
    node.cni("del", pod, node.conf_dir / "10-mgw.conflist")
    conf = json.dumps(plugin_conf(node, "1.0.0")).encode()
    never = exec_plugin(node, {**cni_env(pod, "DEL"), "CNI_NETNS": ""}, conf)
    assert never.returncode == 0 and never.stdout == b""


@pytest.mark.parametrize("change", ["delete redirect", "replace a return", "insert a return",
                                    "delete prerouting jump", "redirect elsewhere", "foreign rule"])
def test_check_fails_when_a_rule_is_missing_or_altered(node, change):
    """CHECK reports the drift in the syntax of the backend in use."""
    pod = protected_pod(node, "web")
    conflist = node.conf_dir / "10-mgw.conflist"
    node.cni("check", pod, conflist)
    tamper(node, pod, change)
    done = node.cni("check", pod, conflist, check=False)
    assert done.returncode != 0
    assert "differ" in done.stderr and ("missing" in done.stderr or "unexpected" in done.stderr)
    syntax = "-A " if node.backend == "iptables-legacy" else "ip microgateway "
    assert syntax in done.stderr, done.stderr


def test_check_fails_when_ipv6_rules_flushed(node):
    pod = protected_pod(node, "web")
    tamper(node, pod, "flush inbound", family=6)
    done = node.cni("check", pod, node.conf_dir / "10-mgw.conflist", check=False)
    assert done.returncode != 0 and "missing IPv6" in done.stderr


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
def test_conflist_versions(node, version):
    pod = protected_pod(node, "web", cni_version=version)
    assert pod.result["cniVersion"] == version
    has_version = all("version" in ip for ip in pod.result["ips"])
    assert has_version == (version != "1.0.0")
    client = client_pod(node)
    assert node.connect(client.netns, [target(pod, 5555)])[target(pod, 5555)] == "engine=web orig=5555"
    conflist = node.conf_dir / "10-mgw.conflist"
    if version != "0.3.1":
        node.cni("check", pod, conflist)
    node.cni("del", pod, conflist)
    assert node.mgw_rules(pod) == []


def test_excluded_namespace_passes_with_api_down(node):
    node.stop_api()
    pod = node.new_pod("coredns", node.write_conflist(), namespace="kube-system")
    assert pod.result["ips"] and node.mgw_rules(pod) == []


def test_api_down_for_protected_pod_is_error_11_and_no_rules(node):
    node.stop_api()
    pod = node.new_pod("web", node.write_conflist(), check=False)
    assert pod.add_output.returncode != 0
    assert "kube-apiserver unreachable" in pod.add_output.stderr
    assert node.mgw_rules(pod) == [] and node.mgw_rules(pod, 6) == []
    log = [json.loads(line) for line in node.log_file.read_text().splitlines()]
    assert any(entry.get("code") == 11 for entry in log)


# Runs one plugin process as the child of a subreaper: whatever the plugin leaves running when it exits
# (a worker it forked and did not reap) is re-parented to this script, counted, and killed.
ORPHAN_COUNTER = r"""
import ctypes, json, os, signal, subprocess, sys
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
done = subprocess.run(sys.argv[1:], input=sys.stdin.buffer.read(), stdout=subprocess.PIPE,
                      stderr=subprocess.DEVNULL)
with open(f"/proc/{os.getpid()}/task/{os.getpid()}/children") as f:
    orphans = [int(pid) for pid in f.read().split()]
for pid in orphans:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
print(json.dumps({"code": done.returncode, "stdout": done.stdout.decode(), "orphans": len(orphans)}))
"""


def _left_behind(node, pod, command: str = "ADD") -> dict:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_PATH": str(node.bin_dir), **cni_env(pod, command)}
    stdin = json.dumps({**plugin_conf(node, "1.0.0"), "prevResult": pod.result}).encode()
    done = subprocess.run(["ip", "netns", "exec", node.netns, sys.executable, "-c", ORPHAN_COUNTER,
                           str(node.bin_dir / "microgateway-cni")], input=stdin, env=env, capture_output=True,
                          timeout=60, check=True)
    return json.loads(done.stdout)


def test_no_netfilter_worker_outlives_the_plugin(node):
    """ADD and CHECK fork a worker before asking the API: it is gone when the plugin exits, whether it
    was used (protected pod), cancelled (unprotected pod) or cancelled on an API failure."""
    node.add_pod_fixture(pod_fixture("plain", protected=False))
    node.add_pod_fixture(pod_fixture("web"))
    primary = node.write_conflist(chained=False, name="primary.conflist")
    plain, web = node.new_pod("plain", primary), node.new_pod("web", primary)
    for pod, command in ((plain, "ADD"), (web, "ADD"), (web, "CHECK")):
        outcome = _left_behind(node, pod, command)
        assert (outcome["code"], outcome["orphans"]) == (0, 0), (pod.name, command, outcome)
    assert node.mgw_rules(web) and not node.mgw_rules(plain)
    node.stop_api()
    failed = _left_behind(node, plain)
    assert failed["code"] == 1 and json.loads(failed["stdout"])["code"] == 11 and failed["orphans"] == 0




def test_runtime_annotations_are_conclusive_without_api(node):
    node.stop_api()
    conflist = node.write_conflist(capabilities=True)
    pod = node.new_pod("web", conflist, annotations={"sidecar.microgateway.airlock.com/inject": "true"})
    assert any("redirect" in line.lower() for line in node.mgw_rules(pod))


def _warnings(node) -> list[dict]:
    return [entry for entry in map(json.loads, node.log_file.read_text().splitlines()) if entry["level"] == "warn"]


@pytest.mark.parametrize("outage", ["API down", "token refused"])
def test_when_the_api_cannot_tell_an_unannotated_pod_is_passed_through_with_a_warning(node, outage):
    """The runtime hands the annotations (capability on): they do not protect the pod, and the API that
    would tell its label is down or refuses us. The pod is labelled protected in the API's fixture, so
    this is the case the validator then refuses (docs/design.md, "When the API cannot tell")."""
    node.add_pod_fixture(pod_fixture("web"))
    if outage == "API down":
        node.stop_api()
    else:
        node.token = "wrong"
        node.write_kubeconfig(f"https://127.0.0.1:{API_PORT}")
    pod = node.new_pod("web", node.write_conflist(capabilities=True), annotations={"team": "shop"})
    assert pod.result["ips"] and node.mgw_rules(pod) == [] and node.mgw_rules(pod, 6) == []
    [warning] = _warnings(node)
    assert warning["msg"].startswith("passed through")
    assert ("unreachable" if outage == "API down" else "HTTP 401") in warning["reason"]


def test_a_pod_the_api_does_not_know_is_an_answer_not_an_outage(node):
    """404 fails the ADD even with the runtime's annotations at hand: the API answered."""
    pod = node.new_pod("ghost", node.write_conflist(capabilities=True), annotations={}, check=False)
    assert pod.add_output.returncode != 0 and "does not exist in the API" in pod.add_output.stderr
    assert _warnings(node) == []


@pytest.mark.parametrize("case", ["foreign CA", "wrong host name"])
def test_api_certificate_is_verified(node, case):
    """The pod lookup trusts only the kubeconfig's CA, for the kubeconfig's host (fails closed otherwise)."""
    if case == "foreign CA":
        other = node.dir / "other-ca.crt"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-days", "1", "-subj", "/CN=kube-apiserver", "-addext",
                        "subjectAltName=IP:127.0.0.1", "-keyout", str(node.dir / "other-ca.key"), "-out", str(other)],
                       check=True, capture_output=True)
        node.ca_pem = other.read_bytes()
        node.write_kubeconfig(f"https://127.0.0.1:{API_PORT}")
    else:  # the stand-in's certificate names only IP:127.0.0.1
        node.write_kubeconfig(f"https://localhost:{API_PORT}")
    node.add_pod_fixture(pod_fixture("web"))
    pod = node.new_pod("web", node.write_conflist(), check=False)
    assert pod.add_output.returncode != 0
    assert "kube-apiserver certificate rejected" in pod.add_output.stderr, pod.add_output.stderr
    assert node.mgw_rules(pod) == []


def test_wrong_token_is_a_clear_error(node):
    node.token = "wrong"
    node.write_kubeconfig("https://127.0.0.1:6443")
    node.add_pod_fixture(pod_fixture("web"))
    pod = node.new_pod("web", node.write_conflist(), check=False)
    assert pod.add_output.returncode != 0 and "HTTP 401" in pod.add_output.stderr


def test_client_certificate_kubeconfig(node):
    """Kubeconfigs with client certificates (no token) work; the temporary PEM files are removed."""
    node.write_kubeconfig("https://127.0.0.1:6443", user=node.client_certificate())
    before = set(os.listdir("/tmp"))
    pod = protected_pod(node, "web")
    assert any("redirect" in line.lower() for line in node.mgw_rules(pod))
    assert not [n for n in set(os.listdir("/tmp")) - before if n.startswith("mgw-cni-")]


def test_yaml_kubeconfig(node):
    import yaml

    node.kubeconfig.write_text(yaml.safe_dump(json.loads(node.kubeconfig.read_text())))
    pod = protected_pod(node, "web")
    assert any("redirect" in line.lower() for line in node.mgw_rules(pod))


def test_invalid_annotation_fails_add_with_code_7_and_no_rules(node):
    node.add_pod_fixture(pod_fixture("web", annotations={"sidecar.microgateway.airlock.com/serviceMesh": "linkerd"}))
    pod = node.new_pod("web", node.write_conflist(), check=False)
    assert pod.add_output.returncode != 0
    assert "sidecar.microgateway.airlock.com/serviceMesh" in pod.add_output.stderr
    assert "'linkerd'" in pod.add_output.stderr
    assert node.mgw_rules(pod) == []


def test_gc_and_status_1_1_0(node):
    gc = exec_plugin(node, {"CNI_COMMAND": "GC"}, json.dumps(
        plugin_conf(node, **{"cni.dev/valid-attachments": [{"containerID": "x", "ifname": "eth0"}]})).encode())
    assert gc.returncode == 0 and gc.stdout == b""
    gc_old = exec_plugin(node, {"CNI_COMMAND": "GC"}, json.dumps(
        plugin_conf(node, **{"cni.dev/attachments": []})).encode())
    assert gc_old.returncode == 0
    status = exec_plugin(node, {"CNI_COMMAND": "STATUS"}, json.dumps(plugin_conf(node)).encode())
    assert status.returncode == 0 and status.stdout == b""
    node.kubeconfig.rename(node.kubeconfig.with_suffix(".gone"))  # concerns protected pods only: ADD refuses them
    gone = exec_plugin(node, {"CNI_COMMAND": "STATUS"}, json.dumps(plugin_conf(node)).encode())
    assert gone.returncode == 0 and gone.stdout == b"", gone.stdout
    invalid = json.dumps(plugin_conf(node, logLevel="loud")).encode()
    bad = cni_error(exec_plugin(node, {"CNI_COMMAND": "STATUS"}, invalid))
    assert bad["code"] == 7 and "logLevel" in bad["msg"], bad


def test_version_command(node):
    done = exec_plugin(node, {"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "0.4.0"}')
    assert json.loads(done.stdout) == {"cniVersion": "0.4.0",
                                       "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}


def test_nftables_mode_never_instantiates_the_legacy_nat_table():
    """On nft-only kernels the legacy tables cannot exist; where they can, nftables mode must not
    create them either (that would make the node look legacy to `auto` and to other agents)."""
    with Node(backend="nftables") as node:
        node.add_pod_fixture(pod_fixture("web", annotations={"sidecar.microgateway.airlock.com/serviceMesh": "istio"}))
        conflist = node.write_conflist()
        pod = node.new_pod("web", conflist)
        node.cni("check", pod, conflist)
        assert node.nft_table(pod, 4) and node.nft_table(pod, 6)
        assert node.validate(pod)[0] == 0
        node.cni("del", pod, conflist)
        assert node.legacy_tables(pod, 4) == [] and node.legacy_tables(pod, 6) == []
        assert node.nft_table(pod, 4) == "" and node.nft_table(pod, 6) == ""


@pytest.mark.parametrize("before", ["iptables-legacy", "nftables"])
def test_a_node_that_switched_backends_leaves_nothing_behind(before):
    """ADD with the new backend takes the old backend's rules out; DEL removes ours from both."""
    after = "nftables" if before == "iptables-legacy" else "iptables-legacy"
    with Node(backend=before) as node:
        first = protected_pod(node, "web")
        second = protected_pod(node, "api")
        assert node.mgw_rules(first) and node.mgw_rules(second)
        node.backend = after
        conflist = node.write_conflist()
        re_added = exec_plugin(node, cni_env(first), json.dumps(
            {**plugin_conf(node, "1.0.0"), "prevResult": first.result}).encode())
        assert re_added.returncode == 0, re_added.stdout
        legacy_lines = [line for line in node.mgw_rules(first) if line.startswith("-A ")]
        if after == "nftables":
            assert node.nft_table(first) and not legacy_lines
        else:
            assert legacy_lines and node.nft_table(first) == "" and node.nft_table(first, 6) == ""
        client = client_pod(node)
        assert node.connect(client.netns, [target(first, 5555)])[target(first, 5555)].startswith("engine=web")
        node.cni("del", second, conflist)
        assert node.mgw_rules(second) == [] and node.mgw_rules(second, 6) == []
        node.cni("del", first, conflist)
        assert node.mgw_rules(first) == [] and node.mgw_rules(first, 6) == []


def test_auto_follows_the_node():
    """`auto`: nftables on a node without legacy tables; iptables-legacy once the node has one (here
    kube-proxy's stand-in: the legacy filter table created in the node netns)."""
    with Node(backend="auto") as node:
        first = protected_pod(node, "first")
        assert node.nft_table(first) and "nat" not in node.legacy_tables(first)
        node.exec(node.netns, ["iptables-legacy", "-t", "filter", "-L", "-n"])
        second = protected_pod(node, "second")
        assert node.nft_table(second) == "" and any(line.startswith("-A ") for line in node.mgw_rules(second))
        log = node.log_file.read_text()
        assert '"backend": "nftables"' in log and '"backend": "iptables-legacy"' in log
