"""Python code run inside a network namespace: a thread that joined it (setns is per thread).

The installer's own API client and the harness's readiness checks reach servers that listen only inside a
test's namespace this way, in-process, without a child process per call.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from typing import Any

CLONE_NEWNET = 0x40000000


class InNetns(threading.Thread):
    """fn run in a thread that joined the network namespace `netns` (a name under /run/netns)."""

    def __init__(self, netns: str, fn: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.netns = netns
        self.fn = fn
        self.value: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{self.netns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                self.error = OSError(ctypes.get_errno(), f"setns {self.netns}")
                return
        finally:
            os.close(fd)
        try:
            self.value = self.fn()
        except BaseException as exc:
            self.error = exc

    def result(self, timeout: float | None = None) -> Any:
        self.join(timeout)
        if self.is_alive():
            raise TimeoutError(f"still running after {timeout}s")
        if self.error is not None:
            raise self.error
        return self.value


def in_netns(netns: str, fn: Callable[[], Any], timeout: float | None = None) -> Any:
    """fn's result (or its exception), computed inside `netns`."""
    thread = InNetns(netns, fn)
    thread.start()
    return thread.result(timeout)
