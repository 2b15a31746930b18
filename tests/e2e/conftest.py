"""Fixtures for the built binaries (scripts/build-binaries.sh), rebuilt when a source is newer."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / "dist" / "bin"
SOURCES = [ROOT / "cni", ROOT / "validator", ROOT / "daemonset", ROOT / "scripts" / "build-binaries.sh",
           ROOT / "pyproject.toml"]


def binary(name: str) -> Path:
    return DIST / name / name


def newest_source() -> float:
    return max(p.stat().st_mtime for src in SOURCES for p in ([src] if src.is_file() else src.rglob("*.py")))


@pytest.fixture(scope="session")
def binaries() -> Path:
    names = ("microgateway-cni", "microgateway-network-validator", "microgateway-cni-installer")
    if not all(binary(n).exists() and binary(n).stat().st_mtime > newest_source() for n in names):
        subprocess.run(["bash", str(ROOT / "scripts" / "build-binaries.sh")], check=True, capture_output=True)
    return DIST
