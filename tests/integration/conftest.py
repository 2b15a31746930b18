"""Fixtures shared by the integration tests of one subject (the node fixture is in tests/conftest.py)."""

from __future__ import annotations

import pytest

from tests.support.installer import Host
from tests.support.node import Node


@pytest.fixture
def node_host(node: Node) -> tuple[Node, Host]:
    """The node and its host root, for the installer tests."""
    return node, Host.for_node(node)
