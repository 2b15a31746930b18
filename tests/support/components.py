"""The real Kubernetes components built by scripts/components.sh (kube-apiserver, kubelet, etcd,
containerd 2, the CNI plugins, crictl, helm, ...) and the versions they are pinned at.

The binaries live in a cache directory keyed by a hash of the build's inputs (scripts/components/ and
the script): `$MGW_COMPONENTS_CACHE` (default /var/cache/microgateway-cni/components)/<key>/bin.
`MGW_COMPONENTS_BIN`, a directory, is looked in first.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "scripts" / "components"
SCRIPT = ROOT / "scripts" / "components.sh"
# In the order scripts/components.sh hashes them.
INPUTS = (SOURCE / "go.mod", SOURCE / "go.sum", SOURCE / "versions.txt", SOURCE / "programs.txt", SCRIPT)
DEFAULT_CACHE = Path("/var/cache/microgateway-cni/components")
BIN_OVERRIDE = "MGW_COMPONENTS_BIN"
CACHE_OVERRIDE = "MGW_COMPONENTS_CACHE"


def _pairs(path: Path, separator: str | None) -> list[tuple[str, str]]:
    """The non-comment lines of a pinned file, split once at `separator` (None: whitespace)."""
    pairs = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, value = line.split(separator, 1)
            pairs.append((name.strip(), value.strip()))
    return pairs


def versions() -> dict[str, str]:
    """name -> version from scripts/components/versions.txt (e.g. "kubernetes": "v1.37.2")."""
    return dict(_pairs(SOURCE / "versions.txt", "="))


def programs() -> dict[str, str]:
    """File name in the bin directory -> Go package it is built from (scripts/components/programs.txt)."""
    return dict(_pairs(SOURCE / "programs.txt", None))


def key() -> str:
    """The cache key scripts/components.sh computes: the first 16 hex digits of sha256 over INPUTS."""
    digest = hashlib.sha256()
    for path in INPUTS:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def bin_dir() -> Path:
    """Where scripts/components.sh puts (or has put) the binaries of the current inputs."""
    return Path(os.environ.get(CACHE_OVERRIDE) or DEFAULT_CACHE) / key() / "bin"


def binary(name: str) -> str:
    """Absolute path of the built component `name` (a name in programs.txt, e.g. "kube-apiserver")."""
    known = programs()
    if name not in known:
        raise ValueError(f"{name!r} is not a component scripts/components.sh builds: {', '.join(known)}")
    override = os.environ.get(BIN_OVERRIDE)
    candidates = [Path(override) / name] if override else []
    built = bin_dir()
    complete = (built.parent / "complete").exists()
    if complete:
        candidates.append(built / name)
    for path in candidates:
        if os.access(path, os.X_OK):
            return str(path.absolute())
    looked = ", ".join(str(p) for p in candidates) or f"{built / name} (no complete build there)"
    raise FileNotFoundError(
        f"component {name} is not built (looked in {looked}): run `bash scripts/setup.sh` "
        f"(it runs scripts/components.sh), or set {BIN_OVERRIDE} to a directory that holds it")


# How each reported component tells its version, and the line of its answer that says it.
VERSION_COMMANDS = {
    "kube-apiserver": ["--version"], "kubelet": ["--version"], "kube-proxy": ["--version"],
    "kubectl": ["version", "--client"], "etcd": ["--version"], "containerd": ["--version"],
    "crictl": ["--version"], "helm": ["version", "--short"], "bridge": [],
}


def reported_versions() -> list[str]:
    """What the built binaries (and Debian's runc) say their versions are: the run's report shows what
    ran, not what versions.txt asks for."""
    lines = []
    for name, args in VERSION_COMMANDS.items():
        done = subprocess.run([binary(name), *args], capture_output=True, text=True, timeout=30, check=False)
        lines.append(f"{name}: {(done.stdout or done.stderr).splitlines()[0].strip()}")
    runc = subprocess.run(["runc", "--version"], capture_output=True, text=True, timeout=30, check=False)
    lines.append(f"runc: {runc.stdout.splitlines()[0].strip() if runc.stdout else 'missing'}")
    return lines
