"""Files other agents own (the primary CNI's conflist): written only by compare-and-swap, so that a newer
document of theirs is never replaced for good and the runtime never finds the name free
(docs/design.md, "Writing files we do not own")."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
from collections.abc import Callable

from daemonset.files import fsync_dir, read, unlink_if_present, write_temp

ASIDE_MARK = ".mgw-aside-"
SWAP_MARK = ".mgw-swap-"  # our document before the exchange, the one it displaced after
EXCHANGE_ROUNDS = 100  # swaps back while the agent keeps writing between them (each takes microseconds)
AT_FDCWD = -100
RENAME_EXCHANGE = 2


def _aside_name(path: str) -> str:
    """A unique name (installers of two pods may share a pid) that no CNI loader picks up."""
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}{ASIDE_MARK}{os.urandom(6).hex()}")


def put_back(aside: str, path: str) -> None:
    """Return a set-aside (or parked) file to its name, unless a newer one took that name meanwhile:
    then the set-aside one is superseded and dropped."""
    with contextlib.suppress(FileExistsError, FileNotFoundError):
        os.link(aside, path)
    unlink_if_present(aside)
    fsync_dir(os.path.dirname(path))


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
    temp = write_temp(path, data, mode)
    try:
        if not _link_if_free(temp, path):
            return False
    finally:
        unlink_if_present(temp)
    fsync_dir(os.path.dirname(path))
    return True


def replace_if_unchanged(path: str, expected: bytes, data: bytes, mode: int = 0o644) -> bool:
    """Compare-and-swap for a file another agent may write at any moment (docs/design.md, "Writing
    files we do not own").

    Commits `data` only if `path` still holds `expected` and returns True; otherwise returns False with
    the agent's newest document in place, so the caller re-reads and recomputes. rename() alone cannot be
    conditional, and moving the file aside first leaves a moment without it, in which containerd loads
    no network at all. So ours is swapped in (RENAME_EXCHANGE: the name is never free) and the document
    it displaced is checked afterwards: if the agent wrote in between, its document is swapped back. A
    reader sees the old document, ours, or for that instant ours over a newer document of the agent;
    never no file, and the newest is always last.
    """
    if read(path) != expected:
        return False
    temp = write_temp(path, data, mode, mark=_swap_mark(expected, data))
    # On an exception the temporary file stays for recover(): after the swap it may hold the agent's newer
    # document.
    if read(path) != expected:  # the agent wrote while ours was being written and synced
        committed = False
    else:
        try:
            committed = _swap_in(temp, path, expected)
        except ExchangeUnsupported as exc:
            _fall_back(path, exc)
            committed = _replace_via_aside(temp, path, expected)
    unlink_if_present(temp)
    if committed:
        fsync_dir(os.path.dirname(path))
    return committed


def exchange_fallback() -> str | None:
    """Why replace_if_unchanged fell back to moving the file aside (the filesystem refused
    RENAME_EXCHANGE), else None."""
    return _exchange_fallback


_exchange_fallback: str | None = None


def _fall_back(path: str, exc: OSError) -> None:
    global _exchange_fallback
    _exchange_fallback = f"{os.path.dirname(path) or '.'}: {exc.strerror}"


def _swap_mark(expected: bytes, data: bytes) -> str:
    """The temporary file's name records what ours was built from and what ours is, for recover()."""
    return f"{SWAP_MARK}{_short_digest(expected)}-{_short_digest(data)}-"


def _short_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _swap_in(temp: str, path: str, expected: bytes) -> bool:
    """Exchange ours with the live file; True if what came out is `expected`, else the agent's newest goes
    back and False."""
    with open(temp, "rb") as ours:  # held open: its inode number cannot be reused while we compare by it
        try:
            _exchange(temp, path)
        except FileNotFoundError:  # the agent removed its file: nothing of ours goes in
            return False
        if read(temp) == expected:
            return True
        _put_back_newest(temp, path, os.fstat(ours.fileno()))
        return False


def _put_back_newest(temp: str, path: str, put: os.stat_result) -> None:
    """`temp` holds the document ours displaced, newer than the one ours was built from: swap it back into
    place, unless the agent has written again since (then its newer file stays and this one is dropped).
    An agent writing between our look and the swap gets its file swapped back in the next round."""
    with contextlib.ExitStack() as held:  # every file compared by inode stays open: no number is reused
        for _ in range(EXCHANGE_ROUNDS):
            displaced = held.enter_context(open(temp, "rb"))
            try:
                if not _same_file(os.stat(path), put):
                    return  # the agent wrote again over ours: its newer document stays
                _exchange(temp, path)
            except FileNotFoundError:  # the agent removed its file: so be it
                return
            if _same_file(os.stat(temp), put):
                return  # nothing was written in between: the newest document is back in place
            put = os.fstat(displaced.fileno())


def _replace_via_aside(temp: str, path: str, expected: bytes) -> bool:
    """The compare-and-swap where RENAME_EXCHANGE is refused: move the live file aside (atomically taking
    whatever is there), check it, link ours in. Leaves a moment without the file (docs/design.md)."""
    aside = _set_aside(path, expected)
    if aside is None:
        return False
    try:
        committed = _link_if_free(temp, path)
    except BaseException:
        put_back(aside, path)
        raise
    unlink_if_present(aside)
    return committed


class ExchangeUnsupported(OSError):
    """The kernel or the filesystem of the conf dir has no RENAME_EXCHANGE."""


_renameat2: Callable[..., int] | None = None


def _exchange(a: str, b: str) -> None:
    """renameat2(RENAME_EXCHANGE): both names stay bound while their files trade places, in one step."""
    global _renameat2
    if _renameat2 is None:
        libc = ctypes.CDLL(None, use_errno=True)
        _renameat2 = getattr(libc, "renameat2", None) or _missing_renameat2
    if _renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        raise ExchangeUnsupported(error, f"RENAME_EXCHANGE refused: {os.strerror(error)}", b)
    raise OSError(error, os.strerror(error), b)


def remove_if_unchanged(path: str, expected: bytes) -> bool:
    """Remove `path` only if it still holds `expected` (moved aside and checked, as in replace_if_unchanged)."""
    aside = _set_aside(path, expected)
    if aside is None:
        return False
    unlink_if_present(aside)
    fsync_dir(os.path.dirname(path))
    return True


def move_if_unchanged(path: str, expected: bytes, new_path: str) -> bool:
    """Rename a file we do not own (e.g. park it) only if it still holds `expected`."""
    if _set_aside(path, expected, new_path) is None:
        return False
    fsync_dir(os.path.dirname(path))
    return True


def recover(directory: str) -> list[str]:
    """Undo what a killed installer left half done in `directory`; the names of the files it put back.

    A set-aside file (the fallback without RENAME_EXCHANGE) goes back to its name unless a newer file took
    it. A swap's temporary file holds ours if the swap never happened, the document ours was built from
    if it completed, or else the agent's newer document, displaced by ours: that one goes back in place
    if ours is still there.
    """
    restored = []
    for name in os.listdir(directory):
        if not name.startswith("."):
            continue
        if ASIDE_MARK in name:
            original = name[1:name.rindex(ASIDE_MARK)]
            put_back(os.path.join(directory, name), os.path.join(directory, original))
            restored.append(original)
        elif SWAP_MARK in name and name.endswith(".tmp"):
            original, marks = name[1:].split(SWAP_MARK, 1)
            built_from, ours = marks.split("-")[:2]
            temp, path = os.path.join(directory, name), os.path.join(directory, original)
            held = read(temp)
            if held is not None and _short_digest(held) not in (built_from, ours):
                live = read(path)
                if live is not None and _short_digest(live) == ours:
                    _exchange(temp, path)
                    restored.append(original)
            unlink_if_present(temp)
    return restored


def _missing_renameat2(*_: object) -> int:
    """A C library without renameat2 (glibc < 2.28): the same as a kernel without it."""
    ctypes.set_errno(errno.ENOSYS)
    return -1
