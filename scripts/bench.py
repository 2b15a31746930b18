"""ADD-path benchmark (a script, not a test): microgateway-cni on each netfilter backend vs Debian's
portmap, same node, same run.

Builds a node in network namespaces (tests/support/node.py), prepares one pod netns with bridge +
host-local, then times whole plugin processes as the runtime runs them: protected ADD+DEL (pod
lookup on the loopback kube-API stand-in included), non-protected ADD, portmap ADD+DEL with one
port mapping, and the validator's verdict. Medians over --runs after --warmup; peak RSS per process.
With --baseline, another build of the plugin (an older commit, say) takes its turn in the same rounds on
the legacy backend, so a change's before/after comes from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cni.pod.netns import enter
from tests.support.node import BACKENDS, VALIDATOR_UID, Node, pod_fixture


def timed(cmd: list[str], env: dict[str, str], stdin: bytes) -> tuple[float, int]:
    """Wall milliseconds and peak RSS (KiB) of one process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.write(stdin)
    proc.stdin.close()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = (time.perf_counter() - start) * 1000
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed: {proc.stdout.read()!r} {proc.stderr.read()!r}")  # type: ignore[union-attr]
    return elapsed, usage.ru_maxrss


Step = Callable[[], tuple[float, int]]


def interleaved(runs: int, warmup: int, steps: dict[str, Step]) -> dict[str, tuple[float, int]]:
    """Median ms and peak RSS per step; the steps take turns in every round, so a slow spell of the
    machine hits all of them alike and the ratios stay fair."""
    samples: dict[str, list[tuple[float, int]]] = {name: [] for name in steps}
    for round_ in range(warmup + runs):
        for name, step in steps.items():
            sample = step()
            if round_ >= warmup:
                samples[name].append(sample)
    return {name: (statistics.median(s[0] for s in got), max(s[1] for s in got)) for name, got in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--plugin", default=str(Path(sys.executable).parent / "microgateway-cni"),
                        help="plugin executable (default: the virtualenv's console script)")
    parser.add_argument("--validator", default="",
                        help="validator executable (default: beside the plugin, or its one-dir bundle's sibling)")
    parser.add_argument("--binaries", action="store_true",
                        help="benchmark the built one-dir binaries in dist/bin (scripts/build-binaries.sh)")
    parser.add_argument("--baseline", default="",
                        help="another plugin executable timed in the same rounds (legacy backend): before/after")
    args = parser.parse_args()
    dist = Path(__file__).resolve().parents[1] / "dist" / "bin"
    if args.binaries:
        args.plugin = str(dist / "microgateway-cni" / "microgateway-cni")
        args.validator = str(dist / "microgateway-network-validator" / "microgateway-network-validator")
    with Node() as node:
        node.write_pods({"default/web": pod_fixture("web"), "default/plain": pod_fixture("plain", protected=False)})
        primary = node.write_conflist(chained=False, name="primary.conflist")
        pod = node.new_pod("web", primary)
        prev = pod.result
        enter(f"/run/netns/{node.netns}")  # the runtime's netns: plugins inherit it, as under containerd
        base_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_PATH": str(node.bin_dir),
                    "CNI_CONTAINERID": pod.container_id, "CNI_NETNS": pod.netns_path, "CNI_IFNAME": "eth0"}
        stdins = {backend: json.dumps({"cniVersion": "1.0.0", "name": "mgw-test", "prevResult": prev,
                                       **node.plugin_entry(logLevel="info", netfilterBackend=backend)}).encode()
                  for backend in BACKENDS}

        def mgw(command: str, name: str, backend: str, plugin: str = args.plugin) -> tuple[float, int]:
            env = {**base_env, "CNI_COMMAND": command,
                   "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}"}
            return timed([plugin], env, stdins[backend])

        add_samples: dict[str, list[float]] = {backend: [] for backend in BACKENDS}
        del_samples: dict[str, list[float]] = {backend: [] for backend in BACKENDS}

        def protected_add_del(backend: str, plugin: str = args.plugin, label: str = "") -> tuple[float, int]:
            add_ms, add_rss = mgw("ADD", "web", backend, plugin)
            del_ms, del_rss = mgw("DEL", "web", backend, plugin)
            add_samples.setdefault(label or backend, []).append(add_ms)
            del_samples.setdefault(label or backend, []).append(del_ms)
            return add_ms + del_ms, max(add_rss, del_rss)

        portmap_conf = {"cniVersion": "1.0.0", "name": "mgw-test", "type": "portmap",
                        "capabilities": {"portMappings": True}, "prevResult": prev,
                        "runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 80,
                                                            "protocol": "tcp"}]}}

        def portmap_add_del() -> tuple[float, int]:
            data = json.dumps(portmap_conf).encode()
            add = timed(["/usr/lib/cni/portmap"], {**base_env, "CNI_COMMAND": "ADD"}, data)
            dele = timed(["/usr/lib/cni/portmap"], {**base_env, "CNI_COMMAND": "DEL"}, data)
            return add[0] + dele[0], max(add[1], dele[1])

        validator = args.validator or str(Path(args.plugin).parent / "microgateway-network-validator")

        def verdict() -> tuple[float, int]:
            mgw("ADD", "web", "nftables")  # the validator needs a configured pod
            try:
                cmd = ["ip", "netns", "exec", pod.netns, "setpriv", f"--reuid={VALIDATOR_UID}",
                       f"--regid={VALIDATOR_UID}", "--clear-groups", "--", validator, "--termination-log", "/dev/null"]
                return timed(cmd, {"PATH": base_env["PATH"]}, b"")
            finally:
                mgw("DEL", "web", "nftables")

        steps: dict[str, Step] = {"portmap": portmap_add_del}
        for backend in BACKENDS:
            steps[f"protected {backend}"] = lambda b=backend: protected_add_del(b)
            steps[f"plain {backend}"] = lambda b=backend: mgw("ADD", "plain", b)
        if args.baseline:
            steps["protected baseline"] = lambda: protected_add_del("iptables-legacy", args.baseline, "baseline")
            steps["plain baseline"] = lambda: mgw("ADD", "plain", "iptables-legacy", args.baseline)
        steps["verdict"] = verdict
        steps["netns_exec"] = lambda: timed(
            ["ip", "netns", "exec", pod.netns, "setpriv", f"--reuid={VALIDATOR_UID}", "--", "true"], {}, b"")
        results = interleaved(args.runs, args.warmup, steps)
        size = os.path.getsize(os.path.realpath(args.plugin))
    bundle = Path(args.plugin).parent / "_internal"

    if bundle.is_dir():
        total = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file()) + size
        print(f"plugin: {args.plugin} (one-dir bundle, {total / 2**20:.1f} MiB on disk)")
    else:
        print(f"plugin: {args.plugin} ({size} bytes{', a launcher script' if size < 4096 else ''})")
    print(f"median of {args.runs} interleaved rounds after {args.warmup} warm-up rounds; peak RSS is the max over "
          f"the runs")
    portmap_ms, portmap_rss = results["portmap"]
    (verdict_ms, _), (netns_exec_ms, _) = results["verdict"], results["netns_exec"]
    runs = slice(args.warmup, None)  # the warm-up rounds' samples are not counted
    print(f"portmap ADD+DEL (1 mapping)              {portmap_ms:8.1f} ms   peak RSS {portmap_rss / 1024:6.1f} MiB")
    for backend in (*BACKENDS, "baseline") if args.baseline else BACKENDS:
        protected_ms, protected_rss = results[f"protected {backend}"]
        plain_ms, plain_rss = results[f"plain {backend}"]
        print(f"[baseline {args.baseline}, iptables-legacy]" if backend == "baseline" else f"[{backend}]")
        print(f"  protected ADD+DEL                      {protected_ms:8.1f} ms   peak RSS "
              f"{protected_rss / 1024:6.1f} MiB   ratio {protected_ms / portmap_ms:.2f} (target <= 0.85)")
        print(f"    of which ADD                         {statistics.median(add_samples[backend][runs]):8.1f} ms")
        print(f"    of which DEL                         {statistics.median(del_samples[backend][runs]):8.1f} ms")
        print(f"  non-protected ADD                      {plain_ms:8.1f} ms   peak RSS "
              f"{plain_rss / 1024:6.1f} MiB   ratio {plain_ms / portmap_ms:.2f} (target <= 0.45)")
    print(f"validator verdict (working pod, nftables) {verdict_ms - netns_exec_ms:7.1f} ms   "
          f"(process {verdict_ms:.1f} ms minus {netns_exec_ms:.1f} ms for ip netns exec + setpriv)")


if __name__ == "__main__":
    main()
