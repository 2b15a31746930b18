"""JSON-lines logging to stderr and the configured log file; stdout is reserved for the CNI result.

Written by hand on purpose: `import logging` plus python-json-logger are imports on a path that runs
for every pod start (python -X importtime shows them), for one dict per line.
"""

from __future__ import annotations

import json
import os
import sys
import time

TYPE_CHECKING = False  # annotations only: typing stays off the per-pod path (cni/records.py)
if TYPE_CHECKING:
    from typing import Any

LEVELS = {"debug": 10, "info": 20, "warn": 30, "error": 40}


class Logger:
    def __init__(self, level: str = "info", path: str = "", context: dict[str, Any] | None = None) -> None:
        self.threshold = LEVELS.get(level, 20)
        self.path = path
        self.context = dict(context or {})

    def log(self, level: str, msg: str, **fields: Any) -> None:
        if LEVELS[level] < self.threshold:
            return
        record = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z",
                  "level": level, "msg": msg, **self.context, **fields}
        line = json.dumps(record, default=str) + "\n"
        sys.stderr.write(line)
        sys.stderr.flush()
        if self.path:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
                try:
                    os.write(fd, line.encode())
                finally:
                    os.close(fd)
            except OSError as exc:
                warning = {"level": "warn", "msg": f"cannot write log file {self.path}: {exc}"}
                sys.stderr.write(json.dumps(warning) + "\n")
                self.path = ""

    def debug(self, msg: str, **fields: Any) -> None:
        self.log("debug", msg, **fields)

    def info(self, msg: str, **fields: Any) -> None:
        self.log("info", msg, **fields)

    def warn(self, msg: str, **fields: Any) -> None:
        self.log("warn", msg, **fields)

    def error(self, msg: str, **fields: Any) -> None:
        self.log("error", msg, **fields)
