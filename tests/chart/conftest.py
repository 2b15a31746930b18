"""The chart tier: charts/microgateway-cni through helm and kubectl as subprocesses; no root, no cluster."""

from __future__ import annotations

import os

import pytest

from tests.support import components


@pytest.fixture(scope="session", autouse=True)
def helm_binary() -> str:
    """Every test here runs helm: say once, clearly, when setup has not provided it."""
    path = components.binary("helm")
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is not an executable; run `bash scripts/setup.sh`")
    return path
