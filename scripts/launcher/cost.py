"""What the static launcher costs per start: CNI VERSION of the plugin bundle three ways, interleaved.

  launcher   dist/bin/microgateway-cni/microgateway-cni (what the kubelet runs)
  loader     the bundled loader started directly on the bootloader (the launcher's exec, without it)
  host       the bootloader on the host's loader and glibc (a bundle without its own C library; only
             where the host's glibc is new enough)

Rounds run the three in turn, so a slow spell of a shared machine hits all of them alike.
Usage: python3 scripts/launcher/cost.py [ROUNDS]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

BUNDLE = os.path.join(os.path.dirname(__file__), "..", "..", "dist", "bin", "microgateway-cni")


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    bundle = os.path.realpath(BUNDLE)
    internal = os.path.join(bundle, "_internal")
    bootloader = os.path.join(bundle, "microgateway-cni.bootloader")
    variants = {
        "launcher": [os.path.join(bundle, "microgateway-cni")],
        "loader": [os.path.join(internal, "ld-linux-x86-64.so.2"), "--library-path", internal, bootloader],
        "host": [bootloader],
    }
    env = {"CNI_COMMAND": "VERSION", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, argv in variants.items():
            start = time.perf_counter()
            done = subprocess.run(argv, input=b'{"cniVersion": "1.0.0"}', env=env, capture_output=True)
            times[name].append(time.perf_counter() - start)
            if done.returncode != 0:
                raise SystemExit(f"{name} failed: {done.stdout!r} {done.stderr!r}")
    medians = {name: statistics.median(values) * 1000 for name, values in times.items()}
    for name, median in medians.items():
        print(f"{name:9} median {median:6.2f} ms  ({rounds} runs)")
    print(f"launcher cost (launcher - loader): {medians['launcher'] - medians['loader']:+.2f} ms median")
    print(f"bundled loader and glibc vs the host's (loader - host): {medians['loader'] - medians['host']:+.2f} ms")


if __name__ == "__main__":
    main()
