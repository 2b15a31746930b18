"""Atomic file operations on the host: a kubelet or runtime reading at any moment sees old or new, never half."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile


def digest(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except FileNotFoundError:
        return None


def read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def write_temp(path: str, data: bytes, mode: int, mark: str = ".") -> str:
    """A complete, fsynced file beside `path` whose name no CNI loader picks up (hidden, ending in .tmp)."""
    directory = os.path.dirname(path) or "."
    fd, temp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}{mark}", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
    except BaseException:
        unlink_if_present(temp)
        raise
    return temp


def fsync_dir(directory: str) -> None:
    dir_fd = os.open(directory or ".", os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_atomic(path: str, data: bytes, mode: int = 0o644) -> None:
    """Write beside the target, fsync, rename over it, fsync the directory. Only for files we own."""
    temp = write_temp(path, data, mode)
    try:
        os.rename(temp, path)
    except BaseException:
        unlink_if_present(temp)
        raise
    fsync_dir(os.path.dirname(path))


def unlink_if_present(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def copy_atomic(source: str, path: str, mode: int = 0o755) -> None:
    """Copy a binary by rename: a kubelet exec'ing it never sees a partial file ("text file busy")."""
    with open(source, "rb") as f:
        write_atomic(path, f.read(), mode)


def remove(path: str) -> bool:
    """Unconditionally: only for files we own (the kubeconfig); others' files go through remove_if_unchanged."""
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def tree_digest(directory: str) -> str:
    """One hash over every file's relative path, mode and content."""
    total = hashlib.sha256()
    for base, dirs, names in sorted(os.walk(directory)):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(base, name)
            total.update(os.path.relpath(path, directory).encode() + b"\0")
            total.update(str(os.stat(path).st_mode).encode() + b"\0")
            if not os.path.islink(path):
                total.update((digest(path) or "").encode())
    return total.hexdigest()


def copy_tree_atomic(source: str, path: str) -> None:
    """Copy a directory beside its destination, fsync it, then rename it into place."""
    temp = f"{path}.tmp-{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    shutil.copytree(source, temp, symlinks=True)
    for base, _, names in os.walk(temp):
        for name in names:
            file_path = os.path.join(base, name)
            if not os.path.islink(file_path):
                fd = os.open(file_path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
    os.rename(temp, path)


def symlink_atomic(target: str, path: str) -> None:
    """Point `path` at `target` by renaming a fresh symlink over it: never absent, never half."""
    temp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.link-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp)
    os.symlink(target, temp)
    os.rename(temp, path)
