"""CNI error codes (spec 0.3.0-1.1.0) and the one exception type the plugin reports through."""

from __future__ import annotations

INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
STATUS_NOT_AVAILABLE = 50
STATUS_NO_NETWORK = 51
# Plugin-specific codes start at 100.
NETFILTER_FAILURE = 100
CHECK_MISMATCH = 101


class CniError(Exception):
    """An error the runtime must see as a CNI error object, never as a traceback."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details
