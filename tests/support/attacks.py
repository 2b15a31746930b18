"""Driving the attacker program (tests/support/programs/attacker.py) and reading what the exposed
program (tests/support/programs/exposed.py) heard."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tests.support.node import Node


@dataclass
class ProgramOutput:
    """A process's stdout lines, read as they come so the process never blocks on a full pipe."""

    proc: subprocess.Popen[str]
    lines: list[list[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.split())

    def wait_for(self, wanted: set[tuple[str, ...]], timeout: float = 5.0) -> set[tuple[str, ...]]:
        """The wanted events still missing after up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while (missing := wanted - {tuple(line) for line in self.lines}) and time.monotonic() < deadline:
            time.sleep(0.05)
        return missing


def attack(node: Node, netns: str, plan: dict[str, Any], uid: int | None = None) -> dict[str, dict[str, str]]:
    """Run the attacker in `netns` (as root unless `uid`) with `plan`: what answered, per protocol and id."""
    done = node.exec(netns, [sys.executable, "-m", "tests.support.programs.attacker"], uid=uid, input=json.dumps(plan),
                     timeout=240)
    result: dict[str, dict[str, str]] = json.loads(done.stdout)
    return result
