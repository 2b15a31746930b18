"""Atomic file operations on the host: a kubelet or runtime reading at any moment sees old or new, never half."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile

ASIDE_MARK = ".mgw-aside-"


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


def _write_temp(path: str, data: bytes, mode: int) -> str:
    """A complete, fsynced file beside `path` whose name no CNI loader picks up (it ends in .tmp)."""
    directory = os.path.dirname(path) or "."
    fd, temp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
    except BaseException:
        _unlink(temp)
        raise
    return temp


def _fsync_dir(directory: str) -> None:
    dir_fd = os.open(directory or ".", os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_atomic(path: str, data: bytes, mode: int = 0o644) -> None:
    """Write beside the target, fsync, rename over it, fsync the directory. Only for files we own."""
    temp = _write_temp(path, data, mode)
    try:
        os.rename(temp, path)
    except BaseException:
        _unlink(temp)
        raise
    _fsync_dir(os.path.dirname(path))


def _aside_name(path: str) -> str:
    """A unique name (installers of two pods may share a pid) that no CNI loader picks up."""
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}{ASIDE_MARK}{os.urandom(6).hex()}")


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def put_back(aside: str, path: str) -> None:
    """Return a set-aside (or parked) file to its name, unless a newer one took that name meanwhile:
    then the set-aside one is superseded and dropped."""
    with contextlib.suppress(FileExistsError, FileNotFoundError):
        os.link(aside, path)
    _unlink(aside)
    _fsync_dir(os.path.dirname(path))


def _set_aside(path: str, expected: bytes, aside: str | None = None) -> str | None:
    """Move the file at `path` aside (atomically: whatever is there now); its new name if it is `expected`,
    else it goes back (unless a newer file took the name meanwhile) and the answer is None."""
    aside = aside or _aside_name(path)
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return None
    try:
        if read(aside) == expected:
            return aside
    except BaseException:
        put_back(aside, path)
        raise
    put_back(aside, path)
    return None


def _link_if_free(temp: str, path: str) -> bool:
    try:
        os.link(temp, path)
    except FileExistsError:  # the agent wrote in between: its newer document stays
        return False
    return True


def create_if_absent(path: str, data: bytes, mode: int = 0o644) -> bool:
    """Create `path` holding `data` only if no file has that name; a file an agent created meanwhile stays."""
    if os.path.lexists(path):
        return False
    temp = _write_temp(path, data, mode)
    try:
        if not _link_if_free(temp, path):
            return False
    finally:
        _unlink(temp)
    _fsync_dir(os.path.dirname(path))
    return True


def replace_if_unchanged(path: str, expected: bytes, data: bytes, mode: int = 0o644) -> bool:
    """Compare-and-swap for a file another agent may write at any moment (docs/design.md, "Writing
    files we do not own").

    Commits `data` only if `path` still holds `expected` and returns True; otherwise changes nothing and
    returns False, so the caller re-reads and recomputes. rename() alone cannot be conditional: an
    agent's write between our compare and our rename would be lost. So the current file is first moved
    aside - atomically taking whatever is there at that instant - and checked; ours is then linked in,
    which fails if the agent created the name again meanwhile. A reader sees the old document, ours, or
    (between the two steps) no file, never ours over a newer one.
    """
    if read(path) != expected:
        return False
    temp = _write_temp(path, data, mode)
    try:
        aside = _set_aside(path, expected)
        if aside is None:
            return False
        try:
            committed = _link_if_free(temp, path)
        except BaseException:
            put_back(aside, path)
            raise
        _unlink(aside)
    finally:
        _unlink(temp)
    if committed:
        _fsync_dir(os.path.dirname(path))
    return committed


def remove_if_unchanged(path: str, expected: bytes) -> bool:
    """Remove `path` only if it still holds `expected` (moved aside and checked, as in replace_if_unchanged)."""
    aside = _set_aside(path, expected)
    if aside is None:
        return False
    _unlink(aside)
    _fsync_dir(os.path.dirname(path))
    return True


def move_if_unchanged(path: str, expected: bytes, new_path: str) -> bool:
    """Rename a file we do not own (e.g. park it) only if it still holds `expected`."""
    if _set_aside(path, expected, new_path) is None:
        return False
    _fsync_dir(os.path.dirname(path))
    return True


def restore_set_aside(directory: str) -> list[str]:
    """Put back files a killed installer left set aside in the middle of replace_if_unchanged or
    remove_if_unchanged."""
    restored = []
    for name in os.listdir(directory):
        if name.startswith(".") and ASIDE_MARK in name:
            original = name[1:name.rindex(ASIDE_MARK)]
            put_back(os.path.join(directory, name), os.path.join(directory, original))
            restored.append(original)
    return restored


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
