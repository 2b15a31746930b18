"""Running one job inside a pod's network namespace, like containernetworking's ns.WithNetNSPath: two
runners with one method, `run(netns, function, *args)`, so their caller never asks which it has.

- Worker: a forked child that prepares a backend at once (python-iptables' import, about as long as
  the pod lookup on the API) and meanwhile waits for its one job; the parent never enters the pod
  netns. A pod that turns out not to be protected has its worker killed, jobless, so it never
  touched anything: some CPU on another core, traded for a shorter protected ADD (scripts/bench.sh
  shows both). Should the parent die first, the worker reads the end of the job pipe and exits.
- InProcess: this process prepares, enters the pod netns and runs the job itself. For a backend with
  nothing to prepare (nftables) and for DEL: there is no import to overlap with the lookup, and a
  fork, the pickled hand-over and the reaping would only add to every command.

Neither goes back to the netns it came from: the job is the last netfilter work of the process.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

from cni import forks
from cni.errors import CniError

TYPE_CHECKING = False  # annotations only: typing stays off the per-pod path (cni/records.py)
if TYPE_CHECKING:
    from typing import Any

    Enter = Callable[[str], None]


def _nothing() -> None:
    """A preparation that prepares nothing."""


def _enter_netns(path: str) -> None:
    from cni.pod.netns import enter

    enter(path)


class InProcess:
    """Runs each job in this process, inside the netns it names."""

    def __init__(self, prepare: Callable[[], Any] = _nothing, enter: Enter = _enter_netns) -> None:
        self._prepare = prepare
        self._enter = enter

    def run(self, netns: str, function: Callable[..., Any], *args: Any) -> Any:
        """function(*args) inside netns; its result, or its CniError."""
        self._prepare()
        self._enter(netns)
        return function(*args)

    def dismiss(self) -> None:
        """Nothing runs ahead of a job in this process: nothing to stop."""


class Worker:
    """A child that runs `prepare` at once and then at most one job, in the netns the job names."""

    def __init__(self, prepare: Callable[[], Any], enter: Enter = _enter_netns) -> None:
        self._prepare = prepare
        self._enter = enter
        self._pid: int | None = None
        self._jobs = self._outcomes = -1
        try:
            self._spawn()
        except CniError:
            self._pid = None  # fork failed: try again when a job comes, so an unprotected pod never fails here

    def _spawn(self) -> None:
        job_read, job_write = os.pipe()
        outcome_read, outcome_write = os.pipe()
        pid = forks.fork()
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
        prepared = forks.guarded(self._prepare, "netfilter")
        job = forks.read_all(job_read)
        if not job:
            return
        import pickle

        netns, function, args = pickle.loads(job)
        forks.report(outcome_write, forks.guarded(functools.partial(self._job, prepared, netns, function, args),
                                                  "netfilter"))

    def _job(self, prepared: tuple[str, Any], netns: str, function: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        forks.unwrap(prepared)
        self._enter(netns)
        return function(*args)

    def run(self, netns: str, function: Callable[..., Any], *args: Any) -> Any:
        """function(*args) in the worker, inside netns; its result, or its CniError raised here."""
        if self._pid is None:
            self._spawn()
        assert self._pid is not None
        import pickle

        with os.fdopen(self._jobs, "wb") as pipe:
            pipe.write(pickle.dumps((netns, function, args)))
        pid, self._pid = self._pid, None
        return forks.collect(forks.read_all(self._outcomes), pid, "netfilter")

    def dismiss(self) -> None:
        """Stop an unused worker at once, mid-import if need be: it has no job, so it touched nothing."""
        if self._pid is None:
            return
        os.kill(self._pid, forks.SIGKILL)
        os.close(self._jobs)
        os.close(self._outcomes)
        os.waitpid(self._pid, 0)
        self._pid = None

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.dismiss()
