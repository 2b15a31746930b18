"""Lines a test tier reports at the end of a run (figures worth reading in CI's output, not asserts), by tier."""

from __future__ import annotations

TIERS: dict[str, list[str]] = {"node": []}
LINES = TIERS["node"]  # the node tier's


def add(line: str, tier: str = "node") -> None:
    TIERS.setdefault(tier, []).append(line)
