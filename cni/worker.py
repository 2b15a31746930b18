"""Forked workers: the process machinery under cni/applier.py and the legacy backend's per-family work.

A backend's preparation (python-iptables' import) takes about as long as the pod lookup on the API.
The Worker is forked before that lookup and prepares meanwhile on another core; once the parent knows
the pod is protected it hands over one job, which runs in the pod netns. A pod that turns out not to
be protected has its worker killed, jobless, so it never touched anything: some CPU on another core,
traded for a shorter protected ADD (scripts/bench.sh shows both). Should the parent die first, the
worker reads the end of the job pipe and exits.

libxtables registers an extension for the first family that loads it, so one process cannot use
REDIRECT for IPv4 and IPv6 (python-iptables issues #135, #316, #325; reproduced here): fan_out forks a
child per family from a worker that never does family work itself. The import leaves no family
state behind, so every child starts clean without importing again, however many operations the
worker runs.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

from cni.errors import NETFILTER_FAILURE, CniError

TYPE_CHECKING = False  # typing is kept off the run-time path (cni/records.py): annotations only
if TYPE_CHECKING:
    from typing import Any

# pickle (and signal for SIGKILL) are left out of the module imports: an unprotected pod's ADD only
# forks and kills a worker and need not pay for them (-X importtime).
SIGKILL = 9


def _read_all(fd: int) -> bytes:
    with os.fdopen(fd, "rb") as pipe:
        return pipe.read()


def _guarded(body: Callable[[], Any], label: str) -> tuple[str, Any]:
    """("ok", value) or ("error", (code, msg, details)): nothing escapes as a traceback."""
    try:
        return "ok", body()
    except CniError as exc:
        return "error", (exc.code, exc.msg, exc.details)
    except BaseException as exc:
        return "error", (NETFILTER_FAILURE, f"{label}: {type(exc).__name__}: {exc}", "")


def _report(fd: int, outcome: tuple[str, Any]) -> None:
    import pickle

    with os.fdopen(fd, "wb") as pipe:
        pipe.write(pickle.dumps(outcome))


def _raise_or_return(outcome: tuple[str, Any]) -> Any:
    kind, value = outcome
    if kind == "error":
        raise CniError(*value)
    return value


def _outcome(data: bytes, pid: int, label: str) -> Any:
    _, status = os.waitpid(pid, 0)
    if not data:
        raise CniError(NETFILTER_FAILURE, f"{label} worker died (wait status {status})")
    import pickle

    return _raise_or_return(pickle.loads(data))


def _fork() -> int:
    try:
        return os.fork()
    except OSError as exc:
        raise CniError(NETFILTER_FAILURE, f"cannot fork a netfilter worker: {exc}") from None


class Worker:
    """A child that runs `prepare` at once and then at most one job, in the netns the job names."""

    def __init__(self, prepare: Callable[[], Any]) -> None:
        self._prepare = prepare
        self._pid: int | None = None
        self._jobs = self._outcomes = -1
        try:
            self._spawn()
        except CniError:
            self._pid = None  # fork failed: try again when a job comes, so an unprotected pod never fails here

    def _spawn(self) -> None:
        job_read, job_write = os.pipe()
        outcome_read, outcome_write = os.pipe()
        pid = _fork()
        if pid == 0:
            os.close(job_write)
            os.close(outcome_read)
            os.dup2(2, 1)  # libxtables may print; stdout belongs to the CNI result alone
            try:
                self._serve(job_read, outcome_write)
            finally:
                os._exit(0)
        os.close(job_read)
        os.close(outcome_write)
        self._pid, self._jobs, self._outcomes = pid, job_write, outcome_read

    def _serve(self, job_read: int, outcome_write: int) -> None:
        prepared = _guarded(self._prepare, "netfilter")
        job = _read_all(job_read)
        if not job:
            return
        import pickle

        netns, function, args = pickle.loads(job)

        def body() -> Any:
            from cni.netns import enter_pod

            _raise_or_return(prepared)
            enter_pod(netns)
            return function(*args)

        _report(outcome_write, _guarded(body, "netfilter"))

    def run(self, netns: str, function: Callable[..., Any], *args: Any) -> Any:
        """function(*args) in the worker, inside netns; its result, or its CniError raised here."""
        if self._pid is None:
            self._spawn()
        assert self._pid is not None
        import pickle

        with os.fdopen(self._jobs, "wb") as pipe:
            pipe.write(pickle.dumps((netns, function, args)))
        pid, self._pid = self._pid, None
        return _outcome(_read_all(self._outcomes), pid, "netfilter")

    def dismiss(self) -> None:
        """Stop an unused worker at once, mid-import if need be: it has no job, so it touched nothing."""
        if self._pid is None:
            return
        os.kill(self._pid, SIGKILL)
        os.close(self._jobs)
        os.close(self._outcomes)
        os.waitpid(self._pid, 0)
        self._pid = None

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.dismiss()


def fan_out(jobs: list[tuple[int, Callable[..., Any], tuple[Any, ...]]]) -> dict[int, Any | CniError]:
    """Run each (family, function, args) in a forked child of its own, all in parallel.

    Never in this process: whatever family a job binds libxtables to would stay bound here, and every
    later child would inherit it. Every family's outcome comes back, its CniError included, so the
    caller can undo what succeeded."""
    children = []
    for family, function, args in jobs:
        read_end, write_end = os.pipe()
        pid = _fork()
        if pid == 0:
            try:
                os.close(read_end)
                _report(write_end, _guarded(functools.partial(function, *args), f"IPv{family}"))
            finally:
                os._exit(0)
        os.close(write_end)
        children.append((family, pid, read_end))
    outcomes: dict[int, Any | CniError] = {}
    for family, pid, read_end in children:
        try:
            outcomes[family] = _outcome(_read_all(read_end), pid, f"IPv{family}")
        except CniError as exc:
            outcomes[family] = exc
    return outcomes
