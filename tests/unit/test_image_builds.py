"""Builds of the project image in one checkout share its buildah storage and must not undo each other's work
(tests/support/images.py): buildah itself is replaced by a recorder here, the storage lock is the real one.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import images


class Recorder:
    """buildah's stand-in: records each call; `containers` answers with the given working containers."""

    def __init__(self, containers: list[str]) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.containers = containers
        self.lock = threading.Lock()

    def __call__(self, *args: str) -> str:
        with self.lock:
            self.calls.append(args)
        if args[0] == "containers":
            return "\n".join(self.containers)
        if args[0] == "push":
            Path(args[-1].split(":")[1]).write_bytes(b"archive")
        return ""

    def verbs(self) -> list[str]:
        return [call[0] for call in self.calls]


@pytest.fixture
def storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A buildah storage directory whose base and current inputs are done, and a build that does nothing."""
    buildah_dir = tmp_path / "buildah"
    buildah_dir.mkdir()
    monkeypatch.setattr(images, "BUILDAH", buildah_dir)
    monkeypatch.setattr(images, "CACHE", tmp_path / "images")
    monkeypatch.setattr(images, "_build", lambda version, context, pip_conf, lock: None)
    monkeypatch.setattr(images.oci, "set_name", lambda dest, name: None)
    (buildah_dir / f"base-{images._base_key()}").touch()
    (buildah_dir / f"inputs-{images._storage_key()}").touch()
    yield buildah_dir


def holding(path: Path, operation: int) -> int:
    """An open file description of path holding the flock operation (a build in another process)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    fcntl.flock(descriptor, operation)
    return descriptor


def test_a_build_beside_a_running_one_removes_no_container(storage: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Another build holds the storage (shared): this one builds at once, and removes no working container
    - those in the storage may be the other build's."""
    recorder = Recorder(["c0ffee", "f00d"])
    monkeypatch.setattr(images, "buildah", recorder)
    other = holding(storage / ".storage.lock", fcntl.LOCK_SH)
    done = threading.Event()
    builder = threading.Thread(target=lambda: (images.project_archive("9.9.9"), done.set()), daemon=True)
    try:
        builder.start()
        assert done.wait(10), "the build waited for the other one"
    finally:
        os.close(other)
        builder.join(10)  # before the fixture puts buildah back
    assert recorder.verbs() == ["push"], recorder.calls


def test_a_build_alone_removes_the_working_containers_of_killed_builds(storage: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder(["c0ffee", "f00d"])
    monkeypatch.setattr(images, "buildah", recorder)
    images.project_archive("9.9.9")
    assert recorder.calls[:2] == [("containers", "--all", "--quiet"), ("rm", "c0ffee", "f00d")]
    assert recorder.verbs() == ["containers", "rm", "push"]


def test_new_inputs_wait_until_no_build_runs_to_remove_earlier_images(storage: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Removing the project images of earlier inputs (and the layers only they use) waits for the builds
    that run, which may be using them."""
    recorder = Recorder([])
    monkeypatch.setattr(images, "buildah", recorder)
    (storage / f"inputs-{images._storage_key()}").rename(storage / "inputs-0123456789abcdef")
    other = holding(storage / ".storage.lock", fcntl.LOCK_SH)
    done = threading.Event()
    builder = threading.Thread(target=lambda: (images.project_archive("9.9.9"), done.set()), daemon=True)
    try:
        builder.start()
        assert not done.wait(1.5), recorder.calls
        assert recorder.calls == []
    finally:
        os.close(other)
        builder.join(10)  # before the fixture puts buildah back
    assert done.is_set()
    assert recorder.verbs() == ["containers", "images", "rmi", "push"], recorder.calls
    assert (storage / f"inputs-{images._storage_key()}").exists()
    assert not (storage / "inputs-0123456789abcdef").exists()
