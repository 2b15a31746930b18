"""Forked children that report one outcome over a pipe: the process machinery under the pod-netns
worker (cni/pod/runner.py) and the legacy backend's child per family (`fan_out`).

An outcome is ("ok", value) or ("error", (code, msg, details)), pickled: a CniError raised in a child
is raised again in the parent, and nothing escapes as a traceback.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

from cni.errors import NETFILTER_FAILURE, CniError

TYPE_CHECKING = False  # annotations only: typing stays off the per-pod path (cni/records.py)
if TYPE_CHECKING:
    from typing import Any

    Outcome = tuple[str, Any]

# pickle (and signal for SIGKILL) are left out of the module imports: an unprotected pod's ADD only
# forks and kills a worker and need not pay for them (-X importtime).
SIGKILL = 9


def read_all(fd: int) -> bytes:
    with os.fdopen(fd, "rb") as pipe:
        return pipe.read()


def guarded(body: Callable[[], Any], label: str) -> Outcome:
    """body()'s outcome; any exception becomes an error outcome, labelled when it is no CniError."""
    try:
        return "ok", body()
    except CniError as exc:
        return "error", (exc.code, exc.msg, exc.details)
    except BaseException as exc:
        return "error", (NETFILTER_FAILURE, f"{label}: {type(exc).__name__}: {exc}", "")


def report(fd: int, outcome: Outcome) -> None:
    import pickle

    with os.fdopen(fd, "wb") as pipe:
        pipe.write(pickle.dumps(outcome))


def unwrap(outcome: Outcome) -> Any:
    """The outcome's value, or its CniError raised."""
    kind, value = outcome
    if kind == "error":
        raise CniError(*value)
    return value


def collect(data: bytes, pid: int, label: str) -> Any:
    """Reap the child and unwrap what it reported; a child that reported nothing died."""
    _, status = os.waitpid(pid, 0)
    if not data:
        raise CniError(NETFILTER_FAILURE, f"{label} worker died (wait status {status})")
    import pickle

    return unwrap(pickle.loads(data))


def fork() -> int:
    try:
        return os.fork()
    except OSError as exc:
        raise CniError(NETFILTER_FAILURE, f"cannot fork a netfilter worker: {exc}") from None


def fan_out(jobs: list[tuple[int, Callable[..., Any], tuple[Any, ...]]]) -> dict[int, Any | CniError]:
    """Run each (family, function, args) in a forked child of its own, all in parallel.

    Never in this process: whatever family a job binds libxtables to would stay bound here, and every
    later child would inherit it. Every family's outcome comes back, its CniError included, so the
    caller can undo what succeeded."""
    children = []
    for family, function, args in jobs:
        read_end, write_end = os.pipe()
        pid = fork()
        if pid == 0:
            try:
                os.close(read_end)
                report(write_end, guarded(functools.partial(function, *args), f"IPv{family}"))
            finally:
                os._exit(0)
        os.close(write_end)
        children.append((family, pid, read_end))
    outcomes: dict[int, Any | CniError] = {}
    for family, pid, read_end in children:
        try:
            outcomes[family] = collect(read_all(read_end), pid, f"IPv{family}")
        except CniError as exc:
            outcomes[family] = exc
    return outcomes
