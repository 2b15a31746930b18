"""The compare-and-swap file operations the installer uses on files other agents write (real files)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from daemonset import files


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
    assert files.replace_if_unchanged(str(path), expected, data) is committed
    assert content(path) == after and leftovers(tmp_path) == []
    if committed:
        assert os.stat(path).st_mode & 0o777 == 0o644


@pytest.mark.parametrize(("on_disk", "committed", "after"), [
    (ABSENT, True, b"ours"),
    (b"the agent's", False, b"the agent's"),  # created since we found the name free
], ids=["absent", "created-meanwhile"])
def test_create_if_absent(tmp_path, on_disk, committed, after):
    path = file_holding(tmp_path / "05-microgateway-cni.conflist", on_disk)
    assert files.create_if_absent(str(path), b"ours") is committed
    assert content(path) == after and leftovers(tmp_path) == []


@pytest.mark.parametrize(("on_disk", "expected", "committed", "after"), [
    (b"ours", b"ours", True, ABSENT),
    (b"the agent's", b"ours", False, b"the agent's"),  # rewritten since our read
    (ABSENT, b"ours", False, ABSENT),
], ids=["unchanged", "rewritten", "absent"])
def test_remove_if_unchanged(tmp_path, on_disk, expected, committed, after):
    path = file_holding(tmp_path / "05-microgateway-cni.conflist", on_disk)
    assert files.remove_if_unchanged(str(path), expected) is committed
    assert content(path) == after and leftovers(tmp_path) == []


def test_parks_only_what_was_read_and_puts_it_back(tmp_path):
    conf, parked = tmp_path / "10-bridge.conf", tmp_path / "10-bridge.conf.mgw-original"
    conf.write_bytes(b"newer")
    assert not files.move_if_unchanged(str(conf), b"older", str(parked))
    assert conf.read_bytes() == b"newer" and not parked.exists()
    assert files.move_if_unchanged(str(conf), b"newer", str(parked))
    assert not conf.exists()
    files.put_back(str(parked), str(conf))
    assert conf.read_bytes() == b"newer" and not parked.exists()


def test_put_back_never_replaces_a_newer_file(tmp_path):
    conf, parked = tmp_path / "10-bridge.conf", tmp_path / "10-bridge.conf.mgw-original"
    parked.write_bytes(b"older")
    conf.write_bytes(b"written by the agent meanwhile")
    files.put_back(str(parked), str(conf))
    assert conf.read_bytes() == b"written by the agent meanwhile" and not parked.exists()


def test_a_killed_installer_s_set_aside_file_is_restored(tmp_path):
    aside = tmp_path / f".10-calico.conflist{files.ASIDE_MARK}0a1b2c"
    aside.write_bytes(b"the agent's document")
    assert files.restore_set_aside(str(tmp_path)) == ["10-calico.conflist"]
    assert (tmp_path / "10-calico.conflist").read_bytes() == b"the agent's document"
    assert leftovers(tmp_path) == []
