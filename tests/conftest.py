"""Shared fixtures. Integration tests need root and network namespaces; everything they create is
removed by the Node fixture, also when a test fails."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.node import DRIVER, Node


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in item.nodeid.split("/") or "e2e" in item.nodeid.split("/"):
            item.add_marker(pytest.mark.root)


@pytest.fixture
def node() -> Iterator[Node]:
    if os.geteuid() != 0:
        pytest.fail("integration tests need root (network namespaces, iptables)")
    assert DRIVER.exists(), "libcni driver not built; run scripts/setup.sh"
    with Node() as n:
        yield n


@pytest.fixture
def node6() -> Iterator[Node]:
    with Node(families=(6,)) as n:
        yield n


@pytest.fixture
def node46() -> Iterator[Node]:
    with Node(families=(4, 6)) as n:
        yield n
