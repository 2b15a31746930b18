"""The one clock of the installer: the revert back-off, the taint gate's back-off and its elapsed time."""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    """What the installer and the taint gate need of time; tests pass a clock that never sleeps."""

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float, /) -> bool:
        """Pause; True when the installer is stopping, which ends the pause at once."""
        ...


class SystemClock:
    """time.monotonic, and pauses that end when `stop` is set (SIGTERM); without one, plain sleeps."""

    def __init__(self, stop: threading.Event | None = None) -> None:
        self._stop = stop or threading.Event()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float, /) -> bool:
        return self._stop.wait(seconds)
