"""Lines a test tier reports at the end of a run (figures worth reading in CI's output, not asserts)."""

from __future__ import annotations

LINES: list[str] = []


def add(line: str) -> None:
    LINES.append(line)
