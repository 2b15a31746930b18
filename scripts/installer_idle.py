"""Idle cost of the installer daemon (a measurement script, not a test): CPU and RSS while nothing changes.

Runs the installer on a simulated node (tests/support) with the repair watch on, waits until it is
ready, then samples /proc for --seconds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.installer import INSTALLER, Daemon, Host
from tests.support.node import Node, pod_fixture, wait_for


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--installer", default=INSTALLER)
    args = parser.parse_args()
    with Node() as node:
        node.write_pods({f"default/p{i}": pod_fixture(f"p{i}") for i in range(20)})
        host = Host.for_node(node)
        shutil.copy(Path(__file__).resolve().parents[1] / "tests/fixtures/cni/10-flannel.conflist", node.conf_dir)
        daemon = Daemon(node, host, installer=args.installer)
        assert wait_for(daemon.ready, timeout=30), daemon.log()
        time.sleep(2)
        # ip netns exec execs the installer in place: the Popen pid is the installer's.
        pid = daemon.proc.pid
        start_cpu, start = cpu_seconds(pid), time.monotonic()
        peak = 0.0
        while time.monotonic() - start < args.seconds:
            peak = max(peak, rss_mib(pid))
            time.sleep(0.5)
        cpu = (cpu_seconds(pid) - start_cpu) / (time.monotonic() - start)
        print(f"installer {args.installer}")
        print(f"idle over {args.seconds:.0f} s with 20 pods on the node: CPU {cpu * 100:.2f}% of one core, "
              f"RSS {rss_mib(pid):.1f} MiB (peak {peak:.1f} MiB)")
        daemon.stop()


if __name__ == "__main__":
    main()
