"""The compare-and-swap file operations the installer uses on files other agents write (real files)."""

from __future__ import annotations

import os

from daemonset import files


def leftovers(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_replaces_only_what_was_read(tmp_path):
    path = tmp_path / "10-calico.conflist"
    path.write_bytes(b"v1")
    assert files.replace_if_unchanged(str(path), b"v1", b"v1+ours")
    assert path.read_bytes() == b"v1+ours" and os.stat(path).st_mode & 0o777 == 0o644
    assert not files.replace_if_unchanged(str(path), b"v1", b"stale+ours")  # someone wrote since our read
    assert path.read_bytes() == b"v1+ours"
    assert leftovers(tmp_path) == []


def test_creates_only_if_still_absent_and_removes_only_if_unchanged(tmp_path):
    path = tmp_path / "05-microgateway-cni.conflist"
    assert files.replace_if_unchanged(str(path), None, b"ours")
    assert not files.replace_if_unchanged(str(path), None, b"again")
    assert not files.replace_if_unchanged(str(path), b"other", None)
    assert path.read_bytes() == b"ours"
    assert files.replace_if_unchanged(str(path), b"ours", None)
    assert not path.exists() and leftovers(tmp_path) == []


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
