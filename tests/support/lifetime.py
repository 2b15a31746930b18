"""Harness objects that start something on the machine and must remove all of it afterwards."""

from __future__ import annotations

from typing import Self


class Started:
    """A context manager over start() and close(): a start that fails half way is closed before its
    error goes on, so nothing it made is left behind."""

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
