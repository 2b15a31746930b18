"""The compare-and-swap file operations the installer uses on files other agents write (real files)."""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

import pytest

from daemonset import foreign_files
from tests.support.conf_dir import ConfDirWatch, write_as_agent


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def file_holding(path: Path, data: bytes | None) -> Path:
    if data is not None:
        path.write_bytes(data)
    return path


def content(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


ABSENT = None


@pytest.mark.parametrize(("on_disk", "expected", "data", "committed", "after"), [
    (b"v1", b"v1", b"v1+ours", True, b"v1+ours"),
    (b"v2", b"v1", b"v1+ours", False, b"v2"),  # the agent wrote since our read
    (ABSENT, b"v1", b"v1+ours", False, ABSENT),  # the agent removed it since our read
], ids=["unchanged", "rewritten", "removed"])
def test_replace_if_unchanged(tmp_path, on_disk, expected, data, committed, after):
    path = file_holding(tmp_path / "10-calico.conflist", on_disk)
    assert foreign_files.replace_if_unchanged(str(path), expected, data) is committed
    assert content(path) == after and leftovers(tmp_path) == []
    if committed:
        assert os.stat(path).st_mode & 0o777 == 0o644


@pytest.mark.parametrize(("on_disk", "committed", "after"), [
    (ABSENT, True, b"ours"),
    (b"the agent's", False, b"the agent's"),  # created since we found the name free
], ids=["absent", "created-meanwhile"])
def test_create_if_absent(tmp_path, on_disk, committed, after):
    path = file_holding(tmp_path / "05-microgateway-cni.conflist", on_disk)
    assert foreign_files.create_if_absent(str(path), b"ours") is committed
    assert content(path) == after and leftovers(tmp_path) == []


@pytest.mark.parametrize(("on_disk", "expected", "committed", "after"), [
    (b"ours", b"ours", True, ABSENT),
    (b"the agent's", b"ours", False, b"the agent's"),  # rewritten since our read
    (ABSENT, b"ours", False, ABSENT),
], ids=["unchanged", "rewritten", "absent"])
def test_remove_if_unchanged(tmp_path, on_disk, expected, committed, after):
    path = file_holding(tmp_path / "05-microgateway-cni.conflist", on_disk)
    assert foreign_files.remove_if_unchanged(str(path), expected) is committed
    assert content(path) == after and leftovers(tmp_path) == []


def test_parks_only_what_was_read_and_puts_it_back(tmp_path):
    conf, parked = tmp_path / "10-bridge.conf", tmp_path / "10-bridge.conf.mgw-original"
    conf.write_bytes(b"newer")
    assert not foreign_files.move_if_unchanged(str(conf), b"older", str(parked))
    assert conf.read_bytes() == b"newer" and not parked.exists()
    assert foreign_files.move_if_unchanged(str(conf), b"newer", str(parked))
    assert not conf.exists()
    foreign_files.put_back(str(parked), str(conf))
    assert conf.read_bytes() == b"newer" and not parked.exists()


def test_put_back_never_replaces_a_newer_file(tmp_path):
    conf, parked = tmp_path / "10-bridge.conf", tmp_path / "10-bridge.conf.mgw-original"
    parked.write_bytes(b"older")
    conf.write_bytes(b"written by the agent meanwhile")
    foreign_files.put_back(str(parked), str(conf))
    assert conf.read_bytes() == b"written by the agent meanwhile" and not parked.exists()


def test_a_killed_installer_s_set_aside_file_is_restored(tmp_path):
    aside = tmp_path / f".10-calico.conflist{foreign_files.ASIDE_MARK}0a1b2c"
    aside.write_bytes(b"the agent's document")
    assert foreign_files.recover(str(tmp_path)) == ["10-calico.conflist"]
    assert (tmp_path / "10-calico.conflist").read_bytes() == b"the agent's document"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(("before", "after", "committed", "final"), [
    ([], [], True, b"v1+ours"),
    ([b"v2"], [], False, b"v2"),  # the agent wrote between our compare and our swap: v2 swapped back
    ([b"v2", b"v3"], [], False, b"v3"),  # and again before the swap back: v3 swapped back in the next round
    ([b"v2"], [b"v3"], False, b"v3"),  # and again over ours at once: its v3 stays, v2 is dropped
    ([None], [], False, None),  # the agent removed its file: nothing of ours goes in
], ids=["quiet", "written-before-swap", "written-before-swap-back", "written-over-ours", "removed"])
def test_replace_never_leaves_the_name_free_and_the_newest_last(tmp_path, monkeypatch, before, after, committed,
                                                               final):
    path = file_holding(tmp_path / "10-calico.conflist", b"v1")
    watch = ConfDirWatch(monkeypatch, path.exists, path, before, after)
    assert foreign_files.replace_if_unchanged(str(path), b"v1", b"v1+ours") is committed
    assert watch.missing == 0, "a reader could have found no file"
    assert content(path) == final and leftovers(tmp_path) == []


class Killed(BaseException):
    """The installer process dying at this point (SIGKILL: no cleanup runs)."""


def killed_at_the_swap(monkeypatch, path: Path, agent_writes: bytes | None, swapped: bool) -> None:
    """Run replace_if_unchanged until it dies just before (or just after) its swap, leaving what it leaves."""
    real_exchange = foreign_files._exchange

    def exchange(a: str, b: str) -> None:
        if agent_writes is not None:
            write_as_agent(path, agent_writes)
        if swapped:
            real_exchange(a, b)
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(foreign_files, "_exchange", exchange)
        with pytest.raises(Killed):
            foreign_files.replace_if_unchanged(str(path), b"v1", b"v1+ours")


@pytest.mark.parametrize(("agent_writes", "swapped", "live_at_kill", "after", "restored"), [
    (None, False, b"v1", b"v1", []),  # the temporary file holds ours: dropped
    (None, True, b"v1+ours", b"v1+ours", []),  # it holds v1, what ours was built from: ours stays
    (b"v2", True, b"v1+ours", b"v2", ["10-calico.conflist"]),  # it holds the agent's newer v2: back in place
], ids=["before-swap", "after-swap", "after-swap-over-newer"])
def test_a_write_killed_at_its_swap_is_finished_on_restart(tmp_path, monkeypatch, agent_writes, swapped,
                                                           live_at_kill, after, restored):
    path = file_holding(tmp_path / "10-calico.conflist", b"v1")
    killed_at_the_swap(monkeypatch, path, agent_writes, swapped)
    assert content(path) == live_at_kill
    assert [n for n in leftovers(tmp_path) if foreign_files.SWAP_MARK in n], "the temporary file must survive the kill"
    assert foreign_files.recover(str(tmp_path)) == restored
    assert content(path) == after and leftovers(tmp_path) == []


def test_recovery_keeps_a_document_the_agent_wrote_after_the_kill(tmp_path, monkeypatch):
    path = file_holding(tmp_path / "10-calico.conflist", b"v1")
    killed_at_the_swap(monkeypatch, path, b"v2", swapped=True)
    write_as_agent(path, b"v3")
    assert foreign_files.recover(str(tmp_path)) == []
    assert content(path) == b"v3" and leftovers(tmp_path) == []


def refusing_exchange(*_: object) -> int:
    ctypes.set_errno(errno.EINVAL)
    return -1


@pytest.mark.parametrize(("on_disk", "committed", "after"), [
    (b"v1", True, b"v1+ours"),
    (b"v2", False, b"v2"),
], ids=["unchanged", "rewritten"])
def test_without_rename_exchange_the_compare_and_swap_moves_the_file_aside(tmp_path, monkeypatch, on_disk,
                                                                           committed, after):
    """A filesystem that refuses RENAME_EXCHANGE: still never a lost write, at the cost of an instant without
    the file; the installer is told why."""
    monkeypatch.setattr(foreign_files, "_renameat2", refusing_exchange)
    monkeypatch.setattr(foreign_files, "_exchange_fallback", None)
    path = file_holding(tmp_path / "10-calico.conflist", on_disk)
    assert foreign_files.replace_if_unchanged(str(path), b"v1", b"v1+ours") is committed
    assert content(path) == after and leftovers(tmp_path) == []
    assert (foreign_files.exchange_fallback() is not None) is committed
