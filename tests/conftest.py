"""Shared fixtures. Integration, e2e and node tests need root and network namespaces; everything they
create is removed by the Node fixture (and the node tier's Containerd), also when a test fails."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.node import BACKENDS, DRIVER, Node


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if {"integration", "e2e", "node", "cluster"} & set(item.nodeid.split("/")):
            item.add_marker(pytest.mark.root)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked `backends` run once per netfilter backend (the plugin's netfilterBackend)."""
    if metafunc.definition.get_closest_marker("backends") and "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", BACKENDS, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The backend the node's plugin entry forces; unmarked tests get the legacy one."""
    return getattr(request, "param", BACKENDS[0])


@pytest.fixture
def node(backend: str) -> Iterator[Node]:
    if os.geteuid() != 0:
        pytest.fail("integration tests need root (network namespaces, iptables)")
    assert DRIVER.exists(), "libcni driver not built; run scripts/setup.sh"
    with Node(backend=backend) as n:
        yield n


@pytest.fixture
def node6(backend: str) -> Iterator[Node]:
    with Node(families=(6,), backend=backend) as n:
        yield n


@pytest.fixture
def node46(backend: str) -> Iterator[Node]:
    with Node(families=(4, 6), backend=backend) as n:
        yield n
