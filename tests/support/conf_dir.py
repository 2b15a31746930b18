"""Watching a CNI conf dir through every file operation of the installer, as a runtime reloading on each
inotify event would see it (containerd reads the directory at every event, from what is there)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from daemonset import conflist, files, foreign_files


def write_as_agent(path: Path, data: bytes | None) -> None:
    """What a primary agent does: a temporary file renamed over its conflist (None: it removes it)."""
    if data is None:
        path.unlink()
        return
    temp = path.with_name(f".{path.name}.agent.tmp")
    temp.write_bytes(data)
    os.replace(temp, path)


def loadable(directory: Path) -> bool:
    """libcni would find a configuration: some file with a CNI extension that parses."""
    for entry in os.scandir(directory):
        if entry.name.endswith(conflist.CONF_EXTENSIONS):
            data = files.read(entry.path)
            if data is not None and conflist.parse(entry.name, data) is not None:
                return True
    return False


class ConfDirWatch:
    """Counts the moments, after each rename, link, unlink, replace and exchange, at which `holds()` is
    false; an agent may write its file just before and just after each exchange (a race, made certain)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, holds: Callable[[], bool], agent_file: Path | None = None,
                 before_exchange: list[bytes | None] | None = None,
                 after_exchange: list[bytes | None] | None = None) -> None:
        self.holds, self.agent_file = holds, agent_file
        self.before, self.after = list(before_exchange or []), list(after_exchange or [])
        self.missing = 0
        self.agent_removed = False
        for name in ("rename", "link", "unlink", "replace"):
            monkeypatch.setattr(os, name, self._watching(getattr(os, name)))
        real_exchange = foreign_files._exchange

        def exchange(a: str, b: str) -> None:
            self._agent_writes(self.before)
            real_exchange(a, b)
            self._check()
            self._agent_writes(self.after)

        monkeypatch.setattr(foreign_files, "_exchange", exchange)

    def _agent_writes(self, scheduled: list[bytes | None]) -> None:
        if scheduled and self.agent_file is not None:
            data = scheduled.pop(0)
            self.agent_removed |= data is None
            if data is not None or self.agent_file.exists():
                write_as_agent(self.agent_file, data)

    def _watching(self, call: Callable[..., Any]) -> Callable[..., Any]:
        def watched(*args: Any, **kwargs: Any) -> Any:
            result = call(*args, **kwargs)
            self._check()
            return result
        return watched

    def _check(self) -> None:
        self.missing += not self.agent_removed and not self.holds()
