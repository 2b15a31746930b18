"""Shared steps of the integration tests: pods with workloads, sweeps, direct plugin exec."""

from __future__ import annotations

import json
import random
import subprocess
import sys

from tests.support.node import NFT_FAMILY, VALIDATOR_UID, Node, Pod, pod_fixture

APP_PORTS = [8080, 8081, 9090, 19001]
EXEMPT = {13378, 19000, 19001, 19002}


def protected_pod(node: Node, name: str, annotations: dict[str, str] | None = None, cni_version: str = "1.0.0",
                  istio: bool = False) -> Pod:
    node.add_pod_fixture(pod_fixture(name, annotations=annotations))
    pod = node.new_pod(name, node.write_conflist(cni_version=cni_version))
    node.start_workloads(pod, APP_PORTS, istio=istio)
    return pod


def client_pod(node: Node) -> Pod:
    return node.new_pod("client", node.write_conflist(chained=False, name="client.conflist"))


def target(pod: Pod, port: int, family: int = 4) -> str:
    address = pod.ip(family)
    return f"[{address}]:{port}" if family == 6 else f"{address}:{port}"


def sweep_ports(count: int = 150, seed: int = 7) -> list[int]:
    """Many ports across the whole range, the app's among them, none of the Engine's own."""
    rng = random.Random(seed)
    ports = {1, 22, 80, 443, 8080, 9090, 19003, 65535, *rng.sample(range(1, 65536), count)}
    return sorted(ports - EXEMPT)


def probe_from_inside(node: Node, pod: Pod, targets: list[str], uid: int = VALIDATOR_UID) -> dict[str, str]:
    return node.connect(pod.netns, targets, uid=uid)


def exec_plugin(node: Node, env: dict[str, str], stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    """Run the plugin directly (as a runtime would), in the node netns, with a clean environment."""
    plugin = str(node.bin_dir / "microgateway-cni")
    full_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_PATH": str(node.bin_dir), **env}
    return subprocess.run(["ip", "netns", "exec", node.netns, plugin], input=stdin, env=full_env,
                          capture_output=True, timeout=60)


def plugin_conf(node: Node, version: str = "1.1.0", **extra: object) -> dict:
    return {"cniVersion": version, "name": "mgw-test", **node.plugin_entry(), **extra}


def cni_error(done: subprocess.CompletedProcess[bytes]) -> dict:
    """The plugin's stdout must be exactly one CNI error object, exit 1, and no traceback anywhere."""
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert b"Traceback" not in done.stdout + done.stderr
    error = json.loads(done.stdout)
    assert set(error) <= {"cniVersion", "code", "msg", "details"} and {"code", "msg"} <= set(error)
    for line in done.stderr.decode().splitlines():
        json.loads(line)  # logs are JSON lines
    return error


PYTHON = sys.executable


def nft_handle(node: Node, pod: Pod, family: int, chain: str, needle: str) -> str:
    """The handle of the first rule in one of our nft chains whose listing contains needle."""
    listing = node.exec(pod.netns, ["nft", "-a", "list", "chain", NFT_FAMILY[family], "microgateway", chain]).stdout
    for line in listing.splitlines():
        if needle in line and "# handle " in line:
            return line.rsplit("# handle ", 1)[1].strip()
    raise LookupError(f"no rule with {needle!r} in {chain}:\n{listing}")


# What an operator or another agent might do to our rules, in each backend's own tool.
TAMPERING: dict[str, tuple[list[list[str]], list[list[str]]]] = {
    # name: (iptables-legacy -t nat argument lists, nft argument lists with {family} and {handle:CHAIN:needle})
    "flush inbound": ([["-F", "MGW_INBOUND"]], [["flush", "chain", "{family}", "microgateway", "MGW_INBOUND"]]),
    "delete redirect": ([["-D", "MGW_INBOUND", "-p", "tcp", "-j", "REDIRECT", "--to-ports", "13378"]],
                        [["delete", "rule", "{family}", "microgateway", "MGW_INBOUND", "handle",
                          "{handle:MGW_INBOUND:redirect to :13378}"]]),
    "redirect elsewhere": ([["-D", "MGW_INBOUND", "-p", "tcp", "-j", "REDIRECT", "--to-ports", "13378"],
                            ["-A", "MGW_INBOUND", "-p", "tcp", "-j", "REDIRECT", "--to-ports", "13379"]],
                           [["replace", "rule", "{family}", "microgateway", "MGW_INBOUND", "handle",
                             "{handle:MGW_INBOUND:redirect to :13378}", "meta", "l4proto", "tcp", "redirect", "to",
                             ":13379"]]),
    "replace a return": ([["-R", "MGW_INBOUND", "1", "-p", "tcp", "--dport", "13379", "-j", "RETURN"]],
                         [["replace", "rule", "{family}", "microgateway", "MGW_INBOUND", "handle",
                           "{handle:MGW_INBOUND:return}", "tcp", "dport", "13379", "return"]]),
    "insert a return": ([["-I", "MGW_INBOUND", "1", "-p", "tcp", "--dport", "8080", "-j", "RETURN"]],
                        [["insert", "rule", "{family}", "microgateway", "MGW_INBOUND", "tcp", "dport", "8080",
                          "return"]]),
    "delete prerouting jump": ([["-D", "PREROUTING", "-p", "tcp", "-j", "MGW_PREROUTING"]],
                               [["delete", "rule", "{family}", "microgateway", "nat-PREROUTING", "handle",
                                 "{handle:nat-PREROUTING:jump MGW_PREROUTING}"]]),
    "foreign rule": ([["-I", "MGW_OUTPUT", "1", "-p", "tcp", "-m", "comment", "--comment", "by hand", "-j", "RETURN"]],
                     [["insert", "rule", "{family}", "microgateway", "MGW_OUTPUT", "meta", "l4proto", "tcp", "counter",
                       "return"]]),
    "output loop": ([["-A", "MGW_OUTPUT", "-p", "tcp", "-j", "MGW_INBOUND"]],
                    [["add", "rule", "{family}", "microgateway", "MGW_OUTPUT", "meta", "l4proto", "tcp", "jump",
                      "MGW_INBOUND"]]),
}


def tamper(node: Node, pod: Pod, name: str, family: int = 4) -> None:
    """Change our rules the way TAMPERING[name] says, with the tool of the node's backend."""
    legacy, nft = TAMPERING[name]
    if node.backend == "iptables-legacy":
        tool = "iptables-legacy" if family == 4 else "ip6tables-legacy"
        for args in legacy:
            node.exec(pod.netns, [tool, "-t", "nat", *args])
        return
    for args in nft:
        resolved = []
        for arg in args:
            if arg == "{family}":
                arg = NFT_FAMILY[family]
            elif arg.startswith("{handle:"):
                chain, needle = arg[len("{handle:"):-1].split(":", 1)
                arg = nft_handle(node, pod, family, chain, needle)
            resolved.append(arg)
        node.exec(pod.netns, ["nft", *resolved])
