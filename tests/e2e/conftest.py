"""Fixtures for the built binaries (scripts/build-binaries.sh), rebuilt when a source is newer."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.bundles import ensure_built


@pytest.fixture(scope="session")
def binaries() -> Path:
    return ensure_built()
