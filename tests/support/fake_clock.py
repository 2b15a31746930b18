"""The installer's and the taint gate's clock in tests (daemonset.clock.Clock): time moves only by sleeping."""

from __future__ import annotations

from collections.abc import Callable


class FakeClock:
    """monotonic() advances only by what sleep() was asked for, which is recorded; `on_sleep(n)` changes the
    world during the n-th sleep and returns True to end it as SIGTERM would."""

    def __init__(self, on_sleep: Callable[[int], bool] = lambda n: False) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.on_sleep = on_sleep

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float, /) -> bool:
        self.sleeps.append(seconds)
        self.now += seconds
        return self.on_sleep(len(self.sleeps))
