"""The legacy (x_tables) tables of the current netns, as the kernel lists them in /proc."""

from __future__ import annotations

TABLE_NAMES = ("/proc/self/net/ip_tables_names", "/proc/self/net/ip6_tables_names")


def _table_names(path: str) -> set[str]:
    try:
        with open(path) as names:
            return set(names.read().split())
    except FileNotFoundError:  # the file exists only while the x_tables modules are loaded
        return set()


def legacy_tables(family: int) -> set[str]:
    """The legacy tables that exist in the current netns. Nothing of ours can be in a table that does
    not, and opening one would make the kernel create it."""
    return _table_names(TABLE_NAMES[0 if family == 4 else 1])


def node_uses_legacy(paths: tuple[str, ...] = TABLE_NAMES) -> bool:
    """True when the current netns has any legacy x_tables table."""
    try:
        return any(_table_names(path) for path in paths)
    except OSError:  # unreadable: no evidence that the node uses legacy
        return False
