"""The pod-netns runners (cni/pod/runner.py) and the per-family fan_out (cni/forks.py): real forks, real
pipes, a real pod netns. InProcess runs in a child (fan_out) so that pytest itself never changes netns."""

from __future__ import annotations

import os

import pytest

from cni.errors import INVALID_ENV, NETFILTER_FAILURE, CniError
from cni.forks import fan_out
from cni.pod.netns import NetnsGone
from cni.pod.runner import InProcess, Worker


@pytest.fixture
def netns(node):
    name = f"mgwt-{node.id}-worker"
    node.add_netns(name)
    return f"/run/netns/{name}"


def _netns_and_pid(tag: str) -> tuple[int, int, str]:
    return os.stat("/proc/self/ns/net").st_ino, os.getpid(), tag


def _fail(code: int) -> None:
    raise CniError(code, "refused on purpose", "details")


def _crash() -> None:
    raise KeyError("bug")


def _die() -> None:
    os._exit(3)


def _broken_prepare() -> None:
    raise OSError("libxtables.so.12: cannot open shared object file")


def _children() -> set[int]:
    """This process's children (the node harness has its own, e.g. the API stand-in)."""
    with open(f"/proc/{os.getpid()}/task/{os.getpid()}/children") as f:
        return {int(pid) for pid in f.read().split()}


def test_job_runs_once_in_the_named_netns_in_another_process(netns):
    before = _children()
    with Worker(lambda: None) as worker:
        where, pid, tag = worker.run(netns, _netns_and_pid, "x")
    assert tag == "x" and pid != os.getpid()
    assert where == os.stat(netns).st_ino != os.stat("/proc/self/ns/net").st_ino
    assert _children() == before


def test_errors_come_back_as_cni_errors(netns):
    before = _children()
    with Worker(lambda: None) as worker, pytest.raises(CniError) as refused:
        worker.run(netns, _fail, 7)
    assert (refused.value.code, refused.value.msg, refused.value.details) == (7, "refused on purpose", "details")
    with Worker(lambda: None) as worker, pytest.raises(CniError) as crashed:
        worker.run(netns, _crash)
    assert crashed.value.code == NETFILTER_FAILURE and "KeyError" in crashed.value.msg
    with Worker(lambda: None) as worker, pytest.raises(CniError, match="worker died"):
        worker.run(netns, _die)
    with Worker(_broken_prepare) as worker, pytest.raises(CniError, match=r"libxtables\.so\.12"):
        worker.run(netns, _netns_and_pid, "never")
    assert _children() == before


def test_a_vanished_netns_is_reported(node):
    with Worker(lambda: None) as worker, pytest.raises(CniError, match="does not exist"):
        worker.run("/run/netns/mgw-no-such-netns", _netns_and_pid, "x")


def test_dismissed_unused_worker_exits_and_is_reaped():
    before = _children()
    worker = Worker(lambda: None)
    assert len(_children() - before) == 1
    worker.dismiss()
    assert _children() == before


def test_fork_failure_at_prewarm_is_retried_when_a_job_comes(netns, monkeypatch):
    """A failing fork cannot be provoked for root here, so os.fork is made to fail once (simulated)."""
    real_fork = os.fork
    calls = []

    def fork_failing_once() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return real_fork()

    before = _children()
    monkeypatch.setattr(os, "fork", fork_failing_once)
    worker = Worker(lambda: None)
    assert _children() == before
    assert worker.run(netns, _netns_and_pid, "late")[2] == "late"
    assert len(calls) == 2


def test_fan_out_runs_every_job_in_a_child_of_its_own():
    before = _children()
    outcomes = fan_out([(4, _netns_and_pid, ("a",)), (6, _netns_and_pid, ("b",)), (8, _fail, (5,))])
    assert outcomes[4][2] == "a" and outcomes[6][2] == "b"
    assert len({os.getpid(), outcomes[4][1], outcomes[6][1]}) == 3
    assert isinstance(outcomes[8], CniError) and outcomes[8].code == 5
    assert _children() == before


def _in_process(netns: str) -> tuple[tuple[int, int, str], int]:
    return InProcess().run(netns, _netns_and_pid, "here"), os.getpid()


def _in_process_gone() -> str:
    try:
        InProcess().run("/run/netns/mgw-no-such-netns", _netns_and_pid, "never")
    except NetnsGone as gone:
        return f"{type(gone).__name__} {gone.code}"
    return "entered"


def test_in_process_runs_the_job_in_the_calling_process_inside_the_named_netns(netns):
    outcomes = fan_out([(0, _in_process, (netns,)), (1, _in_process_gone, ())])
    (where, job_pid, tag), caller_pid = outcomes[0]
    assert tag == "here" and job_pid == caller_pid != os.getpid()
    assert where == os.stat(netns).st_ino != os.stat("/proc/self/ns/net").st_ino
    assert outcomes[1] == f"NetnsGone {INVALID_ENV}"
