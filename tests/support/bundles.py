"""The built bundles (scripts/build-binaries.sh) that nodes run, rebuilt when a source is newer.

MGW_TEST_BINARIES=1 points the node harness at them instead of the virtualenv's console scripts, so
the plugin-facing integration tests run against what ships (docs/design.md, "Ship what is tested").
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / "dist" / "bin"
NAMES = ("microgateway-cni", "microgateway-network-validator", "microgateway-cni-installer")
SOURCES = [ROOT / "cni", ROOT / "validator", ROOT / "daemonset", ROOT / "scripts" / "build-binaries.sh",
           ROOT / "scripts" / "pyinstaller", ROOT / "scripts" / "launcher", ROOT / "pyproject.toml"]
SWITCH = "MGW_TEST_BINARIES"


def binary(name: str) -> Path:
    """The file a node executes: the bundle's static launcher."""
    return DIST / name / name


def selected() -> bool:
    return os.environ.get(SWITCH) == "1"


def _newest_source() -> float:
    return max(p.stat().st_mtime for src in SOURCES
               for p in ([src] if src.is_file() else (f for f in src.rglob("*") if f.is_file())))


@functools.cache
def ensure_built() -> Path:
    """Build the bundles unless every one is newer than every source (once per test session)."""
    if not all(binary(n).exists() and binary(n).stat().st_mtime > _newest_source() for n in NAMES):
        done = subprocess.run(["bash", str(ROOT / "scripts" / "build-binaries.sh")], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"scripts/build-binaries.sh failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return DIST
